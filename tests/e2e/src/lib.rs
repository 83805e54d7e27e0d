//! Shared helpers of the end-to-end and differential tests in `tests/`.
//!
//! Every test drives the real `docker` CLI against the running daemon, runs a
//! scenario under `--runtime=runc` and under `--runtime=runvm`, and compares
//! what a user sees (stdout, stderr, exit code, logs, ...): every Docker
//! behaviour is as under runc unless README.md lists the difference.
//!
//! Every test is marked `#[e2e_test]`: without `RUNVM_E2E=1` it is reported
//! as ignored, with the reason; with it, missing prerequisites make the test
//! fail instead of skipping.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod differential;
pub mod scenarios;

/// The image every test uses: a static busybox imported with `docker import`.
pub const IMAGE: &str = "runvm-test/busybox";

/// How long one `docker` (or other host) command may take before the test
/// fails: a VM boots in ~6 s under TCG, so this only catches hangs.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// Enabling and prerequisites
// ---------------------------------------------------------------------------

/// Name of the running test (the test harness names each test's thread after
/// it), for messages.
pub fn test_name() -> String {
    match thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => "end-to-end tests".to_string(),
    }
}

pub use runvm_e2e_macros::e2e_test;

/// Checks, once per test binary, what the end-to-end tests need (root, a
/// Docker daemon with the runvm runtime, the test image's prerequisites)
/// and panics naming the missing one: under `make test` a missing
/// prerequisite is a failure, never a skip. `#[e2e_test]` calls it first.
pub fn require_prerequisites() {
    static PREREQS: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = PREREQS.get_or_init(check_prerequisites) {
        panic!("a prerequisite of the end-to-end tests is missing: {e}");
    }
}

fn check_prerequisites() -> Result<(), String> {
    let id = run_cmd_quiet("id", &["-u"], None, Duration::from_secs(10));
    let uid = String::from_utf8_lossy(&id.stdout).trim().to_string();
    if id.code != 0 || uid != "0" {
        return Err(format!(
            "the tests must run as root (`id -u` printed {uid:?}); run them with sudo"
        ));
    }
    let info = run_cmd_quiet(
        "docker",
        &["info", "--format", "{{json .Runtimes}}"],
        None,
        Duration::from_secs(60),
    );
    if info.code != 0 {
        return Err(format!(
            "`docker info` failed (exit code {}): {}; start dockerd",
            info.code,
            info.stderr_str().trim()
        ));
    }
    let name = runvm_runtime();
    if !info.stdout_str().contains(&format!("\"{name}\"")) {
        return Err(format!(
            "the Docker daemon has no runtime named {name} (runtimes: {}); run `make install`, \
             which registers it",
            info.stdout_str().trim()
        ));
    }
    let img = run_cmd_quiet(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", IMAGE],
        None,
        Duration::from_secs(60),
    );
    if img.code != 0 {
        return Err(format!(
            "the test image {IMAGE} does not exist ({}); run `make images`",
            img.stderr_str().trim()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// What a command printed and how it ended.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code; 128 + signal number if the command was killed by a signal.
    pub code: i32,
    /// Name of the container, when the run was made by [`run_both`] or
    /// [`run_one`].
    pub container_name: Option<String>,
    /// Full id of the container, when known (from `--cidfile`).
    pub container_id: Option<String>,
}

impl Run {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Panics, showing everything, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert!(
            self.code == code,
            "{what}: expected exit code {code}, got {}\n{}",
            self.code,
            self.describe()
        );
        self
    }

    /// Readable dump of the run for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!("  exit code: {}\n", self.code);
        if let Some(n) = &self.container_name {
            s += &format!(
                "  container: {n} {}\n",
                self.container_id.as_deref().unwrap_or("")
            );
        }
        s += &format!(
            "  stdout ({} bytes):\n{}",
            self.stdout.len(),
            indent(&self.stdout)
        );
        s += &format!(
            "  stderr ({} bytes):\n{}",
            self.stderr.len(),
            indent(&self.stderr)
        );
        s
    }
}

fn indent(bytes: &[u8]) -> String {
    const MAX: usize = 4000;
    let (shown, cut) = if bytes.len() > MAX {
        (
            &bytes[..MAX],
            format!("    ... ({} more bytes)\n", bytes.len() - MAX),
        )
    } else {
        (bytes, String::new())
    };
    let text = String::from_utf8_lossy(shown);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        // Debug formatting makes \r, trailing spaces and control bytes visible.
        out += &format!("    | {:?}\n", line);
    }
    out + &cut
}

