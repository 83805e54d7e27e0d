//! How an error reaches the user: its message, then each cause's, level by
//! level, on one line (`cannot read /x: No such file or directory`).
//!
//! Every error type of runvm says only what failed at its own level and
//! marks the error it wraps as its `source`; it never interpolates that
//! source into its own message. The place that finally shows the error
//! (a `main`, a message sent across the host-guest channel, a line in
//! `docker logs`) prints it through [`Chain`]. Docker shows the runtime's
//! last error as one line, so the levels are joined with `": "` rather than
//! printed on lines of their own.

use std::error::Error;
use std::fmt;

/// Displays an error and its causes, outermost first, joined by `": "`.
///
/// Third-party errors sometimes repeat their cause in their own message;
/// a cause whose text the line already holds is left out, so nothing shows
/// twice. Line breaks inside a message become spaces.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        let mut level: Option<&dyn Error> = Some(self.0);
        while let Some(e) = level {
            let text = e.to_string();
            let text = text.trim();
            if !text.is_empty() && !line.contains(text) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(text);
            }
            level = e.source();
        }
        f.write_str(&line.replace(['\n', '\r'], " "))
    }
}

/// `error.chain()` for any error: see [`Chain`].
pub trait ErrorChain {
    fn chain(&self) -> Chain<'_>;
}

impl<E: Error> ErrorChain for E {
    fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot read the VM configuration {path}")]
        Read {
            path: String,
            source: std::io::Error,
        },
        #[error(transparent)]
        Inner(#[from] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot place the mount for /data")]
    struct Inner {
        source: std::io::Error,
    }

    fn enoent() -> std::io::Error {
        std::io::Error::from_raw_os_error(2)
    }

    #[test]
    fn levels_are_joined_outermost_first() {
        let e = Outer::Read {
            path: "/runvm/vm.json".into(),
            source: enoent(),
        };
        assert_eq!(
            e.chain().to_string(),
            "cannot read the VM configuration /runvm/vm.json: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_transparent_level_adds_nothing() {
        let e = Outer::from(Inner { source: enoent() });
        assert_eq!(
            e.chain().to_string(),
            "cannot place the mount for /data: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_repeated_by_its_parent_shows_once_and_the_line_stays_one() {
        #[derive(Debug, thiserror::Error)]
        #[error("open failed: No such file or directory (os error 2)\nsee above")]
        struct Repeats(#[source] std::io::Error);
        let text = Repeats(enoent()).chain().to_string();
        assert_eq!(
            text,
            "open failed: No such file or directory (os error 2) see above"
        );
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        assert_eq!(
            enoent().chain().to_string(),
            "No such file or directory (os error 2)"
        );
    }
}
