//! runc compatibility: finding the program of a process the way runc does,
//! and Go's texts for errno values, so that runvm fails with runc's
//! messages (and Docker derives the same exit code, 126 or 127, from them).
//!
//! runc 1.1 resolves `args[0]` with Go's `exec.LookPath` after entering the
//! container's root and working directory, using the process's own `PATH`.
//! Go 1.19's rules: a name with a slash is checked as is; otherwise each
//! `PATH` entry is tried in order (an empty entry means "."). A candidate is
//! accepted when it is not a directory and has any execute bit.

use crate::exit::ExitCode;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What `stat` says about a candidate file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub is_dir: bool,
    pub mode: u32,
}

/// Why a program cannot be run, worded as runc words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookPathError {
    /// A bare name not found in any `PATH` directory.
    NotFound { file: String },
    /// A directory, or a file without execute permission.
    Permission { file: String },
    /// A path with a slash whose `stat` failed (`errno` text as Go prints it).
    Stat { file: String, error: String },
    /// An exec's working directory that cannot be entered (runc makes only
    /// the container's init's).
    Cwd { cwd: String, error: String },
}

impl LookPathError {
    /// The exit code Docker reports for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            LookPathError::Permission { .. } => ExitCode::CannotExecute.code(),
            LookPathError::NotFound { .. } => ExitCode::NotFound.code(),
            LookPathError::Stat { error, .. } if error.contains("permission denied") => {
                ExitCode::CannotExecute.code()
            }
            LookPathError::Stat { .. } => ExitCode::NotFound.code(),
            LookPathError::Cwd { .. } => ExitCode::CannotExecute.code(),
        }
    }
}

impl fmt::Display for LookPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookPathError::NotFound { file } => {
                write!(f, "exec: \"{file}\": executable file not found in $PATH")
            }
            LookPathError::Permission { file } => write!(f, "exec: \"{file}\": permission denied"),
            LookPathError::Stat { file, error } => {
                write!(f, "exec: \"{file}\": stat {file}: {error}")
            }
            LookPathError::Cwd { cwd, error } => {
                write!(
                    f,
                    "chdir to cwd ({cwd:?}) set in config.json failed: {error}"
                )
            }
        }
    }
}

impl std::error::Error for LookPathError {}

/// Go's text for an errno: the C library's text with a lower-case initial
/// ("no such file or directory").
pub fn go_errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = nix::errno::Errno::from_raw(code).desc().to_owned();
            let mut chars = text.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().collect::<String>() + chars.as_str(),
                None => text,
            }
        }
        None => e.to_string(),
    }
}

/// Resolves `file` using `path_env` (the value of `PATH`), with relative
/// names taken from `cwd`. `stat` looks a path up in the container's root.
pub fn look_path(
    file: &str,
    path_env: &str,
    cwd: &Path,
    stat: impl Fn(&Path) -> io::Result<FileInfo>,
) -> Result<PathBuf, LookPathError> {
    let check = |p: &Path| -> io::Result<bool> {
        let abs: PathBuf = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect()
        };
        let info = stat(&abs)?;
        Ok(!info.is_dir && info.mode & 0o111 != 0)
    };
    if file.contains('/') {
        return match check(Path::new(file)) {
            Ok(true) => Ok(PathBuf::from(file)),
            Ok(false) => Err(LookPathError::Permission {
                file: file.to_owned(),
            }),
            Err(e) => Err(LookPathError::Stat {
                file: file.to_owned(),
                error: go_errno_text(&e),
            }),
        };
    }
    for dir in path_env.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(file);
        if let Ok(true) = check(&candidate) {
            return Ok(candidate);
        }
    }
    Err(LookPathError::NotFound {
        file: file.to_owned(),
    })
}

/// The `PATH` of a `KEY=VALUE` environment (the last one wins, as in Go).
pub fn path_of_env(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fs() -> impl Fn(&Path) -> io::Result<FileInfo> {
        let mut m = HashMap::new();
        m.insert(
            "/bin/sh",
            FileInfo {
                is_dir: false,
                mode: 0o755,
            },
        );
        m.insert(
            "/etc",
            FileInfo {
                is_dir: true,
                mode: 0o755,
            },
        );
        m.insert(
            "/etc/passwd",
            FileInfo {
                is_dir: false,
                mode: 0o644,
            },
        );
        m.insert(
            "/work/run.sh",
            FileInfo {
                is_dir: false,
                mode: 0o700,
            },
        );
        move |p: &Path| {
            m.get(p.to_str().unwrap())
                .copied()
                .ok_or_else(|| io::Error::from_raw_os_error(2))
        }
    }

    #[test]
    fn bare_names_search_path_in_order() {
        let r = look_path("sh", "/usr/bin:/bin", Path::new("/"), fs()).unwrap();
        assert_eq!(r, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn an_exec_cwd_that_is_missing_is_worded_as_runc() {
        let e = LookPathError::Cwd {
            cwd: "/new/dir".into(),
            error: "no such file or directory".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"chdir to cwd ("/new/dir") set in config.json failed: no such file or directory"#
        );
        assert_eq!(e.exit_code(), 126);
    }

    #[test]
    fn messages_and_exit_codes_match_runc() {
        let e = look_path("nonexist", "/usr/bin:/bin", Path::new("/"), fs()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"exec: "nonexist": executable file not found in $PATH"#
        );
        assert_eq!(e.exit_code(), 127);
        let e = look_path("/etc", "/bin", Path::new("/"), fs()).unwrap_err();
        assert_eq!(e.to_string(), r#"exec: "/etc": permission denied"#);
        assert_eq!(e.exit_code(), 126);
        let e = look_path("/etc/passwd", "/bin", Path::new("/"), fs()).unwrap_err();
        assert_eq!(e.to_string(), r#"exec: "/etc/passwd": permission denied"#);
        let e = look_path("/nonexist", "/bin", Path::new("/"), fs()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"exec: "/nonexist": stat /nonexist: no such file or directory"#
        );
        assert_eq!(e.exit_code(), 127);
    }

    #[test]
    fn relative_paths_use_the_working_directory() {
        let r = look_path("./run.sh", "", Path::new("/work"), fs()).unwrap();
        assert_eq!(r, PathBuf::from("./run.sh"));
        let r = look_path("run.sh", ":/bin", Path::new("/work"), fs()).unwrap();
        assert_eq!(r, PathBuf::from("./run.sh"));
    }

    #[test]
    fn path_comes_from_the_process_environment() {
        let env = vec!["PATH=/a".to_string(), "X=1".into(), "PATH=/b".into()];
        assert_eq!(path_of_env(&env), "/b");
        assert_eq!(path_of_env(&[]), "");
    }
}