/// Runs `program args`, feeding `stdin` (or /dev/null), and collects its
/// output. Panics if it runs longer than `timeout` (after killing it).
pub fn run_cmd(program: &str, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Run {
    run_cmd_logged(program, args, stdin, timeout, true)
}

/// [`run_cmd`] without the progress line on stderr (for polling).
pub fn run_cmd_quiet(program: &str, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Run {
    run_cmd_logged(program, args, stdin, timeout, false)
}

fn run_cmd_logged(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    log: bool,
) -> Run {
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    let started = Instant::now();

    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        // A write error (EPIPE) just means the command stopped reading.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let read_all = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out_reader = read_all(Box::new(child.stdout.take().expect("stdout is piped")));
    let err_reader = read_all(Box::new(child.stderr.take().expect("stderr is piped")));

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let run = Run {
                    stdout: out_reader.join().unwrap_or_default(),
                    stderr: err_reader.join().unwrap_or_default(),
                    code: -1,
                    ..Run::default()
                };
                panic!(
                    "`{shown}` did not finish within {timeout:?}; killed it\n{}",
                    run.describe()
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{shown}`: {e}"),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    let run = Run {
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        code,
        ..Run::default()
    };
    if log {
        eprintln!(
            "[{}] {:.1}s exit {}: {}",
            test_name(),
            started.elapsed().as_secs_f64(),
            run.code,
            shorten(&shown)
        );
    }
    run
}

/// Quotes `arg` for display as part of a shell command line.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+{}".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 200 {
        s.chars().take(200).collect::<String>() + "..."
    } else {
        s.to_string()
    }
}

/// The Docker runtime name the tests call "runvm": `RUNVM_E2E_RUNTIME` when
/// set (a development build registered under a name of its own, next to the
/// installed one), else `runvm`.
pub fn runvm_runtime() -> String {
    std::env::var("RUNVM_E2E_RUNTIME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "runvm".to_string())
}

/// The `runvm` binary behind [`runvm_runtime`], as dockerd has it
/// registered.
pub fn runvm_binary() -> String {
    let name = runvm_runtime();
    let format = format!("{{{{(index .Runtimes \"{name}\").Path}}}}");
    let info = docker(&["info", "--format", &format], None);
    info.assert_code(0, "docker info");
    let path = info.stdout_str().trim().to_string();
    assert!(
        path.starts_with('/'),
        "dockerd has no runtime {name}: {}",
        info.describe()
    );
    path
}

/// Runs the `docker` CLI. (/usr/local/bin/docker may be newer than the daemon:
/// it negotiates the API version.) `--runtime=runvm` means
/// [`runvm_runtime`].
pub fn docker(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let runtime = format!("--runtime={}", runvm_runtime());
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "--runtime=runvm" {
                runtime.as_str()
            } else {
                a
            }
        })
        .collect();
    run_cmd("docker", &args, stdin, COMMAND_TIMEOUT)
}

/// Runs a host shell command line with `sh -c`.
pub fn host_sh(script: &str) -> Run {
    run_cmd("sh", &["-c", script], None, COMMAND_TIMEOUT)
}

/// Runs `docker run --rm --runtime=<runtime> <run_args> <image_and_cmd>` with a
/// unique container name (unless `run_args` names it) and a `--cidfile`, so the
/// returned [`Run`] knows the container's name and id. A runvm run takes one
/// VM slot (see [`vm_slots`]).
pub fn run_one(
    runtime: &str,
    run_args: &[&str],
    image_and_cmd: &[&str],
    stdin: Option<&[u8]>,
) -> Run {
    let has_name = run_args
        .iter()
        .any(|a| *a == "--name" || a.starts_with("--name="));
    let name = if has_name {
        None
    } else {
        Some(unique_name(runtime))
    };
    let _guard = name.as_ref().map(|n| Container::adopt(n));
    let dir = tempfile::tempdir().expect("tempdir");
    let cidfile = dir.path().join("cid");
    let cidfile = cidfile.to_str().expect("utf-8 temp path").to_string();
    let runtime_arg = format!("--runtime={runtime}");
    let mut args: Vec<&str> = vec!["run", "--rm", &runtime_arg, "--cidfile", &cidfile];
    if let Some(n) = &name {
        args.extend(["--name", n.as_str()]);
    }
    args.extend_from_slice(run_args);
    args.extend_from_slice(image_and_cmd);
    let _slot = if runtime == "runvm" {
        Some(vm_slots(1))
    } else {
        None
    };
    let mut run = docker(&args, stdin);
    run.container_name = name;
    run.container_id = std::fs::read_to_string(&cidfile)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    run
}

/// Runs the same `docker run --rm` under runc and under runvm; returns
/// `(runc, runvm)`.
pub fn run_both(run_args: &[&str], image_and_cmd: &[&str], stdin: Option<&[u8]>) -> (Run, Run) {
    let runc = run_one("runc", run_args, image_and_cmd, stdin);
    let runvm = run_one("runvm", run_args, image_and_cmd, stdin);
    (runc, runvm)
}

/// Runs `sh -c <script>` in the test image with `run_args` under both
/// runtimes and asserts the same stdout, stderr and exit code.
pub fn same_sh(run_args: &[&str], script: &str) -> (Run, Run) {
    let (runc, runvm) = run_both(run_args, &[IMAGE, "sh", "-c", script], None);
    assert_same(
        &runc,
        &runvm,
        &format!("{} sh -c '{script}'", run_args.join(" ")),
    );
    (runc, runvm)
}

/// Replaces the run's own container id (full and 12-character short form) and
/// name with placeholders, so that two runs can be compared.
pub fn normalise_ids(run: &Run, bytes: &[u8]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if let Some(id) = &run.container_id {
        text = text.replace(id.as_str(), "<container-id>");
        if id.len() >= 12 {
            text = text.replace(&id[..12], "<container-id>");
        }
    }
    if let Some(name) = &run.container_name {
        text = text.replace(name.as_str(), "<container-name>");
    }
    text.into_bytes()
}

/// Asserts that runc's and runvm's runs gave the same stdout, stderr and exit
/// code (after [`normalise_ids`]); on mismatch prints both sides.
pub fn assert_same(runc: &Run, runvm: &Run, what: &str) {
    assert_same_with(runc, runvm, what, |b| b.to_vec());
}

/// Like [`assert_same`], with an extra normalisation applied to stdout and
/// stderr of both sides (after [`normalise_ids`]).
pub fn assert_same_with(runc: &Run, runvm: &Run, what: &str, norm: impl Fn(&[u8]) -> Vec<u8>) {
    let a_out = norm(&normalise_ids(runc, &runc.stdout));
    let b_out = norm(&normalise_ids(runvm, &runvm.stdout));
    let a_err = norm(&normalise_ids(runc, &runc.stderr));
    let b_err = norm(&normalise_ids(runvm, &runvm.stderr));
    let mut diffs = Vec::new();
    if runc.code != runvm.code {
        diffs.push(format!(
            "exit code: runc {} vs runvm {}",
            runc.code, runvm.code
        ));
    }
    if a_out != b_out {
        diffs.push("stdout differs".to_string());
    }
    if a_err != b_err {
        diffs.push("stderr differs".to_string());
    }
    if !diffs.is_empty() {
        let shown = |r: &Run, out: Vec<u8>, err: Vec<u8>| {
            Run {
                stdout: out,
                stderr: err,
                ..r.clone()
            }
            .describe()
        };
        panic!(
            "{what}: runvm differs from runc: {}\n--- runc (normalised):\n{}--- runvm (normalised):\n{}",
            diffs.join(", "),
            shown(runc, a_out, a_err),
            shown(runvm, b_out, b_err),
        );
    }
}

/// Normalisation for text mentioning the container's own IPv4 address (which
/// differs between two containers): every IPv4 address other than loopback
/// becomes `<ip>`.
pub fn normalise_ipv4(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match token.parse::<Ipv4Addr>() {
            Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => out.push_str("<ip>"),
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out.into_bytes()
}

/// Removes `\r` (terminal line endings).
pub fn strip_cr(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|b| *b != b'\r').collect()
}

/// `n` random bytes from /dev/urandom.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut data = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("read /dev/urandom");
    data
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Concurrency limit
// ---------------------------------------------------------------------------

/// How many VMs may run at once in one test binary (the tests inside one
/// binary run in parallel threads). `RUNVM_E2E_VMS` overrides the default 2.
pub fn vm_capacity() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("RUNVM_E2E_VMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(2)
    })
}

static IN_USE: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// Permission to run some VMs; released on drop.
pub struct VmSlots {
    n: usize,
}

/// Waits until `n` VM slots are free and takes them. A test that keeps VMs
/// running while it starts others (detached containers) takes as many slots as
/// it runs VMs at once, up front. Re-entrant: a thread that already holds
/// slots gets an empty permit, so [`run_one`] inside such a test does not
/// wait for itself.
pub fn vm_slots(n: usize) -> VmSlots {
    if HELD.with(|h| h.get()) > 0 {
        return VmSlots { n: 0 };
    }
    let n = n.clamp(1, vm_capacity());
    let mut in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    while *in_use + n > vm_capacity() {
        in_use = FREED.wait(in_use).unwrap_or_else(|e| e.into_inner());
    }
    *in_use += n;
    HELD.with(|h| h.set(n));
    VmSlots { n }
}

impl Drop for VmSlots {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let mut in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        *in_use -= self.n;
        HELD.with(|h| h.set(0));
        FREED.notify_all();
    }
}

// ---------------------------------------------------------------------------
// Names, guards, polling
// ---------------------------------------------------------------------------

/// A unique Docker object name for this test process: `runvm-e2e-<tag>-<pid>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "runvm-e2e-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A container that is `docker rm -f`-ed when the guard drops (also when the
/// test panics).
pub struct Container {
    pub name: String,
}

impl Container {
    /// A fresh unique name for a container the test is about to create.
    pub fn new(tag: &str) -> Self {
        Container {
            name: unique_name(tag),
        }
    }

    /// Starts `docker run -d --name <fresh name> --runtime=<runtime> <args>`
    /// (`args`: run options, then image and command) and panics if Docker
    /// refuses it. The container is removed when the guard drops.
    pub fn run_detached(tag: &str, runtime: &str, args: &[&str]) -> Self {
        let c = Container::new(tag);
        let rt = format!("--runtime={runtime}");
        let mut all = vec!["run", "-d", "--name", c.name.as_str(), rt.as_str()];
        all.extend_from_slice(args);
        docker(&all, None).assert_code(0, &format!("{runtime}: docker run -d {}", args.join(" ")));
        c
    }

    /// Takes care of removing the container called `name`.
    pub fn adopt(name: &str) -> Self {
        Container {
            name: name.to_string(),
        }
    }

    /// `docker inspect -f <format> <name>`, trimmed; panics if it fails.
    pub fn inspect(&self, format: &str) -> String {
        let r = docker(&["inspect", "-f", format, &self.name], None);
        r.assert_code(0, &format!("docker inspect {}", self.name));
        r.stdout_str().trim().to_string()
    }

    /// The container's processes as the host sees them (`docker top`):
    /// host pid and command name. Under runvm these are the host-side
    /// helpers (supervisor, QEMU, virtiofsd, exec clients).
    pub fn host_processes(&self) -> Vec<(u32, String)> {
        let r = docker(&["top", &self.name, "-o", "pid,comm"], None);
        r.assert_code(0, "docker top");
        r.stdout_str()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let pid = f.next()?.parse().ok()?;
                Some((pid, f.next()?.to_string()))
            })
            .collect()
    }

    /// Host pids of the container's processes whose command name starts
    /// with `comm`.
    pub fn host_pids_of(&self, comm: &str) -> Vec<u32> {
        self.host_processes()
            .into_iter()
            .filter(|(_, c)| c.starts_with(comm))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Waits until `docker ps -a` no longer lists the container (after a
    /// `--rm` run, whose removal may lag the client a bit); panics after
    /// `timeout`, naming `what`.
    pub fn wait_removed(&self, what: &str, timeout: Duration) {
        poll_until(
            &format!("container {} to be removed after {what}", self.name),
            timeout,
            || {
                let ps = docker(
                    &[
                        "ps",
                        "-a",
                        "-q",
                        "--filter",
                        &format!("name=^/{}$", self.name),
                    ],
                    None,
                );
                ps.assert_code(0, "docker ps -a");
                ps.stdout_str().trim().is_empty().then_some(())
            },
        );
    }

    /// The container's address on Docker network `net`: `field` of its
    /// settings there (`IPAddress`, `GlobalIPv6Address`).
    pub fn address_on(&self, net: &str, field: &str) -> String {
        self.inspect(&format!(
            "{{{{(index .NetworkSettings.Networks \"{net}\").{field}}}}}"
        ))
    }

    /// `docker logs <name>`.
    pub fn logs(&self) -> Run {
        docker(&["logs", &self.name], None)
    }

    fn logs_quiet(&self) -> Run {
        run_cmd_quiet("docker", &["logs", &self.name], None, COMMAND_TIMEOUT)
    }

    /// Polls `docker logs` until stdout contains `needle`; panics after
    /// `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Run {
        poll_until(
            &format!("`{needle}` in docker logs {}", self.name),
            timeout,
            || {
                let logs = self.logs_quiet();
                logs.stdout_str().contains(needle).then_some(logs)
            },
        )
    }

    /// Waits until `path` exists in the running container (`docker exec
    /// test -f`, every 250 ms); panics after `timeout`, naming `what`.
    pub fn wait_for_file(&self, what: &str, path: &str, timeout: Duration) {
        poll_until(what, timeout, || {
            (docker(&["exec", &self.name, "test", "-f", path], None).code == 0).then_some(())
        });
    }

    /// Waits for the container to stop (`docker wait`); returns its exit code.
    pub fn wait_exit(&self) -> i32 {
        let r = docker(&["wait", &self.name], None);
        r.assert_code(0, &format!("docker wait {}", self.name));
        r.stdout_str()
            .trim()
            .parse()
            .expect("docker wait prints the exit code")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Docker network of this test process, removed when the guard drops
/// (after the containers on it: declare it before them).
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(tag: &str, options: &[&str]) -> Self {
        let name = unique_name(tag);
        let mut args = vec!["network", "create"];
        args.extend_from_slice(options);
        args.push(&name);
        docker(&args, None).assert_code(0, &format!("docker network create {name}"));
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// Builds `tag` from a Dockerfile text (no build context besides it).
pub fn build_image(tag: &str, dockerfile: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    let path = dir.path().to_str().expect("utf-8").to_string();
    docker(&["build", "-q", "-t", tag, &path], None).assert_code(0, "docker build");
}

/// A named volume removed when the guard drops.
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn create(tag: &str) -> Self {
        let name = unique_name(tag);
        docker(&["volume", "create", &name], None).assert_code(0, "docker volume create");
        Volume { name }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Calls `f` every 250 ms until it returns `Some`; panics after `timeout`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------
// Leftovers
// ---------------------------------------------------------------------------

/// Host processes whose name marks them as part of a runvm container.
fn is_runvm_process(comm: &str, argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    // comm is cut to 15 characters: qemu-system-x86, runvm-superviso.
    comm.starts_with("qemu-system")
        || comm == "virtiofsd"
        || comm.starts_with("runvm-supervis")
        || base.starts_with("qemu-system")
        || base == "virtiofsd"
        || base == "runvm-supervisor"
}

/// Everything a runvm container may leave behind: QEMU, virtiofsd and
/// supervisor processes, and network interfaces named `runvm*` on the host or
/// in the network namespace of any running container.
///
/// Meant to be called when no runvm container runs (a running one legitimately
/// has all of these, e.g. `runvm-tap0` in its netns).
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let ps = run_cmd_quiet(
        "ps",
        &["-eo", "pid,comm,args"],
        None,
        Duration::from_secs(30),
    );
    for line in ps.stdout_str().lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_pid), Some(comm)) = (f.next(), f.next()) else {
            continue;
        };
        let argv0 = f.next().unwrap_or("");
        if is_runvm_process(comm, argv0) {
            found.push(format!("process: {}", line.trim()));
        }
    }
    let runvm_links = |out: &str, place: &str, found: &mut Vec<String>| {
        for line in out.lines() {
            // "<index>: <name>[@<peer>]: <flags> ..."
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if name.starts_with("runvm") {
                found.push(format!("interface in {place}: {}", shorten(line)));
            }
        }
    };
    let host = run_cmd_quiet("ip", &["-o", "link"], None, Duration::from_secs(30));
    runvm_links(&host.stdout_str(), "host netns", &mut found);
    let ids = run_cmd_quiet("docker", &["ps", "-q"], None, Duration::from_secs(60));
    for id in ids.stdout_str().split_whitespace() {
        let pid = run_cmd_quiet(
            "docker",
            &["inspect", "-f", "{{.State.Pid}}", id],
            None,
            Duration::from_secs(60),
        );
        let pid = pid.stdout_str().trim().to_string();
        if pid.is_empty() || pid == "0" {
            continue;
        }
        let links = run_cmd_quiet(
            "nsenter",
            &["-t", &pid, "-n", "ip", "-o", "link"],
            None,
            Duration::from_secs(30),
        );
        runvm_links(
            &links.stdout_str(),
            &format!("netns of container {id}"),
            &mut found,
        );
    }
    found
}

/// Polls [`leftovers`] until there are none; panics listing them after
/// `timeout`.
pub fn assert_no_leftovers(what: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: runvm left things behind ({timeout:?} after):\n  {}",
                left.join("\n  ")
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------
// A terminal driver, for interactive sessions and window-size changes
// ---------------------------------------------------------------------------

/// A program running on a pseudo-terminal this test owns, the way a user's
/// terminal runs `docker run -it`: input is typed into the master, output
/// read from it, and resizing the master sends the program SIGWINCH.
pub struct PtySession {
    master: std::fs::File,
    child: std::process::Child,
    seen: String,
}

impl PtySession {
    /// Starts `program args` on a new terminal of `rows` x `cols`.
    pub fn spawn(program: &str, args: &[&str], rows: u16, cols: u16) -> Self {
        use std::os::unix::process::CommandExt;
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave = pty.slave;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe system
        // calls on the child's own stdin; nothing is allocated.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                tiocsctty(0, 0)?;
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        let master = std::fs::File::from(pty.master);
        // Non-blocking reads, so `read_until` can time out.
        let flags =
            nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .expect("F_SETFL");
        PtySession {
            master,
            child,
            seen: String::new(),
        }
    }

    /// Types `text`.
    pub fn type_text(&mut self, text: &str) {
        use std::io::Write;
        self.master
            .write_all(text.as_bytes())
            .expect("write to the pty");
    }

    /// Changes the terminal size (the program gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, nix::pty::Winsize);
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` from a valid pointer.
        unsafe { tiocswinsz(self.master.as_raw_fd(), &ws) }.expect("TIOCSWINSZ");
    }

    /// Reads output until `needle` has appeared since the last call;
    /// panics with everything seen after `timeout`.
    pub fn read_until(&mut self, needle: &str, timeout: Duration) {
        use std::io::Read;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(at) = self.seen.find(needle) {
                self.seen.drain(..at + needle.len());
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{needle}` did not appear on the terminal; it showed: {:?}",
                self.seen
            );
            match self.master.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(20)),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                // EIO: the program closed the terminal.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Waits for the program to exit; returns its exit code.
    pub fn wait(mut self, timeout: Duration) -> i32 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal session did not end; it showed: {:?}",
                    self.seen
                );
            }
            // Keep draining output so the program never blocks on a full pty.
            let _ = std::io::Read::read(&mut self.master, &mut [0u8; 4096]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_normalisation() {
        let got = normalise_ipv4(b"127.0.0.1\tlocalhost\n172.17.0.3\tsamehost\n1.2\n");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "127.0.0.1\tlocalhost\n<ip>\tsamehost\n1.2\n"
        );
    }

    #[test]
    fn runvm_process_names() {
        assert!(is_runvm_process(
            "qemu-system-x86",
            "/usr/bin/qemu-system-x86_64"
        ));
        assert!(is_runvm_process(
            "runvm-superviso",
            "/runvm/bin/runvm-supervisor"
        ));
        assert!(is_runvm_process("virtiofsd", "/runvm/bin/virtiofsd"));
        assert!(!is_runvm_process("dockerd", "dockerd"));
    }

    #[test]
    fn ids_are_normalised() {
        let run = Run {
            container_name: Some("runvm-e2e-x-1-0".into()),
            container_id: Some("0123456789abcdef".repeat(4)),
            ..Run::default()
        };
        let got = normalise_ids(&run, b"host 0123456789ab in runvm-e2e-x-1-0\n");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "host <container-id> in <container-name>\n"
        );
    }
}
