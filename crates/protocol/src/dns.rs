//! The DNS relay stream: how a name lookup of the workload reaches Docker's
//! embedded resolver.
//!
//! On user-defined networks the container's `/etc/resolv.conf` names
//! `127.0.0.11`, an address that exists only inside the container's network
//! namespace on the host (Docker redirects it with iptables to a socket of
//! dockerd's). The guest agent answers on `127.0.0.11:53` (UDP and TCP) in
//! the guest and hands each query to the supervisor on one stream, which
//! the host opens ([`crate::StreamHeader::Dns`]); the supervisor asks
//! `127.0.0.11:53` in the container's namespace and sends the answer back.
//!
//! Frames are length-delimited (tokio-util's `LengthDelimitedCodec`, a
//! 4-byte big-endian length). A query frame is the query's id (4 bytes,
//! big-endian, chosen by the guest), its transport (1 byte: 0 UDP, 1 TCP)
//! and the DNS message; a reply frame is the id and the answer. An empty
//! answer means the resolver gave none (refused, timed out).
//!
//! The messages are binary and small, so they travel as bytes, not JSON.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

/// Docker's embedded resolver, as the container's `/etc/resolv.conf` names
/// it: where the guest's relay listens and where the supervisor asks.
pub const EMBEDDED_RESOLVER: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(127, 0, 0, 11), 53),
);

/// Largest DNS message (TCP's 2-byte length bounds it).
pub const MAX_MESSAGE: usize = u16::MAX as usize;

/// Largest frame on the DNS stream: a header and the largest message.
pub const MAX_FRAME: usize = 5 + MAX_MESSAGE;

/// Most queries the supervisor works on at once for one guest; a query
/// beyond it gets no answer, as a busy resolver would give none (the
/// client retries).
pub const MAX_IN_FLIGHT: usize = 64;

/// How a query reached the guest's relay, and so how the supervisor asks
/// Docker's resolver (a truncated UDP answer makes the client retry over
/// TCP, which must reach the resolver over TCP too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query, guest → host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u32,
    pub transport: Transport,
    pub message: Bytes,
}

/// One answer, host → guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u32,
    /// Empty when the resolver gave no answer.
    pub message: Bytes,
}

/// What is wrong with a frame of the DNS stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsFrameError {
    #[error("a DNS relay frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("a DNS relay frame names transport {0}, which is neither UDP (0) nor TCP (1)")]
    Transport(u8),
}

/// The codec both ends use on the DNS stream.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

impl Query {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(5 + self.message.len());
        b.put_u32(self.id);
        b.put_u8(match self.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        });
        b.put_slice(&self.message);
        b.freeze()
    }

    pub fn decode(mut frame: Bytes) -> Result<Self, DnsFrameError> {
        if frame.len() < 5 {
            return Err(DnsFrameError::Short(frame.len()));
        }
        let id = frame.get_u32();
        let transport = match frame.get_u8() {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            t => return Err(DnsFrameError::Transport(t)),
        };
        Ok(Self {
            id,
            transport,
            message: frame,
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(4 + self.message.len());
        b.put_u32(self.id);
        b.put_slice(&self.message);
        b.freeze()
    }

    pub fn decode(mut frame: Bytes) -> Result<Self, DnsFrameError> {
        if frame.len() < 4 {
            return Err(DnsFrameError::Short(frame.len()));
        }
        let id = frame.get_u32();
        Ok(Self { id, message: frame })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};

    #[test]
    fn a_query_survives_encoding() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let q = Query {
                id: 0xdead_beef,
                transport,
                message: Bytes::from_static(b"\x12\x34query"),
            };
            assert_eq!(Query::decode(q.encode()), Ok(q));
        }
    }

    #[test]
    fn the_wire_format_is_id_transport_message() {
        let q = Query {
            id: 1,
            transport: Transport::Tcp,
            message: Bytes::from_static(b"ab"),
        };
        assert_eq!(&q.encode()[..], b"\0\0\0\x01\x01ab");
        let r = Reply {
            id: 2,
            message: Bytes::new(),
        };
        assert_eq!(&r.encode()[..], b"\0\0\0\x02");
        assert_eq!(Reply::decode(r.encode()), Ok(r));
    }

    #[test]
    fn short_and_unknown_frames_are_errors() {
        assert_eq!(
            Query::decode(Bytes::from_static(b"\0\0\0")),
            Err(DnsFrameError::Short(3))
        );
        assert_eq!(
            Query::decode(Bytes::from_static(b"\0\0\0\x01\x07x")),
            Err(DnsFrameError::Transport(7))
        );
        assert_eq!(
            Reply::decode(Bytes::from_static(b"\0")),
            Err(DnsFrameError::Short(1))
        );
    }

    #[tokio::test]
    async fn frames_travel_through_the_codec_and_oversized_ones_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut tx = FramedWrite::new(a, codec());
        let mut rx = FramedRead::new(b, codec());
        let q = Query {
            id: 7,
            transport: Transport::Udp,
            message: Bytes::from(vec![0u8; MAX_MESSAGE]),
        };
        tx.send(q.encode()).await.unwrap();
        let got = rx.next().await.unwrap().unwrap().freeze();
        assert_eq!(Query::decode(got), Ok(q));
        // A frame beyond the limit is an error on the reading side, whatever
        // the writer claims.
        let mut raw = tx.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &((MAX_FRAME as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(rx.next().await.unwrap().is_err());
    }
}
