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

/// Watches the calling thread's network namespace: the receiver gets a
/// `()` for every change of a link, an address or a route (the changes
/// themselves are read with a fresh snapshot: they come in bursts, and a
/// snapshot sees them all). It ends when the connection fails.
pub fn watch() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use netlink_sys::AsyncSocket;
    use rtnetlink::constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    };
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_ROUTE;
    conn.socket_mut()
        .socket_mut()
        .bind(&netlink_sys::SocketAddr::new(0, groups))?;
    tokio::spawn(conn);
    // One pending notice is enough: the watcher looks at the whole state.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        use futures::StreamExt;
        while messages.next().await.is_some() {
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                return;
            }
        }
    });
    Ok(rx)
}
