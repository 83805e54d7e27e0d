//! `runvm kernel list|add|remove`: the store that `RUNVM_KERNEL` picks
//! from. A kernel added from files boots containers by its name; one in
//! use by a running container is not removed.

use std::time::Duration;

use runvm_e2e::*;

/// Removes the test's kernel from the store, whatever happened.
struct Added(String);

impl Drop for Added {
    fn drop(&mut self) {
        let _ = std::process::Command::new(runvm_binary())
            .args(["kernel", "remove", &self.0])
            .output();
    }
}

#[e2e_test]
fn a_kernel_added_by_name_boots_and_is_kept_while_in_use() {
    let runvm = runvm_binary();
    let list = run_cmd(&runvm, &["kernel", "list"], None, COMMAND_TIMEOUT);
    list.assert_code(0, "runvm kernel list");
    // The default kernel (marked *): its files are what the test adds again.
    let default = list
        .stdout_str()
        .lines()
        .find(|l| l.trim_end().ends_with('*'))
        .map(|l| {
            l.split_whitespace()
                .take(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| panic!("no default kernel: {}", list.describe()));
    let (dir, version) = (&default[0], &default[1]);
    let store = "/var/lib/runvm/kernel";
    let name = format!("e2e-copy-{}", std::process::id());
    let _added = Added(name.clone());
    let add = run_cmd(
        &runvm,
        &[
            "kernel",
            "add",
            &name,
            &format!("{store}/{dir}/boot/vmlinuz-{version}"),
            &format!("{store}/{dir}/lib/modules/{version}"),
        ],
        None,
        COMMAND_TIMEOUT,
    );
    add.assert_code(0, "runvm kernel add");
    let list = run_cmd(&runvm, &["kernel", "list"], None, COMMAND_TIMEOUT);
    assert!(
        list.stdout_str()
            .lines()
            .any(|l| l.starts_with(&name) && l.contains(" yes ")),
        "the new kernel, with modules, is listed: {}",
        list.describe()
    );
    // A second add under the same name is refused in one line.
    let again = run_cmd(
        &runvm,
        &[
            "kernel",
            "add",
            &name,
            &format!("{store}/{dir}/boot/vmlinuz-{version}"),
        ],
        None,
        COMMAND_TIMEOUT,
    );
    assert_ne!(again.code, 0);
    assert_eq!(
        again.stderr_str().trim().lines().count(),
        1,
        "{}",
        again.describe()
    );

    let _slot = vm_slots(1);
    let env = format!("RUNVM_KERNEL={name}");
    let c = Container::run_detached(
        "kernel-in-use",
        "runvm",
        &[
            "-e",
            &env,
            IMAGE,
            "sh",
            "-c",
            "uname -r; echo up; sleep 600",
        ],
    );
    let logs = c.wait_for_log("up", Duration::from_secs(120));
    assert_eq!(logs.stdout_str(), format!("{version}\nup\n"));
    let list = run_cmd(&runvm, &["kernel", "list"], None, COMMAND_TIMEOUT);
    assert!(
        list.stdout_str()
            .lines()
            .any(|l| l.starts_with(&name) && l.split_whitespace().nth(3) == Some("1")),
        "in use by one container: {}",
        list.describe()
    );
    let busy = run_cmd(&runvm, &["kernel", "remove", &name], None, COMMAND_TIMEOUT);
    assert_ne!(busy.code, 0, "{}", busy.describe());
    assert!(
        busy.stderr_str().contains("in use by 1 running container"),
        "{}",
        busy.describe()
    );
    drop(c);
    poll_until("the container is gone", Duration::from_secs(30), || {
        let r = run_cmd(&runvm, &["kernel", "remove", &name], None, COMMAND_TIMEOUT);
        (r.code == 0).then_some(())
    });
    assert!(!std::path::Path::new(&format!("{store}/{name}")).exists());
}

/// runvm's own kernel is the store's default; Debian's cloud kernel stays
/// in the store as the compatible choice, picked by name, and runs a
/// container with its network and an exec.
#[e2e_test]
fn runvms_kernel_is_the_default_and_debians_stays_selectable() {
    let runvm = runvm_binary();
    let default = run_cmd(&runvm, &["kernel", "default"], None, COMMAND_TIMEOUT);
    default.assert_code(0, "runvm kernel default");
    assert!(
        default.stdout_str().trim_end().ends_with("-runvm)"),
        "the default is runvm's kernel: {}",
        default.describe()
    );
    let plain = run_one("runvm", &[], &[IMAGE, "uname", "-r"], None);
    plain.assert_code(0, "the default kernel");
    assert!(
        plain.stdout_str().trim_end().ends_with("-runvm"),
        "{}",
        plain.describe()
    );

    let list = run_cmd(&runvm, &["kernel", "list"], None, COMMAND_TIMEOUT);
    let cloud = list
        .stdout_str()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .find(|name| name.ends_with("-cloud-amd64"))
        .unwrap_or_else(|| panic!("no Debian cloud kernel in the store: {}", list.describe()));
    let env = format!("RUNVM_KERNEL={cloud}");
    let c = Container::run_detached(
        "cloud-kernel",
        "runvm",
        &[
            "-e",
            &env,
            IMAGE,
            "sh",
            "-c",
            "uname -r; echo up; sleep 600",
        ],
    );
    c.wait_for_log("up", Duration::from_secs(120));
    assert_eq!(c.logs().stdout_str(), format!("{cloud}\nup\n"));
    let exec = docker(
        &[
            "exec",
            &c.name,
            "sh",
            "-c",
            "uname -r; ip route | grep -c '^default'",
        ],
        None,
    );
    exec.assert_code(0, "exec under the cloud kernel");
    assert_eq!(
        exec.stdout_str(),
        format!("{cloud}\n1\n"),
        "{}",
        exec.describe()
    );
}
