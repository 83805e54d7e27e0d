//! Limits too small for a VM fail `docker run` at once with one line that
//! names the setting and the fix, instead of a VM that cannot boot (a CPU
//! quota of 1 %: minutes of waiting, then exit 255) or an error that
//! blames the wrong flag. No VM boots here; the checks for leftovers are
//! scoped to this test's own containers (other VMs may run on the host).

use std::time::Duration;

use runvm_e2e::*;

/// Runs `docker run --rm --runtime=runvm <args> IMAGE true`, expects a
/// refusal (125) within `limit` with exactly one line mentioning every
/// string of `must_mention`, and the container gone.
fn check_refused(args: &[&str], must_mention: &[&str], must_not_mention: &[&str]) {
    let c = Container::new("bad-limits");
    let mut run_args = vec!["--name", c.name.as_str()];
    run_args.extend_from_slice(args);
    let started = std::time::Instant::now();
    let run = run_one("runvm", &run_args, &[IMAGE, "true"], None);
    let what = format!("docker run --runtime=runvm {}", args.join(" "));
    run.assert_code(125, &what);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{what}: refused only after {:?}, it must not wait for a VM:\n{}",
        started.elapsed(),
        run.describe()
    );
    let stderr = run.stderr_str();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| must_mention.iter().all(|m| l.contains(m)))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line mentioning {must_mention:?}:\n{}",
        run.describe()
    );
    for m in must_not_mention {
        assert!(
            !lines[0].contains(m),
            "{what}: mentions {m}:\n{}",
            run.describe()
        );
    }
    assert!(!stderr.contains("panicked"), "{what}:\n{}", run.describe());
    c.wait_removed(&what, Duration::from_secs(10));
}

#[e2e_test]
fn a_cpu_quota_too_small_to_boot_is_refused_at_once() {
    // This host has no usable KVM: TCG, where a boot takes ~4 CPU-seconds.
    check_refused(
        &["--cpus", "0.01", "-e", "RUNVM_ACCEL=tcg"],
        &["0.010 CPUs", "--cpus 0.1"],
        &[],
    );
}

#[e2e_test]
fn a_tiny_runvm_memory_is_blamed_on_runvm_memory() {
    check_refused(
        &["-e", "RUNVM_MEMORY=64m"],
        &["RUNVM_MEMORY=\"64m\"", "128m"],
        &["--memory"],
    );
}
