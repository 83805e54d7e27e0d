//! The resource limits runvm carries between host and guest, by their OCI
//! names: one table for the supervisor (which reads its own limits to hand
//! them down, as a runc container inherits the runtime's) and the agent
//! (which sets them in the guest).

use nix::sys::resource::Resource;

/// Every limit the OCI spec names, with its resource.
pub const RLIMITS: &[(&str, Resource)] = &[
    ("RLIMIT_AS", Resource::RLIMIT_AS),
    ("RLIMIT_CORE", Resource::RLIMIT_CORE),
    ("RLIMIT_CPU", Resource::RLIMIT_CPU),
    ("RLIMIT_DATA", Resource::RLIMIT_DATA),
    ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE),
    ("RLIMIT_LOCKS", Resource::RLIMIT_LOCKS),
    ("RLIMIT_MEMLOCK", Resource::RLIMIT_MEMLOCK),
    ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", Resource::RLIMIT_NICE),
    ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
    ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
    ("RLIMIT_RSS", Resource::RLIMIT_RSS),
    ("RLIMIT_RTPRIO", Resource::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
    ("RLIMIT_SIGPENDING", Resource::RLIMIT_SIGPENDING),
    ("RLIMIT_STACK", Resource::RLIMIT_STACK),
];

/// The resource of an OCI limit name; `None` for a name the table lacks
/// (runc refuses those; runvm's guest skips them).
pub fn resource(name: &str) -> Option<Resource> {
    RLIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_their_resources() {
        assert_eq!(resource("RLIMIT_NOFILE"), Some(Resource::RLIMIT_NOFILE));
        assert_eq!(resource("RLIMIT_STACK"), Some(Resource::RLIMIT_STACK));
        assert_eq!(resource("rlimit_nofile"), None);
        assert_eq!(resource("RLIMIT_NOTHING"), None);
        assert_eq!(RLIMITS.len(), 16);
    }
}
