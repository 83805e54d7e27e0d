//! Registering runvm with Docker: a merge into daemon.json that keeps every
//! other setting.

use serde_json::{json, Map, Value};

/// Adds (or updates) `runtimes.<name>` in a daemon.json document. An empty
/// or missing file is an empty object. Returns the new document.
pub fn register(
    daemon_json: &str,
    name: &str,
    path: &str,
    args: &[String],
) -> Result<Value, String> {
    let mut doc = parse(daemon_json)?;
    let root = doc
        .as_object_mut()
        .ok_or("daemon.json is not a JSON object")?;
    let runtimes = root
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("daemon.json's \"runtimes\" is not an object")?;
    let mut entry = json!({ "path": path });
    if !args.is_empty() {
        entry["runtimeArgs"] = json!(args);
    }
    runtimes.insert(name.to_owned(), entry);
    Ok(doc)
}

/// Removes `runtimes.<name>`, and `runtimes` itself if it becomes empty.
pub fn unregister(daemon_json: &str, name: &str) -> Result<Value, String> {
    let mut doc = parse(daemon_json)?;
    let root = doc
        .as_object_mut()
        .ok_or("daemon.json is not a JSON object")?;
    let now_empty = match root.get_mut("runtimes").and_then(Value::as_object_mut) {
        Some(r) => {
            r.remove(name);
            r.is_empty()
        }
        None => false,
    };
    if now_empty {
        root.remove("runtimes");
    }
    Ok(doc)
}

fn parse(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(text).map_err(|e| format!("daemon.json is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_keeps_every_other_setting() {
        let before =
            r#"{"log-driver":"json-file","runtimes":{"other":{"path":"/x"}},"debug":true}"#;
        let after = register(before, "runvm", "/usr/local/bin/runvm", &[]).unwrap();
        assert_eq!(after["log-driver"], "json-file");
        assert_eq!(after["debug"], true);
        assert_eq!(after["runtimes"]["other"]["path"], "/x");
        assert_eq!(after["runtimes"]["runvm"]["path"], "/usr/local/bin/runvm");
        // Key order is kept.
        let keys: Vec<_> = after.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["log-driver", "runtimes", "debug"]);
    }

    #[test]
    fn register_is_idempotent_and_works_on_an_empty_file() {
        let once = register("", "runvm", "/p", &[]).unwrap();
        let twice = register(&once.to_string(), "runvm", "/p", &[]).unwrap();
        assert_eq!(once, twice);
        let with_args = register("{}", "runvm", "/p", &["--runc".into(), "/r".into()]).unwrap();
        assert_eq!(
            with_args["runtimes"]["runvm"]["runtimeArgs"],
            json!(["--runc", "/r"])
        );
    }

    #[test]
    fn unregister_reverses_register() {
        let original = r#"{"debug":true}"#;
        let reg = register(original, "runvm", "/p", &[]).unwrap();
        let back = unregister(&reg.to_string(), "runvm").unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(original).unwrap());
        let keeps = unregister(r#"{"runtimes":{"a":{},"runvm":{}}}"#, "runvm").unwrap();
        assert_eq!(keeps, json!({"runtimes": {"a": {}}}));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(register("{not json", "runvm", "/p", &[]).is_err());
        assert!(register("[1]", "runvm", "/p", &[]).is_err());
    }
}
