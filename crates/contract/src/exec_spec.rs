//! How an exec's process spec travels from `runvm exec` (on the host) to
//! the exec client that runc starts in the container: as JSON split over
//! several environment variables of the client.
//!
//! One variable cannot carry it: the kernel refuses any single environment
//! string longer than 128 KiB (`MAX_ARG_STRLEN`), and the spec holds the
//! whole environment of the process, which `docker exec` may legitimately
//! make larger than that (two 70 KB `-e` values). The kernel's limit on the
//! environment as a whole (a quarter of the stack limit, 2 MiB by default)
//! is the one that runc's own exec of the process is subject to, so with
//! the spec split into parts below 128 KiB, exec under runvm accepts what
//! it accepts under runc. A file would need a place that the runtime on the
//! host can write and only this container can read, and someone to remove
//! it when runc fails before the client starts; the environment dies with
//! the process.

use runvm_protocol::ProcessSpec;

/// Names the number of parts: `RUNVM_EXEC_SPEC_PARTS=<n>`.
pub const PARTS_ENV: &str = "RUNVM_EXEC_SPEC_PARTS";
/// Prefix of the parts: `RUNVM_EXEC_SPEC_0`, `RUNVM_EXEC_SPEC_1`, …
pub const PART_ENV_PREFIX: &str = "RUNVM_EXEC_SPEC_";
/// Largest part in bytes: well below the kernel's 128 KiB per string,
/// name and `=` included.
pub const PART_BYTES: usize = 96 * 1024;
/// Most parts accepted when decoding (96 MiB, far beyond any environment
/// the kernel passes to a process).
pub const MAX_PARTS: usize = 1024;

/// Why the exec spec could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ExecSpecError {
    #[error("{PARTS_ENV} is not set: runvm-supervisor exec is run by `runvm exec` only")]
    NotSet,
    #[error("{PARTS_ENV}={value:?} is not a part count between 1 and {MAX_PARTS}")]
    BadCount { value: String },
    #[error("{name} is missing: the exec spec arrived incomplete")]
    MissingPart { name: String },
    #[error("the exec spec is not valid JSON")]
    Json(#[from] serde_json::Error),
}

/// The spec as `NAME=value` environment entries for the exec client.
pub fn encode(spec: &ProcessSpec) -> Result<Vec<String>, serde_json::Error> {
    let json = serde_json::to_string(spec)?;
    let parts = split_at_char_boundaries(&json, PART_BYTES);
    let mut env = Vec::with_capacity(parts.len() + 1);
    env.push(format!("{PARTS_ENV}={}", parts.len()));
    for (i, part) in parts.iter().enumerate() {
        env.push(format!("{PART_ENV_PREFIX}{i}={part}"));
    }
    Ok(env)
}

/// Reads the spec back; `var` looks up an environment variable.
pub fn decode(var: impl Fn(&str) -> Option<String>) -> Result<ProcessSpec, ExecSpecError> {
    let count = var(PARTS_ENV).ok_or(ExecSpecError::NotSet)?;
    let n: usize = count
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PARTS).contains(n))
        .ok_or_else(|| ExecSpecError::BadCount {
            value: count.clone(),
        })?;
    let mut json = String::new();
    for i in 0..n {
        let name = format!("{PART_ENV_PREFIX}{i}");
        match var(&name) {
            Some(part) => json.push_str(&part),
            None => return Err(ExecSpecError::MissingPart { name }),
        }
    }
    Ok(serde_json::from_str(&json)?)
}

/// Splits `s` into pieces of at most `max` bytes, never inside a UTF-8
/// character (a character longer than `max` is a piece of its own). An
/// empty string is one empty piece.
fn split_at_char_boundaries(s: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = s;
    loop {
        if rest.len() <= max {
            parts.push(rest);
            return parts;
        }
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_map(env: &[String]) -> HashMap<String, String> {
        env.iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn spec_with_env(env: Vec<String>) -> ProcessSpec {
        ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "echo ${#A} ${#B}".into()],
            env,
            cwd: "/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_spec_is_one_part() {
        let spec = spec_with_env(vec!["PATH=/bin".into()]);
        let env = encode(&spec).unwrap();
        assert_eq!(env.len(), 2);
        assert_eq!(env[0], "RUNVM_EXEC_SPEC_PARTS=1");
        let m = env_map(&env);
        assert_eq!(decode(|k| m.get(k).cloned()).unwrap(), spec);
    }

    #[test]
    fn two_70kb_values_travel_in_parts_each_below_the_kernel_limit() {
        let spec = spec_with_env(vec![
            format!("A={}", "a".repeat(70_000)),
            format!("B={}", "b".repeat(70_000)),
            // A single value near the kernel's 128 KiB limit.
            format!("C={}", "c".repeat(128 * 1024 - 10)),
        ]);
        let env = encode(&spec).unwrap();
        assert!(env.len() > 3, "{} entries", env.len());
        for e in &env {
            // MAX_ARG_STRLEN counts the terminating NUL.
            assert!(e.len() < 128 * 1024, "an entry of {} bytes", e.len());
        }
        let m = env_map(&env);
        assert_eq!(decode(|k| m.get(k).cloned()).unwrap(), spec);
    }

    #[test]
    fn multibyte_characters_are_never_cut() {
        // 3-byte characters straddle every part boundary sooner or later.
        let spec = spec_with_env(vec![format!("U={}", "€".repeat(200_000))]);
        let env = encode(&spec).unwrap();
        let m = env_map(&env);
        assert_eq!(decode(|k| m.get(k).cloned()).unwrap(), spec);
        assert_eq!(
            split_at_char_boundaries("a€b", 2),
            vec!["a", "€", "b"],
            "a piece ends before a character that does not fit"
        );
        assert_eq!(split_at_char_boundaries("", 4), vec![""]);
    }

    #[test]
    fn incomplete_or_malformed_transport_is_named() {
        let spec = spec_with_env(vec![format!("A={}", "a".repeat(300_000))]);
        let env = encode(&spec).unwrap();
        let mut m = env_map(&env);
        m.remove("RUNVM_EXEC_SPEC_1");
        let e = decode(|k| m.get(k).cloned()).unwrap_err();
        assert!(
            e.to_string().contains("RUNVM_EXEC_SPEC_1 is missing"),
            "{e}"
        );

        assert!(matches!(decode(|_| None), Err(ExecSpecError::NotSet)));
        for bad in ["0", "-1", "x", "1025", ""] {
            let e = decode(|k| (k == PARTS_ENV).then(|| bad.to_owned())).unwrap_err();
            assert!(matches!(e, ExecSpecError::BadCount { .. }), "{bad}: {e}");
        }
        let e = decode(|k| match k {
            PARTS_ENV => Some("1".into()),
            _ => Some("{not json".into()),
        })
        .unwrap_err();
        assert!(matches!(e, ExecSpecError::Json(_)), "{e}");
    }
}
