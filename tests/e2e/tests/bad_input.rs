//! Bad `RUNVM_*` input fails `docker run` with one clear line and leaves
//! nothing behind (acceptance item 10).
//!
//! One test only: this binary then never runs a VM of its own while it checks
//! for leftovers (cargo runs test binaries one after another), so any QEMU,
//! virtiofsd or supervisor process found is a leftover.

use std::time::Duration;

use runvm_e2e::*;

fn check_rejected(env: &str, must_mention: &[&str]) {
    let c = Container::new("bad-input");
    let run = run_one(
        "runvm",
        &["--name", &c.name, "-e", env],
        &[IMAGE, "true"],
        None,
    );
    let what = format!("docker run --rm --runtime=runvm -e {env}");
    run.assert_code(125, &what);
    let stderr = run.stderr_str();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(must_mention[0]))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line mentioning {}:\n{}",
        must_mention[0],
        run.describe()
    );
    for m in must_mention {
        assert!(
            lines[0].contains(m),
            "{what}: the error line should mention {m}:\n{}",
            run.describe()
        );
    }
    assert!(run.stdout.is_empty(), "{what}: stdout:\n{}", run.describe());

    // --rm: nothing left in `docker ps -a` (removal may lag the client a bit).
    poll_until(
        &format!("container {} to be removed after {what}", c.name),
        Duration::from_secs(10),
        || {
            let ps = docker(
                &["ps", "-a", "-q", "--filter", &format!("name=^/{}$", c.name)],
                None,
            );
            ps.assert_code(0, "docker ps -a");
            ps.stdout_str().trim().is_empty().then_some(())
        },
    );
    assert_no_leftovers(&what, Duration::from_secs(10));
}

#[test]
fn bad_runvm_options_fail_cleanly() {
    if !e2e_enabled() {
        return;
    }
    assert_no_leftovers("before the bad-input checks", Duration::from_secs(30));
    check_rejected(
        "RUNVM_ACCEL=warp",
        &["RUNVM_ACCEL=\"warp\"", "RUNVM_ACCEL=tcg"],
    );
    check_rejected(
        "RUNVM_KERNEL=/nonexistent/vmlinuz",
        &["/nonexistent/vmlinuz", "RUNVM_KERNEL"],
    );
}
