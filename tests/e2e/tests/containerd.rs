//! runvm under containerd, as a Kubernetes `RuntimeClass` configures it:
//! containerd's runc shim (`io.containerd.runc.v2`) with runvm as its runc
//! binary (the runtime option `BinaryName`, which `ctr run --runc-binary`
//! sets). Each scenario runs under runc and under runvm and compares what
//! `ctr` shows; the guest's kernel is the one difference.

use std::sync::OnceLock;
use std::time::Duration;

use runvm_e2e::*;

/// containerd's namespace for these tests (kept apart from Docker's `moby`).
const NS: &str = "runvm-e2e";

/// The containerd to talk to: a system containerd when there is one, else
/// the one dockerd runs.
fn socket() -> &'static str {
    static SOCKET: OnceLock<&'static str> = OnceLock::new();
    SOCKET.get_or_init(|| {
        [
            "/run/containerd/containerd.sock",
            "/run/docker/containerd/containerd.sock",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "no containerd socket: dockerd starts one at /run/docker/containerd/containerd.sock",
        )
    })
}

fn ctr(args: &[&str]) -> Run {
    run_cmd("ctr", &in_namespace(args), None, COMMAND_TIMEOUT)
}

/// `args` after the socket and namespace flags.
fn in_namespace<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["-a", socket(), "-n", NS];
    all.extend_from_slice(args);
    all
}

/// `ctr run <mode> … <id> <cmd…>` with containerd's runc shim and
/// `runc_binary` as its runc (the `BinaryName` option).
fn ctr_run_with(mode: &str, runc_binary: &str, id: &str, cmd: &[&str]) -> Run {
    let mut args = vec![
        "run",
        mode,
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        runc_binary,
        image(),
        id,
    ];
    args.extend_from_slice(cmd);
    ctr(&args)
}

/// The test image in containerd's store (imported once from Docker's).
fn image() -> &'static str {
    static IMPORTED: OnceLock<()> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        host_sh(&format!(
            "docker save {IMAGE} | ctr -a {} -n {NS} images import -",
            socket()
        ))
        .assert_code(0, "importing the test image into containerd");
    });
    "docker.io/runvm-test/busybox:latest"
}

/// The runc binary `--runc-binary` names for `runtime`.
fn binary(runtime: &str) -> String {
    if runtime == "runc" {
        "runc".to_string()
    } else {
        runvm_binary()
    }
}

/// A containerd container, its task killed and both deleted on drop.
struct Task {
    id: String,
}

impl Task {
    fn new(tag: &str) -> Self {
        Task {
            id: unique_name(tag),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            run_cmd_quiet("ctr", &in_namespace(args), None, Duration::from_secs(60))
        };
        quiet(&["task", "kill", "-s", "SIGKILL", &self.id]);
        // The task goes once its VM is down.
        for _ in 0..100 {
            if quiet(&["task", "delete", &self.id]).code == 0
                || quiet(&["task", "ls", "-q"])
                    .stdout_str()
                    .lines()
                    .all(|l| l != self.id)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        quiet(&["container", "delete", &self.id]);
    }
}

/// `ctr run --rm` under `runtime`; returns what it printed and its exit code.
fn ctr_run(runtime: &str, cmd: &[&str]) -> Run {
    let task = Task::new(runtime);
    let _slot = (runtime != "runc").then(|| vm_slots(1));
    ctr_run_with("--rm", &binary(runtime), &task.id, cmd)
}

fn host_kernel() -> String {
    host_sh("uname -r").stdout_str().trim().to_string()
}

#[e2e_test]
fn ctr_run_boots_a_vm_and_returns_its_exit_code() {
    let script = "echo out; echo err >&2; id; exit 7";
    let runc = ctr_run("runc", &["sh", "-c", script]);
    let runvm = ctr_run("runvm", &["sh", "-c", script]);
    runvm.assert_code(7, "ctr run under runvm");
    assert_same(&runc, &runvm, "ctr run: stdout, stderr, exit code");

    let kernel = ctr_run("runvm", &["uname", "-r"]);
    kernel.assert_code(0, "uname -r under runvm");
    let guest = kernel.stdout_str().trim().to_string();
    assert!(!guest.is_empty(), "{}", kernel.describe());
    assert_ne!(
        guest,
        host_kernel(),
        "the workload ran on the host's kernel"
    );
}

#[e2e_test]
fn ctr_task_exec_runs_inside_the_vm() {
    let task = Task::new("exec");
    let _slot = vm_slots(1);
    ctr_run_with(
        "-d",
        &runvm_binary(),
        &task.id,
        &["sh", "-c", "echo ready > /tmp/ready; sleep 600"],
    )
    .assert_code(0, "ctr run -d under runvm");
    let exec = |n: &str, cmd: &[&str]| {
        let mut args = vec!["task", "exec", "--exec-id", n, &task.id];
        args.extend_from_slice(cmd);
        ctr(&args)
    };
    poll_until("the workload's file", Duration::from_secs(120), || {
        let r = exec("poll", &["cat", "/tmp/ready"]);
        (r.code == 0 && r.stdout_str() == "ready\n").then_some(())
    });
    let k = exec("kernel", &["uname", "-r"]);
    k.assert_code(0, "ctr task exec uname -r");
    assert_ne!(
        k.stdout_str().trim(),
        host_kernel(),
        "the exec ran on the host's kernel"
    );
    let code = exec("code", &["sh", "-c", "echo from-exec; exit 5"]);
    code.assert_code(5, "ctr task exec's exit code");
    assert_eq!(code.stdout_str(), "from-exec\n");
    // The exec is in the workload's PID namespace, inside the VM.
    let ps = exec("ps", &["ps", "-o", "comm"]);
    assert!(ps.stdout_str().contains("sleep"), "{}", ps.describe());
    assert!(!ps.stdout_str().contains("qemu"), "{}", ps.describe());
}
