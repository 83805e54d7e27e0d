//! The runtime's log, in runc's format: containerd reads the last error of
//! the `--log` file and shows it to the user.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and how to log, from runc's global flags.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub path: Option<String>,
    pub json: bool,
}

/// RFC 3339 UTC time with nanoseconds, as Go's logrus prints it.
pub fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

impl Log {
    /// Writes one entry at `level` ("error", "warning", "info", "debug").
    pub fn write(&self, level: &str, msg: &str) {
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": timestamp(SystemTime::now())})
                .to_string()
        } else {
            format!(
                "time=\"{}\" level={level} msg={msg:?}",
                timestamp(SystemTime::now())
            )
        };
        match &self.path {
            Some(p) => {
                if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(p) {
                    let _ = writeln!(f, "{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::new(1_795_446_000, 5);
        assert_eq!(timestamp(t), "2026-11-23T15:00:00.000000005Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(timestamp(leap).starts_with("2000-02-29T"));
    }

    #[test]
    fn json_entries_are_what_containerd_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let log = Log {
            path: Some(path.to_str().unwrap().into()),
            json: true,
        };
        log.write("error", "runvm: something \"quoted\" failed");
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "runvm: something \"quoted\" failed");
    }
}
