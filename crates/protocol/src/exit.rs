//! The exit codes runvm gives, with the shell's and runc's meanings, so
//! that both sides of the channel name them the same way.

/// An exit code of a container or exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The process ended with this status.
    Exited(i32),
    /// The command exists but could not be run (not executable, a
    /// directory, permission denied, or the start failed): 126.
    CannotExecute,
    /// The command was not found: 127.
    NotFound,
    /// The process was killed by this signal: 128 + the signal.
    Signaled(i32),
    /// The VM itself failed (a helper died, the guest panicked or never
    /// answered): 255.
    VmFailure,
}

impl ExitCode {
    /// The number the process exits with.
    pub const fn code(self) -> i32 {
        match self {
            ExitCode::Exited(status) => status,
            ExitCode::CannotExecute => 126,
            ExitCode::NotFound => 127,
            ExitCode::Signaled(signal) => 128 + signal,
            ExitCode::VmFailure => 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_shells() {
        assert_eq!(ExitCode::Exited(3).code(), 3);
        assert_eq!(ExitCode::CannotExecute.code(), 126);
        assert_eq!(ExitCode::NotFound.code(), 127);
        assert_eq!(ExitCode::Signaled(9).code(), 137);
        assert_eq!(ExitCode::VmFailure.code(), 255);
    }
}
