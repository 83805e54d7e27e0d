//! Signals, `docker stop`, `docker start`, `--rm`.

use std::time::{Duration, Instant};

use runvm_e2e::*;

const BOOT: Duration = Duration::from_secs(60);

/// Runs the trap scenario under `runtime`; returns (stdout logs, stderr logs,
/// exit code, duration of `docker stop`).
fn trap_scenario(runtime: &str) -> (String, String, i32, Duration) {
    let _slot = (runtime == "runvm").then(|| vm_slots(1));
    let c = Container::run_detached(
        &format!("trap-{runtime}"),
        runtime,
        &[
            IMAGE,
            "sh",
            "-c",
            r#"trap "echo got TERM; exit 7" TERM; trap "echo got USR1" USR1; echo ready; while :; do sleep 1; done"#,
        ],
    );
    c.wait_for_log("ready", BOOT);
    docker(&["kill", "-s", "USR1", &c.name], None).assert_code(0, "docker kill -s USR1");
    c.wait_for_log("got USR1", Duration::from_secs(30));
    let start = Instant::now();
    docker(&["stop", &c.name], None).assert_code(0, "docker stop");
    let took = start.elapsed();
    let code: i32 = c
        .inspect("{{.State.ExitCode}}")
        .parse()
        .expect("exit code is a number");
    let logs = c.logs();
    (logs.stdout_str(), logs.stderr_str(), code, took)
}

#[e2e_test]
fn signals_and_stop() {
    let runc = trap_scenario("runc");
    let runvm = trap_scenario("runvm");
    eprintln!(
        "docker stop took {:?} (runc) and {:?} (runvm)",
        runc.3, runvm.3
    );
    assert!(
        runvm.3 < Duration::from_secs(8),
        "docker stop of runvm took {:?}: SIGTERM did not reach the workload (Docker killed it after its timeout)",
        runvm.3
    );
    assert_eq!(runvm.2, 7, "exit code after TERM trap; logs: {runvm:?}");
    assert_eq!(runvm.0, "ready\ngot USR1\ngot TERM\n", "logs: {runvm:?}");
    assert_eq!(
        (&runc.0, &runc.1, runc.2),
        (&runvm.0, &runvm.1, runvm.2),
        "runc vs runvm"
    );
}

fn start_again(runtime: &str) -> (String, String) {
    let _slot = (runtime == "runvm").then(|| vm_slots(1));
    let c = Container::run_detached(
        &format!("restart-{runtime}"),
        runtime,
        &[IMAGE, "echo", "a line"],
    );
    assert_eq!(c.wait_exit(), 0, "first run's exit code");
    let again = docker(&["start", "-a", &c.name], None);
    again.assert_code(0, "docker start -a");
    assert_eq!(
        again.stdout_str(),
        "a line\n",
        "{runtime}: docker start -a:\n{}",
        again.describe()
    );
    assert_eq!(
        c.inspect("{{.State.Status}} {{.State.ExitCode}}"),
        "exited 0"
    );
    let logs = c.logs();
    (logs.stdout_str(), logs.stderr_str())
}

#[e2e_test]
fn start_boots_a_stopped_container_again() {
    let runc = start_again("runc");
    let runvm = start_again("runvm");
    assert_eq!(runvm.0, "a line\na line\n", "logs after two runs");
    assert_eq!(runc, runvm, "logs: runc vs runvm");
}

#[e2e_test]
fn rm_removes_the_container() {
    for runtime in ["runc", "runvm"] {
        let c = Container::new(&format!("rm-{runtime}"));
        let run = run_one(runtime, &["--name", &c.name], &[IMAGE, "true"], None);
        run.assert_code(0, "docker run --rm");
        let inspect = docker(&["inspect", &c.name], None);
        assert_ne!(
            inspect.code,
            0,
            "{runtime}: container still exists after docker run --rm finished:\n{}",
            inspect.describe()
        );
    }
}

/// `docker exec` into a running container: output, exit code, environment.
fn exec_scenario(runtime: &str) -> Vec<Run> {
    let _slot = (runtime == "runvm").then(|| vm_slots(1));
    let c = Container::run_detached(
        &format!("exec-{runtime}"),
        runtime,
        &[
            "-h",
            "samehost",
            IMAGE,
            "sh",
            "-c",
            "echo ready; exec sleep 600",
        ],
    );
    c.wait_for_log("ready", BOOT);
    let runs = vec![
        docker(
            &[
                "exec",
                &c.name,
                "sh",
                "-c",
                "echo out; echo err >&2; exit 4",
            ],
            None,
        ),
        docker(
            &[
                "exec",
                "-u",
                "1000:1000",
                "-w",
                "/tmp",
                "-e",
                "X=1",
                &c.name,
                "sh",
                "-c",
                "id; pwd; echo $X",
            ],
            None,
        ),
        docker(&["exec", "-i", &c.name, "cat"], Some(b"via exec stdin\n")),
        docker(&["exec", &c.name, "nonexist"], None),
    ];
    docker(&["rm", "-f", &c.name], None);
    runs
}

#[e2e_test]
fn exec_into_running_container() {
    let runc = exec_scenario("runc");
    let runvm = exec_scenario("runvm");
    let what = [
        "exec sh exit 4",
        "exec -u -w -e",
        "exec -i cat",
        "exec nonexist",
    ];
    for ((a, b), what) in runc.iter().zip(&runvm).zip(what) {
        assert_same(a, b, what);
    }
    assert_eq!(runvm[0].code, 4);
    assert_eq!(runvm[2].stdout, b"via exec stdin\n");
}
