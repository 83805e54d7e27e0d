//! The command line, as Docker and containerd call runc.
//!
//! runc's global flags are parsed (so they can be given to runc again,
//! together with runvm's own `--runc`), and the verb with its arguments is
//! kept as given: runvm rewrites the bundle for `create` and `run`, and
//! passes every verb to runc unchanged.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "runvm",
    about = "An OCI runtime that runs containers as lightweight VMs (runc-compatible)",
    disable_version_flag = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Root directory for storage of container state (passed to runc).
    #[arg(long)]
    pub root: Option<String>,
    /// Log file (passed to runc; runvm logs there too).
    #[arg(long)]
    pub log: Option<String>,
    /// Log format: text or json.
    #[arg(long = "log-format", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Debug logging.
    #[arg(long)]
    pub debug: bool,
    /// Use systemd to manage cgroups (passed to runc).
    #[arg(long = "systemd-cgroup")]
    pub systemd_cgroup: bool,
    /// Path to criu (passed to runc).
    #[arg(long)]
    pub criu: Option<String>,
    /// Rootless mode: true, false or auto (passed to runc).
    #[arg(long)]
    pub rootless: Option<String>,
    /// The OCI runtime runvm drives (default: runc from the usual places).
    #[arg(long, env = "RUNVM_RUNC")]
    pub runc: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    /// The verb (create, start, state, kill, delete, exec, …) and its
    /// arguments; runvm's own verbs are `check`, `kernel` (`list`, `add`,
    /// `remove`, `prune`: the kernel store and runvm's cache of what it made
    /// from kernels), `boot-probe` (boot a VM without a container and time
    /// it), `docker-register`, `docker-unregister`, `podman-register` and
    /// `podman-unregister`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl Cli {
    /// runc's global flags, as given to us.
    pub fn runc_globals(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{name}"));
                a.push(v.clone());
            }
        };
        opt("root", &self.root);
        opt("log", &self.log);
        opt("log-format", &self.log_format);
        opt("criu", &self.criu);
        opt("rootless", &self.rootless);
        if self.debug {
            a.push("--debug".into());
        }
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        a
    }
}

/// What `create` and `run` need from their arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CreateArgs {
    pub bundle: Option<String>,
    pub pid_file: Option<String>,
    pub id: Option<String>,
}

/// The flags of runc's `create`, `run` and `exec` that take a value. One
/// list for all three: none of them is a switch in one verb and takes a
/// value in another, and runc itself refuses a flag its verb does not have.
const RUNC_FLAGS_WITH_VALUE: &[&str] = &[
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
    "--cwd",
    "--env",
    "-e",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--process",
    "-p",
    "--process-label",
    "--apparmor",
    "--cap",
    "-c",
    "--cgroup",
];

/// A verb's arguments split the way runc's CLI library splits them: flags
/// (`--x v`, `--x=v`, or a bare switch) up to the first positional
/// argument, then the positionals.
struct Scanned {
    flags: Vec<(String, Option<String>)>,
    positionals: Vec<String>,
}

fn scan(args: &[String]) -> Scanned {
    let mut out = Scanned {
        flags: Vec::new(),
        positionals: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !out.positionals.is_empty() || !a.starts_with('-') {
            out.positionals.push(a.clone());
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let value = if inline.is_none() && RUNC_FLAGS_WITH_VALUE.contains(&flag.as_str()) {
            it.next().cloned()
        } else {
            inline
        };
        out.flags.push((flag, value));
    }
    out
}

impl Scanned {
    fn value(&self, names: &[&str]) -> Option<String> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| names.contains(&f.as_str()))
            .and_then(|(_, v)| v.clone())
    }
}

/// Picks `--bundle`/`-b`, `--pid-file` and the container id out of the
/// arguments of `runc create`/`runc run`.
pub fn parse_create_args(args: &[String]) -> CreateArgs {
    let s = scan(args);
    CreateArgs {
        bundle: s.value(&["--bundle", "-b"]),
        pid_file: s.value(&["--pid-file"]),
        id: s.positionals.first().cloned(),
    }
}

/// What `exec` needs from its arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecArgs {
    pub process: Option<String>,
    pub id: Option<String>,
    /// Arguments after the id: the command, when no `--process` is given.
    pub command: Vec<String>,
}

/// Picks `--process`/`-p` and the container id out of `runc exec`'s
/// arguments.
pub fn parse_exec_args(args: &[String]) -> ExecArgs {
    let s = scan(args);
    ExecArgs {
        process: s.value(&["--process", "-p"]),
        id: s.positionals.first().cloned(),
        command: s.positionals.iter().skip(1).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn containerd_style_exec_parses() {
        let e = parse_exec_args(&v(&[
            "--process",
            "/tmp/runc-process1",
            "--console-socket",
            "/tmp/sock",
            "--detach",
            "--pid-file",
            "/run/x.pid",
            "cid",
        ]));
        assert_eq!(e.process.as_deref(), Some("/tmp/runc-process1"));
        assert_eq!(e.id.as_deref(), Some("cid"));
        assert!(e.command.is_empty());
        let e = parse_exec_args(&v(&["-t", "cid", "ls", "-l"]));
        assert_eq!(e.id.as_deref(), Some("cid"));
        assert_eq!(e.command, v(&["ls", "-l"]));
    }

    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_style_invocation_parses() {
        // The global flags dockerd gives, which go to runc again as given.
        let globals = [
            "--root",
            "/var/run/docker/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
        ];
        let verb = [
            "create",
            "--bundle",
            "/run/x",
            "--pid-file",
            "/run/x/init.pid",
            "--console-socket",
            "/tmp/pty.sock",
            "abc123",
        ];
        let argv: Vec<&str> = ["runvm"]
            .iter()
            .chain(&globals)
            .chain(&verb)
            .copied()
            .collect();
        let cli = Cli::try_parse_from(v(&argv)).unwrap();
        assert_eq!(cli.command[0], "create");
        assert_eq!(cli.runc_globals(), v(&globals));
        let c = parse_create_args(&cli.command[1..]);
        assert_eq!(c.bundle.as_deref(), Some("/run/x"));
        assert_eq!(c.pid_file.as_deref(), Some("/run/x/init.pid"));
        assert_eq!(c.id.as_deref(), Some("abc123"));
    }

    #[test]
    fn equals_forms_and_short_bundle() {
        let c = parse_create_args(&v(&["-b", "/b", "--pid-file=/p", "--no-pivot", "id1"]));
        assert_eq!(
            c,
            CreateArgs {
                bundle: Some("/b".into()),
                pid_file: Some("/p".into()),
                id: Some("id1".into())
            }
        );
        let c = parse_create_args(&v(&["--bundle=/b2", "id2"]));
        assert_eq!(c.bundle.as_deref(), Some("/b2"));
    }

    #[test]
    fn verb_flags_are_not_taken_as_globals() {
        let cli = Cli::try_parse_from(v(&["runvm", "kill", "--all", "abc", "KILL"])).unwrap();
        assert_eq!(cli.command, v(&["kill", "--all", "abc", "KILL"]));
        assert!(cli.runc_globals().is_empty());
        let cli = Cli::try_parse_from(v(&["runvm", "--runc", "/opt/runc", "state", "x"])).unwrap();
        assert_eq!(cli.runc.as_deref(), Some("/opt/runc"));
        assert!(cli.runc_globals().is_empty());
    }

    #[test]
    fn a_bad_log_format_is_refused() {
        assert!(Cli::try_parse_from(v(&["runvm", "--log-format", "xml", "state", "x"])).is_err());
    }
}
