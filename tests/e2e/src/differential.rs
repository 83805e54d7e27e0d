//! The differential runner: runs each [`Scenario`] of the table in
//! `scenarios.rs` under runc and under runvm and compares what a user sees
//! (stdout, stderr, exit code, and the files a scenario leaves on the host).
//!
//! A scenario is one of:
//! * `docker run --rm <args> IMAGE <cmd…>` ([`run`], and [`sh`] for
//!   `sh -c SCRIPT`), or
//! * a host bash script ([`host`]) for what takes more than one command
//!   (`docker exec`, `stop`, `cp`, `commit`, …), which gets `RT` (the
//!   runtime), `C` (a container name of its own; more containers may be
//!   named `$C-…`), `IMAGE`, `DIR` and `VOL`, and a few helpers (see
//!   [`HOST_PRELUDE`]).
//!
//! Each side gets fixtures of its own: `{dir}` / `$DIR` is a fresh host
//! directory holding `file.txt`, `sub/nested.txt`, a world-writable `w/` and
//! `env.list`; `{vol}` / `$VOL` a fresh named volume. Names, ids and paths
//! of a side are replaced by placeholders before the comparison.
//!
//! The two sides of a scenario run at the same time; scenarios run on
//! [`crate::vm_capacity`] workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::{run_cmd_quiet, runvm_runtime, unique_name, Run, COMMAND_TIMEOUT, IMAGE};

/// The container engine a table runs under: Docker, or Podman (whose CLI
/// takes the same commands; host scripts get `docker` as a function that
/// calls `podman`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn cli(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    /// A `--filter name=` pattern for container names starting `name`
    /// (Docker's names begin with a slash there).
    fn name_filter(self, name: &str) -> String {
        match self {
            Engine::Docker => format!("name=^/{name}($|-)"),
            Engine::Podman => format!("name=^{name}($|-)"),
        }
    }

    /// Arguments every `run` and `create` gets. Rootful Podman raises
    /// `nofile` and `nproc` to 1048576 and 4194304 by default, which runc
    /// cannot set where root lacks CAP_SYS_RESOURCE (this project's
    /// machines): both sides get lower limits, so runc runs at all.
    fn run_args(self) -> &'static [&'static str] {
        match self {
            Engine::Docker => &[],
            Engine::Podman => &[
                "--ulimit",
                "nofile=1024:4096",
                "--ulimit",
                "nproc=4096:4096",
            ],
        }
    }

    fn prelude(self) -> &'static str {
        match self {
            Engine::Docker => "",
            Engine::Podman => {
                "docker() {\n\
                 \x20   case \"$1\" in\n\
                 \x20   run|create) local verb=$1; shift; command podman \"$verb\" \
                 --ulimit nofile=1024:4096 --ulimit nproc=4096:4096 \"$@\" ;;\n\
                 \x20   *) command podman \"$@\" ;;\n\
                 \x20   esac\n\
                 }\n"
            }
        }
    }
}

/// What a scenario runs.
#[derive(Clone, Debug)]
pub enum Action {
    /// `docker run --rm --runtime=RT --name C <args> <image_and_cmd…>`.
    Run {
        args: Vec<String>,
        image_and_cmd: Vec<String>,
    },
    /// A bash script on the host (see the module documentation).
    Host { script: String },
}

/// What the comparison expects.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Same stdout, stderr, exit code and host files.
    Same,
    /// A documented difference: `check` gets (runc, runvm) and says whether
    /// runvm's side is what the README promises.
    Differs {
        why: &'static str,
        check: fn(&Side, &Side) -> Result<(), String>,
    },
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Unique, short, `snake_case`.
    pub name: &'static str,
    /// The option (or command) it exercises, as the README's table names it.
    pub option: &'static str,
    pub action: Action,
    /// A host bash script run after the action, with the same variables:
    /// its output (say, `stat` of what the workload wrote to `$DIR`) is
    /// compared too.
    pub host_check: Option<String>,
    /// Applied to stdout, stderr and the host check's output of both sides
    /// after the placeholders.
    pub normalise: Option<fn(&str) -> String>,
    pub expect: Expect,
    /// Docker itself refuses this one before any runtime runs: a check of
    /// the engine's behaviour with runvm registered, counted apart.
    pub engine_refuses: bool,
}

