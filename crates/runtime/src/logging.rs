//! The runtime's log, through `tracing`, in runc's format.
//!
//! containerd passes `--log FILE --log-format json` and, when a command
//! fails, shows the user the last entry of level `error` in that file. So
//! the entries must be what go-runc parses, the format of runc's logrus:
//! text `time="…" level=error msg="…"` or JSON `{"level", "msg", "time"}`.
//! tracing-subscriber's own formats differ (upper-case levels, other field
//! names), hence this event formatter; the rest (levels, filtering,
//! writers) is tracing-subscriber's.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;
use std::time::SystemTime;

use runvm_protocol::log::Lines;
use tracing::Level;
use tracing_subscriber::fmt::format::Writer;

/// Where and how to log, from runc's global flags.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub path: Option<String>,
    pub json: bool,
    pub debug: bool,
    /// Called by an engine (create, start, exec, …) rather than by a
    /// person (check, kernel, …): without a log file, only errors go to
    /// stderr, as runc's: Podman's conmon passes no `--log` and shows the
    /// runtime's stderr to the user, and reads the error from it.
    pub engine_verb: bool,
}

/// logrus' name of a level.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Events in runc's (logrus') format, text or JSON.
fn logrus(json: bool) -> Lines<impl Fn(&mut Writer<'_>, Level, &str) -> fmt::Result> {
    Lines(move |writer: &mut Writer<'_>, level: Level, msg: &str| {
        let level = level_name(level);
        let time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        if json {
            let entry = serde_json::json!({"level": level, "msg": msg, "time": time});
            writeln!(writer, "{entry}")
        } else {
            writeln!(writer, "time=\"{time}\" level={level} msg={msg:?}")
        }
    })
}

impl Log {
    /// Installs the process' logger: to the `--log` file if given (opened
    /// for appending, as runc does), else to stderr; `debug` entries only
    /// with `--debug`.
    pub fn init(&self) {
        let level = if self.debug {
            Level::DEBUG
        } else if self.engine_verb && self.path.is_none() {
            Level::ERROR
        } else {
            Level::INFO
        };
        let builder = tracing_subscriber::fmt()
            .event_format(logrus(self.json))
            .with_max_level(level);
        let file = self
            .path
            .as_ref()
            .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
        // Logging is best effort: a log file that cannot be opened must not
        // fail the container, so it falls back to stderr.
        let _ = match file {
            Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    }
}

/// For tests: the log entries `f` writes with `json`, as text.
#[cfg(test)]
fn capture(json: bool, f: impl FnOnce()) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let file = std::fs::File::create(&path).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .event_format(logrus(json))
        .with_max_level(Level::DEBUG)
        .with_writer(Mutex::new(file))
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    std::fs::read_to_string(path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_entries_are_what_containerd_parses() {
        let text = capture(true, || {
            tracing::error!("runvm: something \"quoted\" failed");
            tracing::warn!(kernel = "6.1", "runvm: slow");
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["level"], "error");
        assert_eq!(lines[0]["msg"], "runvm: something \"quoted\" failed");
        assert_eq!(lines[1]["level"], "warning");
        assert_eq!(lines[1]["msg"], "runvm: slow kernel=\"6.1\"");
        let time = lines[0]["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(time.ends_with('Z') && time.len() == "2026-11-23T15:00:00.000000005Z".len());
    }

    #[test]
    fn text_entries_are_logrus_lines() {
        let text = capture(false, || tracing::info!("runvm: a \"b\""));
        let line = text.trim_end();
        assert!(line.starts_with("time=\""), "{line}");
        assert!(
            line.ends_with(r#"" level=info msg="runvm: a \"b\"""#),
            "{line}"
        );
    }
}
