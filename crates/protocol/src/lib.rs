//! The host↔guest protocol of runvm.
//!
//! One virtio-serial port carries a yamux session (see [`session`]). The host
//! side (the supervisor) is the yamux client and opens every stream; the guest
//! agent is the server. Each stream starts with a [`StreamHeader`] frame that
//! says what the stream is for:
//!
//! * a **control** stream carries [`HostMessage`]s one way and
//!   [`GuestMessage`]s the other, as length-delimited JSON frames;
//! * **stdin**, **stdout** and **stderr** streams carry raw bytes of one
//!   process's standard stream; end of stream is end of file;
//! * the **dns** stream carries the workload's name lookups to Docker's
//!   embedded resolver and its answers back (see [`dns`]).
//!
//! The guest reports a process's exit only after that process's stdout and
//! stderr streams have been written to the end and closed, so the host never
//! loses output written just before exit.

pub mod dns;
pub mod exit;
pub mod framing;
pub mod log;
pub mod mac;
pub mod messages;
pub mod rlimits;
pub mod runc_compat;
pub mod session;

pub use framing::{read_frame, read_frame_limited, write_frame, FrameError};
pub use ipnet::IpNet;
pub use mac::{MacAddr, MacAddrError};
pub use messages::*;