/// `docker run --rm … IMAGE cmd…`.
pub fn run(name: &'static str, option: &'static str, args: &[&str], cmd: &[&str]) -> Scenario {
    let mut image_and_cmd = vec![IMAGE.to_string()];
    image_and_cmd.extend(cmd.iter().map(|s| s.to_string()));
    Scenario {
        name,
        option,
        action: Action::Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            image_and_cmd,
        },
        host_check: None,
        normalise: None,
        expect: Expect::Same,
        engine_refuses: false,
    }
}

/// `docker run --rm … IMAGE sh -c script`.
pub fn sh(name: &'static str, option: &'static str, args: &[&str], script: &str) -> Scenario {
    run(name, option, args, &["sh", "-c", script])
}

/// A host bash script.
pub fn host(name: &'static str, option: &'static str, script: &str) -> Scenario {
    Scenario {
        name,
        option,
        action: Action::Host {
            script: script.to_string(),
        },
        host_check: None,
        normalise: None,
        expect: Expect::Same,
        engine_refuses: false,
    }
}

impl Scenario {
    /// See [`Scenario::host_check`].
    pub fn host_check(mut self, script: &str) -> Self {
        self.host_check = Some(script.to_string());
        self
    }

    /// See [`Scenario::normalise`].
    pub fn normalise(mut self, f: fn(&str) -> String) -> Self {
        self.normalise = Some(f);
        self
    }

    /// See [`Scenario::engine_refuses`].
    pub fn engine_refuses(mut self) -> Self {
        self.engine_refuses = true;
        self
    }

    /// A documented difference (see [`Expect::Differs`]).
    pub fn differs(
        mut self,
        why: &'static str,
        check: fn(&Side, &Side) -> Result<(), String>,
    ) -> Self {
        self.expect = Expect::Differs { why, check };
        self
    }

    fn uses(&self, placeholder: &str) -> bool {
        let in_action = match &self.action {
            Action::Run {
                args,
                image_and_cmd,
            } => args
                .iter()
                .chain(image_and_cmd)
                .any(|a| a.contains(placeholder)),
            Action::Host { script } => {
                script.contains(&format!("${}", placeholder_var(placeholder)))
            }
        };
        in_action
            || self
                .host_check
                .as_deref()
                .is_some_and(|s| s.contains(&format!("${}", placeholder_var(placeholder))))
    }
}

fn placeholder_var(placeholder: &str) -> &'static str {
    match placeholder {
        "{dir}" => "DIR",
        "{vol}" => "VOL",
        _ => unreachable!("unknown placeholder {placeholder}"),
    }
}

