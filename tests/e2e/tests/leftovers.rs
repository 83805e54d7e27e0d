//! The last step of `make e2e`: after every other test, no container of
//! the tests, no QEMU, virtiofsd or supervisor process and no runvm tap
//! device may be left.
//!
//! `cargo test` does not run this binary on its own (`test = false` in
//! Cargo.toml): the Makefile runs it explicitly, after the rest of the
//! suite has ended. It assumes that nothing else runs runvm containers on
//! the machine meanwhile (e.g. a second run of this suite): their VMs would
//! count as leftovers.

use std::time::Duration;

use runvm_e2e::*;

#[e2e_test]
fn nothing_left_behind() {
    // Poll: a container's removal may lag its `docker run --rm` a little.
    let start = std::time::Instant::now();
    let left = loop {
        let ours = docker(
            &[
                "ps",
                "-a",
                "--filter",
                "name=runvm-e2e-",
                "--format",
                "{{.Names}} {{.Status}}",
            ],
            None,
        );
        ours.assert_code(0, "docker ps -a");
        let left = ours.stdout_str();
        if left.trim().is_empty() || start.elapsed() > Duration::from_secs(30) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        left.trim().is_empty(),
        "containers of the tests are left:\n{left}"
    );
    // The Podman table's containers and volumes.
    for (what, format) in [
        (["ps", "-a"], "{{.Names}}"),
        (["volume", "ls"], "{{.Name}}"),
    ] {
        let mut args = what.to_vec();
        args.extend(["--filter", "name=runvm-e2e-", "--format", format]);
        let podman = run_cmd("podman", &args, None, COMMAND_TIMEOUT);
        podman.assert_code(0, &format!("podman {}", what.join(" ")));
        let left = podman.stdout_str();
        assert!(
            left.trim().is_empty(),
            "Podman's {} lists what the tests left:\n{left}",
            what.join(" ")
        );
    }
    assert_no_leftovers("after all end-to-end tests", Duration::from_secs(30));
}
