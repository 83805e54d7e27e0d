//! Standard input and bulk data in both directions.

use runvm_e2e::*;

const BULK: usize = 20_000_000;

#[e2e_test]
fn stdin_is_echoed() {
    let (runc, runvm) = run_both(&["-i"], &[IMAGE, "cat"], Some(b"a\nb\n"));
    assert_same(&runc, &runvm, "printf 'a\\nb\\n' | docker run -i cat");
    assert_eq!(runvm.stdout, b"a\nb\n", "{}", runvm.describe());
}

#[e2e_test]
fn bulk_stdin_arrives_whole() {
    let data = random_bytes(BULK);
    let want = format!("{}  -\n", sha256_hex(&data));
    let (runc, runvm) = run_both(&["-i"], &[IMAGE, "sha256sum"], Some(&data));
    assert_same(&runc, &runvm, "20 MB | docker run -i sha256sum");
    assert_eq!(runvm.stdout_str(), want, "{}", runvm.describe());
}

#[e2e_test]
fn bulk_stdout_before_exit_arrives_whole() {
    // The workload writes 20 MB as its very last action and exits at once;
    // the checksum it computed itself goes to stderr. (/dev/shm is a tmpfs
    // under both runtimes: fast even under TCG.)
    let script = format!(
        "head -c {BULK} /dev/urandom > /dev/shm/x && sha256sum < /dev/shm/x >&2 && cat /dev/shm/x"
    );
    for runtime in ["runc", "runvm"] {
        let run = run_one(runtime, &[], &[IMAGE, "sh", "-c", &script], None);
        run.assert_code(0, runtime);
        let printed = run.stderr_str();
        let printed = printed.trim().trim_end_matches('-').trim();
        assert_eq!(
            printed.len(),
            64,
            "{runtime}: checksum on stderr expected:\n{}",
            run.describe()
        );
        assert_eq!(
            run.stdout.len(),
            BULK,
            "{runtime}: stdout lost data written just before exit"
        );
        assert_eq!(
            sha256_hex(&run.stdout),
            printed,
            "{runtime}: stdout is corrupted (length is right)"
        );
    }
}