/// Helpers every host script has.
pub const HOST_PRELUDE: &str = r#"
set -u
run() { docker run --runtime "$RT" "$@"; }
# wait_log NAME TEXT: until the container's log has TEXT (60 s at most).
wait_log() {
    local i
    for i in $(seq 600); do
        docker logs "$1" 2>&1 | grep -q -- "$2" && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in the log of $1" >&2
    return 1
}
# wait_state NAME GO-TEMPLATE VALUE: until docker inspect shows VALUE (120 s at most).
wait_state() {
    local i
    for i in $(seq 1200); do
        [ "$(docker inspect -f "$2" "$1" 2>/dev/null)" = "$3" ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for $2 = $3 on $1" >&2
    return 1
}
"#;

/// One side's outcome.
#[derive(Clone, Debug)]
pub struct Side {
    pub runtime: String,
    pub run: Run,
    /// Output of the host check (stdout then stderr), or empty.
    pub host: String,
    pub elapsed: Duration,
}

impl Side {
    pub fn stdout(&self) -> String {
        self.run.stdout_str()
    }

    pub fn stderr(&self) -> String {
        self.run.stderr_str()
    }

    fn describe(&self) -> String {
        let mut s = self.run.describe();
        if !self.host.is_empty() {
            s += &format!(
                "  host check:\n    | {}\n",
                self.host.replace('\n', "\n    | ")
            );
        }
        s
    }
}

/// The fixtures of one side, removed on drop.
struct Fixtures {
    engine: Engine,
    name: String,
    dir: Option<tempfile::TempDir>,
    vol: Option<String>,
    cidfile: tempfile::TempDir,
    /// Full ids of the side's containers (`$C`, `$C-…`), for placeholders.
    ids: Vec<String>,
}

impl Fixtures {
    fn new(scenario: &Scenario, tag: &str, engine: Engine) -> Self {
        let dir = scenario.uses("{dir}").then(|| {
            let d = tempfile::Builder::new()
                .prefix("runvm-e2e-dir-")
                .tempdir()
                .expect("tempdir");
            let p = d.path();
            std::fs::create_dir_all(p.join("sub")).expect("fixture dir");
            std::fs::create_dir_all(p.join("w")).expect("fixture dir");
            std::fs::write(p.join("file.txt"), "a host file\n").expect("fixture file");
            std::fs::write(p.join("sub/nested.txt"), "nested\n").expect("fixture file");
            std::fs::write(
                p.join("env.list"),
                "FROM_FILE=yes\n# a comment\nSPACED=a b\n",
            )
            .expect("fixture file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::fs::set_permissions(p.join("w"), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
            d
        });
        let vol = scenario.uses("{vol}").then(|| {
            let v = unique_name(&format!("{tag}-vol"));
            crate::run_cmd(
                engine.cli(),
                &["volume", "create", &v],
                None,
                COMMAND_TIMEOUT,
            )
            .assert_code(0, "volume create");
            v
        });
        Fixtures {
            engine,
            name: unique_name(tag),
            dir,
            vol,
            cidfile: tempfile::tempdir().expect("tempdir"),
            ids: Vec::new(),
        }
    }

    /// Notes the ids of the containers the action made (`--rm` ones are
    /// known from the cidfile).
    fn note_ids(&mut self) {
        let filter = self.engine.name_filter(&self.name);
        let ps = run_cmd_quiet(
            self.engine.cli(),
            &["ps", "-aq", "--no-trunc", "--filter", &filter],
            None,
            COMMAND_TIMEOUT,
        );
        self.ids = ps
            .stdout_str()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Ok(id) = std::fs::read_to_string(self.cidfile()) {
            self.ids.push(id.trim().to_string());
        }
    }

    fn dir(&self) -> String {
        self.dir
            .as_ref()
            .map(|d| d.path().to_str().expect("utf-8 tempdir").to_string())
            .unwrap_or_default()
    }

    fn vol(&self) -> String {
        self.vol.clone().unwrap_or_default()
    }

    fn cidfile(&self) -> String {
        self.cidfile
            .path()
            .join("cid")
            .to_str()
            .expect("utf-8")
            .to_string()
    }

    fn substitute(&self, s: &str) -> String {
        s.replace("{dir}", &self.dir())
            .replace("{vol}", &self.vol())
    }

    fn env(&self, runtime: &str) -> Vec<(&'static str, String)> {
        vec![
            ("RT", runtime.to_string()),
            ("C", self.name.clone()),
            ("IMAGE", IMAGE.to_string()),
            ("DIR", self.dir()),
            ("VOL", self.vol()),
            ("CIDFILE", self.cidfile()),
        ]
    }

    /// Placeholders for what differs between the two sides by construction.
    fn normalise(&self, text: &str) -> String {
        let mut text = text.to_string();
        for id in self.ids.iter().filter(|id| id.len() >= 12) {
            text = text.replace(id.as_str(), "<id>").replace(&id[..12], "<id>");
        }
        if let Some(d) = &self.dir {
            text = text.replace(d.path().to_str().unwrap_or("\0"), "<dir>");
        }
        if let Some(v) = &self.vol {
            text = text.replace(v.as_str(), "<vol>");
        }
        log_times(&hex_ids(&text.replace(self.name.as_str(), "<c>")))
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        // Containers named $C or $C-…, images tagged $C…, then the volume.
        let script = format!(
            "{prelude}ids=$(docker ps -aq --filter '{filter}'); [ -z \"$ids\" ] || docker rm -f -v $ids; \
             imgs=$(docker images -q '{n}*'); [ -z \"$imgs\" ] || docker rmi -f $imgs; \
             vols=$(docker volume ls -q --filter name='^{n}'); [ -z \"$vols\" ] || docker volume rm -f $vols",
            prelude = self.engine.prelude(),
            filter = self.engine.name_filter(&self.name),
            n = self.name
        );
        let _ = std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(v) = &self.vol {
            let _ = std::process::Command::new(self.engine.cli())
                .args(["volume", "rm", "-f", v])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn run_side(scenario: &Scenario, runtime: &str, engine: Engine) -> Side {
    let mut fx = Fixtures::new(scenario, runtime, engine);
    let start = Instant::now();
    let mut run = match &scenario.action {
        Action::Run {
            args,
            image_and_cmd,
        } => {
            let cidfile = fx.cidfile();
            let mut argv: Vec<String> = vec![
                "run".into(),
                "--rm".into(),
                format!("--runtime={runtime}"),
                "--name".into(),
                fx.name.clone(),
                "--cidfile".into(),
                cidfile,
            ];
            argv.extend(engine.run_args().iter().map(|a| a.to_string()));
            argv.extend(args.iter().map(|a| fx.substitute(a)));
            argv.extend(image_and_cmd.iter().map(|a| fx.substitute(a)));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run_cmd_quiet(engine.cli(), &argv, None, COMMAND_TIMEOUT)
        }
        Action::Host { script } => host_script(&fx, runtime, script),
    };
    let elapsed = start.elapsed();
    fx.note_ids();
    let host = scenario
        .host_check
        .as_deref()
        .map(|s| {
            let r = host_script(&fx, runtime, s);
            format!("{}{}", r.stdout_str(), r.stderr_str())
        })
        .unwrap_or_default();
    let norm = |t: &str| {
        let t = fx.normalise(t);
        match scenario.normalise {
            Some(f) => f(&t),
            None => t,
        }
    };
    run.stdout = norm(&run.stdout_str()).into_bytes();
    run.stderr = norm(&run.stderr_str()).into_bytes();
    run.container_name = Some(fx.name.clone());
    Side {
        runtime: runtime.to_string(),
        run,
        host: norm(&host),
        elapsed,
    }
}

fn host_script(fx: &Fixtures, runtime: &str, script: &str) -> Run {
    // `env VAR=… bash -c SCRIPT`: run_cmd passes no environment of its own.
    let mut argv: Vec<String> = fx
        .env(runtime)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    argv.extend([
        "bash".to_string(),
        "-c".to_string(),
        // In a directory of the side's own, removed with it: a script's
        // stray relative file never lands in the tree.
        format!(
            "cd {:?} || exit 99\n{}{HOST_PRELUDE}\n{script}",
            fx.cidfile.path(),
            fx.engine.prelude()
        ),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run_cmd_quiet("env", &argv, None, COMMAND_TIMEOUT)
}

/// How a scenario came out.
#[derive(Debug)]
pub enum Verdict {
    Same,
    /// A documented difference, as documented.
    DiffersAsDocumented,
    /// A failure, with the whole story.
    Failed(String),
}

/// Runs one scenario under both runtimes of `engine` and compares.
pub fn run_scenario(scenario: &Scenario, engine: Engine) -> (Verdict, Side, Side) {
    let runvm_name = match engine {
        Engine::Docker => runvm_runtime(),
        Engine::Podman => "runvm".to_string(),
    };
    let (runc, runvm) = thread::scope(|s| {
        let runc = s.spawn(|| run_side(scenario, "runc", engine));
        let runvm = run_side(scenario, &runvm_name, engine);
        (runc.join().expect("runc side panicked"), runvm)
    });
    let verdict = match scenario.expect {
        Expect::Same => {
            let mut diffs = Vec::new();
            if runc.run.code != runvm.run.code {
                diffs.push(format!("exit code {} vs {}", runc.run.code, runvm.run.code));
            }
            if runc.run.stdout != runvm.run.stdout {
                diffs.push("stdout".to_string());
            }
            if runc.run.stderr != runvm.run.stderr {
                diffs.push("stderr".to_string());
            }
            if runc.host != runvm.host {
                diffs.push("host files".to_string());
            }
            if diffs.is_empty() {
                Verdict::Same
            } else {
                Verdict::Failed(format!("differs: {}", diffs.join(", ")))
            }
        }
        Expect::Differs { check, .. } => match check(&runc, &runvm) {
            Ok(()) => Verdict::DiffersAsDocumented,
            Err(e) => Verdict::Failed(format!("documented difference not as documented: {e}")),
        },
    };
    (verdict, runc, runvm)
}

/// Runs `scenarios` (those whose name contains one of the comma-separated
/// words of `RUNVM_SCENARIOS`, when set) on [`crate::vm_capacity`] workers,
/// prints one line each, and panics listing every failure.
pub fn run_table(scenarios: &[Scenario], engine: Engine) {
    let filter: Vec<String> = std::env::var("RUNVM_SCENARIOS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| s.name.contains(f.as_str())))
        .collect();
    assert!(
        !chosen.is_empty(),
        "RUNVM_SCENARIOS={filter:?} matches no scenario"
    );
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let counts = Mutex::new((0usize, 0usize));
    let workers = crate::vm_capacity().min(chosen.len());
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sc) = chosen.get(i) else { break };
                let outcome = std::panic::catch_unwind(|| run_scenario(sc, engine));
                let line = match outcome {
                    Ok((verdict, runc, runvm)) => {
                        let times = format!(
                            "runc {:.1} s, runvm {:.1} s",
                            runc.elapsed.as_secs_f64(),
                            runvm.elapsed.as_secs_f64()
                        );
                        match verdict {
                            Verdict::Same => {
                                counts.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
                                format!("same     {} ({times})", sc.name)
                            }
                            Verdict::DiffersAsDocumented => {
                                counts.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
                                format!("differs  {} (as documented; {times})", sc.name)
                            }
                            Verdict::Failed(why) => {
                                failures
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(format!(
                                        "=== {} [{}]: {why}\n--- runc:\n{}--- runvm:\n{}",
                                        sc.name,
                                        sc.option,
                                        runc.describe(),
                                        runvm.describe()
                                    ));
                                format!("FAILED   {} ({why}; {times})", sc.name)
                            }
                        }
                    }
                    Err(_) => {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("=== {}: the harness panicked (see above)", sc.name));
                        format!("PANICKED {}", sc.name)
                    }
                };
                say(&format!("scenario {line}"));
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let (same, differs) = counts.into_inner().unwrap_or_else(|e| e.into_inner());
    let refused = chosen.iter().filter(|s| s.engine_refuses).count();
    say(&format!(
        "differential ({}): {} scenarios ({} reach the runtime, {refused} are refused by the engine first): \
         {same} same, {differs} differ as documented, {} failed",
        engine.cli(),
        chosen.len(),
        chosen.len() - refused,
        failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        chosen.len(),
        failures.join("\n")
    );
}

/// A line on stderr that the test harness does not capture: `make test`
/// shows each scenario as it ends and the table's summary.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// An engine's own log lines (Podman's `time="…" level=warning …`) carry
/// the time: it becomes `<time>`.
fn log_times(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| match (l.strip_prefix("time=\""), l.find("\" level=")) {
            (Some(_), Some(end)) => format!("time=\"<time>{}", &l[end..]),
            _ => l.to_string(),
        })
        .collect()
}

/// Ids that differ between any two runs (an exec session's, a layer's
/// digest): every run of 64 hexadecimal digits becomes `<hex>`.
fn hex_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() == 64 {
            out.push_str("<hex>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_ids_are_replaced_and_nothing_else() {
        let id = "0be3012a3275b2c57d8f7c5b06cf3e09f833a701d230d8269509d0f67e42ecad";
        assert_eq!(
            super::hex_ids(&format!("sha256:{id}\ndeadbeef {id}x\n")),
            "sha256:<hex>\ndeadbeef <hex>x\n"
        );
    }
}
