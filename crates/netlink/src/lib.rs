//! The rtnetlink plumbing that both network setups share: the supervisor's
//! (the container's namespace) and the guest agent's (the VM's kernel).
//! What each does with the links lives in its own `network` module, as a
//! pure plan and an apply step behind a trait; this is only the connection
//! and the error every netlink request can end with.

use rtnetlink::Handle;

/// A netlink request that failed: what it was for, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}")]
pub struct NetlinkError {
    pub what: String,
    // Boxed: a netlink error carries the whole message it answers.
    #[source]
    pub source: Box<rtnetlink::Error>,
}

/// `map_err(nl("bring up eth0"))`: names what a request was for.
pub fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError {
        what: what.into(),
        source: Box::new(source),
    }
}

/// Opens a route netlink socket in the calling thread's network namespace;
/// its connection runs as a task of the current tokio runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}
