//! Container engines in the VM: dockerd with overlay2 on a runvm disk,
//! its own containers, bridge and published ports, kept across a restart;
//! and three such VMs forming a Docker Swarm whose routing mesh answers
//! on every node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use runvm_e2e::*;

/// Debian bookworm with docker.io; command `dockerd`; the busybox test
/// image saved at /images/busybox.tar (scripts/build-test-images.sh).
const DOCKERD_IMAGE: &str = "runvm-test/dockerd";

/// The pause between two polls of an engine in a VM.
const POLL_PAUSE: Duration = Duration::from_secs(3);

/// [`poll_until`] for an engine in a VM: after each miss, a pause of
/// [`POLL_PAUSE`], since each docker CLI run costs the busy TCG guest a
/// second or more of CPU.
fn poll_engine<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    poll_until(what, timeout, || {
        let got = f();
        if got.is_none() {
            std::thread::sleep(POLL_PAUSE);
        }
        got
    })
}

/// The run options of a dockerd VM: privileged in the guest, a fresh
/// /run each boot (as under runc, a dockerd killed mid-run leaves its pid
/// file behind in the container's /run otherwise), and an ext4 disk for
/// /var/lib/docker (overlay2 needs a file system of the guest's own).
fn dockerd_options(disk_dir: &str) -> Vec<String> {
    [
        "--privileged",
        "--tmpfs",
        "/run",
        "-e",
        &format!("RUNVM_DISKS={disk_dir}/docker.img,/var/lib/docker,ext4,4g"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `docker exec <c> docker <args>`: the engine inside the VM.
fn inner(c: &Container, args: &[&str]) -> Run {
    let mut all = vec!["exec", c.name.as_str(), "docker"];
    all.extend_from_slice(args);
    docker(&all, None)
}

/// Waits for the dockerd in `c` to answer; returns its storage driver and
/// the seconds waited.
fn wait_dockerd(c: &Container) -> (String, f64) {
    let start = Instant::now();
    let driver = poll_engine(
        &format!("dockerd in {} to answer", c.name),
        Duration::from_secs(300),
        || {
            let r = inner(c, &["info", "--format", "{{.Driver}}"]);
            (r.code == 0).then(|| r.stdout_str().trim().to_string())
        },
    );
    (driver, start.elapsed().as_secs_f64())
}

/// An HTTP GET of `url_path` on `ip:port` by busybox's nc in a container
/// of `runtime` (`extra`: more run options, e.g. `--network`); the
/// response, or None if the connection failed.
fn http_get(runtime: &str, extra: &[&str], ip: &str, port: u16, url_path: &str) -> Option<String> {
    let script = format!("printf 'GET {url_path} HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip} {port}");
    let r = run_one(runtime, extra, &[IMAGE, "sh", "-c", &script], None);
    let out = r.stdout_str();
    (r.code == 0 && out.starts_with("HTTP/1")).then_some(out)
}

#[e2e_test]
fn dockerd_in_a_vm_runs_containers_on_overlay2_and_keeps_its_disk() {
    let _slots = vm_slots(1);
    let disk = Volume::create("dind-disk");
    let mut args = vec!["-v".to_owned(), format!("{}:/disks", disk.name)];
    args.extend(dockerd_options("/disks"));
    args.push(DOCKERD_IMAGE.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Container::run_detached("dind", "runvm", &args);

    let (driver, secs) = wait_dockerd(&c);
    eprintln!("dockerd in the VM answered after {secs:.1} s");
    assert_eq!(driver, "overlay2");
    let fs = docker(
        &["exec", &c.name, "stat", "-f", "-c", "%T", "/var/lib/docker"],
        None,
    );
    assert_eq!(fs.stdout_str().trim(), "ext2/ext3", "{}", fs.describe());

    let loaded = inner(&c, &["load", "-i", "/images/busybox.tar"]);
    loaded.assert_code(0, "docker load in the VM");
    assert!(loaded
        .stdout_str()
        .contains("Loaded image: runvm-test/busybox"));

    let start = Instant::now();
    let nested = inner(&c, &["run", "--rm", IMAGE, "echo", "nested"]);
    nested.assert_code(0, "docker run in the VM");
    assert_eq!(nested.stdout_str(), "nested\n");
    eprintln!(
        "docker run --rm in the VM took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    // The inner container's exit code comes through both engines.
    inner(&c, &["run", "--rm", IMAGE, "sh", "-c", "exit 7"]).assert_code(7, "exit 7");

    // Two inner containers on the inner engine's bridge; --init so that
    // httpd stops on SIGTERM and dockerd shuts down in time.
    inner(
        &c,
        &[
            "run", "-d", "--init", "--name", "web", IMAGE, "httpd", "-f", "-p", "80", "-h", "/etc",
        ],
    )
    .assert_code(0, "inner web server");
    let web_ip = inner(
        &c,
        &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"],
    )
    .stdout_str()
    .trim()
    .to_string();
    let fetch = format!("printf 'GET /passwd HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {web_ip} 80");
    let over_bridge = inner(&c, &["run", "--rm", IMAGE, "sh", "-c", &fetch]);
    over_bridge.assert_code(0, "one inner container reaches another");
    assert!(
        over_bridge.stdout_str().contains("root:x:0:0:"),
        "{}",
        over_bridge.describe()
    );

    // A port the inner engine publishes on the VM's address answers a
    // runc container on the host's bridge.
    inner(
        &c,
        &[
            "run",
            "-d",
            "--init",
            "-p",
            "8080:80",
            "--name",
            "published",
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        ],
    )
    .assert_code(0, "inner published web server");
    let vm_ip = c.inspect("{{.NetworkSettings.IPAddress}}");
    let answer = poll_until("the inner published port", Duration::from_secs(60), || {
        http_get("runc", &[], &vm_ip, 8080, "/group")
    });
    assert!(answer.contains("root:x:0:"), "{answer}");

    // The kernel loaded what dockerd needed, on request (no modprobe of
    // the workload's did it all: overlay is asked for by mount(2)), unless
    // the kernel has it built in (runvm's own kernel has overlay).
    let modules = docker(&["exec", &c.name, "cat", "/proc/modules"], None).stdout_str();
    let builtin = docker(
        &[
            "exec",
            &c.name,
            "sh",
            "-c",
            "cat /lib/modules/$(uname -r)/modules.builtin",
        ],
        None,
    )
    .stdout_str();
    for module in ["overlay", "bridge", "veth", "br_netfilter"] {
        let loaded = modules
            .lines()
            .any(|l| l.starts_with(&format!("{module} ")));
        let built_in = builtin
            .lines()
            .any(|l| l.ends_with(&format!("/{module}.ko")));
        assert!(
            loaded || built_in,
            "{module} is neither loaded nor built in:\n{modules}"
        );
    }

    // Stopped and started again: the disk keeps the engine's state.
    let start = Instant::now();
    docker(&["stop", &c.name], None).assert_code(0, "docker stop");
    let stop_secs = start.elapsed().as_secs_f64();
    assert_eq!(
        c.inspect("{{.State.ExitCode}}"),
        "0",
        "dockerd's clean exit"
    );
    eprintln!("docker stop of the dockerd VM took {stop_secs:.1} s");
    docker(&["start", &c.name], None).assert_code(0, "docker start");
    let (driver, secs) = wait_dockerd(&c);
    eprintln!("dockerd answered {secs:.1} s after the restart");
    assert_eq!(driver, "overlay2");
    inner(&c, &["image", "inspect", IMAGE]).assert_code(0, "the loaded image after a restart");
    let names = inner(&c, &["ps", "-a", "--format", "{{.Names}}"]).stdout_str();
    let names: BTreeSet<&str> = names.lines().collect();
    assert_eq!(names, BTreeSet::from(["published", "web"]));
    let again = inner(&c, &["run", "--rm", IMAGE, "echo", "again"]);
    assert_eq!(again.stdout_str(), "again\n", "{}", again.describe());
}

#[e2e_test]
fn three_dockerd_vms_form_a_swarm_whose_mesh_answers_on_every_node() {
    // Three VMs at once: every slot this binary has.
    let _slots = vm_slots(3);
    let start = Instant::now();
    let net = Network::create("swarm", &[]);
    let mut nodes = Vec::new();
    let mut ips = Vec::new();
    // One after another: a node's dockerd is up before the next boots,
    // which keeps three TCG boots from sharing two cores.
    for i in 0..3 {
        let hostname = format!("node{i}");
        let mut args = vec![
            "--network".to_owned(),
            net.name.clone(),
            "--hostname".to_owned(),
            hostname,
        ];
        args.extend(dockerd_options("/disks"));
        args.push(DOCKERD_IMAGE.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Container::run_detached(&format!("swarm{i}"), "runvm", &args);
        wait_dockerd(&node);
        inner(&node, &["load", "-i", "/images/busybox.tar"]).assert_code(0, "docker load");
        ips.push(node.address_on(&net.name, "IPAddress"));
        nodes.push(node);
    }
    eprintln!(
        "swarm: three dockerd VMs up after {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let manager = &nodes[0];
    inner(manager, &["swarm", "init", "--advertise-addr", &ips[0]])
        .assert_code(0, "docker swarm init");
    let token = inner(manager, &["swarm", "join-token", "-q", "worker"]);
    token.assert_code(0, "join token");
    let token = token.stdout_str().trim().to_string();
    let manager_addr = format!("{}:2377", ips[0]);
    for worker in &nodes[1..] {
        inner(worker, &["swarm", "join", "--token", &token, &manager_addr])
            .assert_code(0, "docker swarm join");
    }
    poll_engine("three Ready nodes", Duration::from_secs(120), || {
        let r = inner(manager, &["node", "ls", "--format", "{{.Status}}"]);
        (r.stdout_str().lines().filter(|l| *l == "Ready").count() == 3).then_some(())
    });
    eprintln!(
        "swarm: three Ready nodes after {:.0} s",
        start.elapsed().as_secs_f64()
    );

    // A global service publishing 8080 on the routing mesh; each task
    // serves its own container's hostname. No registry: the nodes have
    // the image loaded, and the manager is told not to look it up.
    inner(
        manager,
        &[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--mode",
            "global",
            "--name",
            "web",
            "-p",
            "8080:80",
            IMAGE,
            "sh",
            "-c",
            "mkdir -p /www && hostname >/www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )
    .assert_code(0, "docker service create");
    poll_engine("three running tasks", Duration::from_secs(400), || {
        let r = inner(
            manager,
            &["service", "ps", "web", "--format", "{{.CurrentState}}"],
        );
        let states = r.stdout_str();
        (states.lines().filter(|s| s.starts_with("Running")).count() == 3).then_some(())
    });
    eprintln!(
        "swarm: the global service runs on three nodes after {:.0} s",
        start.elapsed().as_secs_f64()
    );

    // Every node's address answers; the mesh spreads the requests over
    // the tasks of all three VMs (over the overlay network between them).
    let on_net = ["--network", net.name.as_str()];
    let mut tasks = BTreeSet::new();
    for ip in &ips {
        let answer = poll_until(
            &format!("the mesh on {ip}:8080"),
            Duration::from_secs(120),
            || http_get("runc", &on_net, ip, 8080, "/"),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tasks.insert(answer.lines().last().unwrap_or_default().to_string());
    }
    poll_until(
        "answers from all three tasks",
        Duration::from_secs(120),
        || {
            if let Some(a) = http_get("runc", &on_net, &ips[1], 8080, "/") {
                tasks.insert(a.lines().last().unwrap_or_default().to_string());
            }
            (tasks.len() == 3).then_some(())
        },
    );
    eprintln!(
        "swarm: the mesh answered on every node after {:.0} s",
        start.elapsed().as_secs_f64()
    );
}
