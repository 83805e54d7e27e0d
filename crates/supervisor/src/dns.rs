//! The host end of the DNS relay (see [`runvm_protocol::dns`]): asks
//! Docker's embedded resolver, in the container's network namespace where
//! the supervisor runs, the queries the guest relays, and sends the
//! answers back.
//!
//! The guest is not trusted: it chooses the queries' bytes but never where
//! they go (always the resolver's address, as the workload could reach it
//! under runc), at most [`MAX_IN_FLIGHT`] are worked on at once (the rest
//! are answered empty at once), each gets [`ANSWER_WAIT`] and an answer of
//! at most [`MAX_MESSAGE`] bytes, and a malformed frame ends the relay.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
pub use runvm_protocol::dns::EMBEDDED_RESOLVER;
use runvm_protocol::dns::{codec, Query, Reply, Transport, MAX_IN_FLIGHT, MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// How long one query waits for the resolver. dockerd gives an upstream
/// server a few seconds; clients retry after 5 s by default.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Relays the queries that arrive on `stream` to `resolver` until the
/// guest closes the stream or sends a malformed frame; each waits at most
/// `wait` for its answer ([`ANSWER_WAIT`]).
pub async fn serve<S>(stream: S, resolver: SocketAddr, wait: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut queries = FramedRead::new(rd, codec());
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut out = FramedWrite::new(wr, codec());
        while let Some(reply) = rx.recv().await {
            if out.send(reply.encode()).await.is_err() {
                return;
            }
        }
    });
    let busy = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(frame) = queries.next().await {
        let query = match frame
            .map_err(|e| e.to_string())
            .and_then(|f| Query::decode(f.freeze()).map_err(|e| e.to_string()))
        {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!("the guest's DNS relay sent a bad frame ({e}): relay stopped");
                break;
            }
        };
        let Ok(permit) = busy.clone().try_acquire_owned() else {
            // Too many at once: no answer, as from a busy server.
            let _ = tx.try_send(Reply {
                id: query.id,
                message: Bytes::new(),
            });
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let message = tokio::time::timeout(wait, ask(resolver, &query))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let _ = tx
                .send(Reply {
                    id: query.id,
                    message,
                })
                .await;
            drop(permit);
        });
    }
    drop(tx);
    // Answers still on their way are of no use to a guest that is gone.
    writer.abort();
}

/// One query to the resolver over the transport it came by.
async fn ask(resolver: SocketAddr, query: &Query) -> std::io::Result<Bytes> {
    if query.message.len() > MAX_MESSAGE {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    match query.transport {
        Transport::Udp => {
            let local: SocketAddr = match resolver {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(local).await?;
            socket.connect(resolver).await?;
            socket.send(&query.message).await?;
            let mut buf = vec![0u8; MAX_MESSAGE];
            let n = socket.recv(&mut buf).await?;
            buf.truncate(n);
            Ok(buf.into())
        }
        Transport::Tcp => {
            let mut conn = TcpStream::connect(resolver).await?;
            let len = u16::try_from(query.message.len()).expect("checked above");
            let mut out = Vec::with_capacity(2 + query.message.len());
            out.extend(len.to_be_bytes());
            out.extend(&query.message[..]);
            conn.write_all(&out).await?;
            let len = conn.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            conn.read_exact(&mut buf).await?;
            Ok(buf.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A resolver on loopback that answers every query with the query's
    /// bytes reversed, over UDP and TCP on the same port; queries that
    /// start with `slow` are never answered.
    async fn fake_resolver() -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        let answer = |q: &[u8]| -> Option<Vec<u8>> {
            (!q.starts_with(b"slow")).then(|| q.iter().rev().copied().collect())
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                if let Some(a) = answer(&buf[..n]) {
                    udp.send_to(&a, from).await.unwrap();
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut c, _) = tcp.accept().await.unwrap();
                tokio::spawn(async move {
                    let len = c.read_u16().await.unwrap();
                    let mut q = vec![0u8; len.into()];
                    c.read_exact(&mut q).await.unwrap();
                    if let Some(a) = answer(&q) {
                        c.write_u16(a.len() as u16).await.unwrap();
                        c.write_all(&a).await.unwrap();
                    }
                    let _ = c.read_u8().await;
                });
            }
        });
        addr
    }

    type Guest = (
        FramedWrite<
            tokio::io::WriteHalf<tokio::io::DuplexStream>,
            tokio_util::codec::LengthDelimitedCodec,
        >,
        FramedRead<
            tokio::io::ReadHalf<tokio::io::DuplexStream>,
            tokio_util::codec::LengthDelimitedCodec,
        >,
    );

    async fn relay_to(resolver: SocketAddr) -> Guest {
        let (guest, host) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(host, resolver, Duration::from_millis(500)));
        let (rd, wr) = tokio::io::split(guest);
        (FramedWrite::new(wr, codec()), FramedRead::new(rd, codec()))
    }

    async fn next_reply(g: &mut Guest) -> Reply {
        Reply::decode(g.1.next().await.unwrap().unwrap().freeze()).unwrap()
    }

    fn query(id: u32, transport: Transport, m: &'static [u8]) -> Bytes {
        Query {
            id,
            transport,
            message: Bytes::from_static(m),
        }
        .encode()
    }

    #[tokio::test]
    async fn udp_and_tcp_queries_get_the_resolvers_answers() {
        let mut g = relay_to(fake_resolver().await).await;
        g.0.send(query(1, Transport::Udp, b"abc")).await.unwrap();
        assert_eq!(
            next_reply(&mut g).await,
            Reply {
                id: 1,
                message: Bytes::from_static(b"cba")
            }
        );
        g.0.send(query(2, Transport::Tcp, b"xyz")).await.unwrap();
        assert_eq!(
            next_reply(&mut g).await,
            Reply {
                id: 2,
                message: Bytes::from_static(b"zyx")
            }
        );
    }

    #[tokio::test]
    async fn a_query_without_an_answer_gets_an_empty_one_after_the_wait() {
        let mut g = relay_to(fake_resolver().await).await;
        g.0.send(query(9, Transport::Udp, b"slow")).await.unwrap();
        g.0.send(query(10, Transport::Udp, b"fast")).await.unwrap();
        // The answered one does not wait for the other.
        assert_eq!(next_reply(&mut g).await.id, 10);
        let r = next_reply(&mut g).await;
        assert_eq!((r.id, r.message.len()), (9, 0));
    }

    #[tokio::test]
    async fn a_resolver_that_is_not_there_gives_empty_answers() {
        // A port nothing listens on: UDP is refused, TCP too.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut g = relay_to(port).await;
        for (id, t) in [(1, Transport::Udp), (2, Transport::Tcp)] {
            g.0.send(query(id, t, b"q")).await.unwrap();
            let r = next_reply(&mut g).await;
            assert_eq!((r.id, r.message.len()), (id, 0));
        }
    }

    #[tokio::test]
    async fn queries_beyond_the_limit_are_answered_empty_at_once() {
        let mut g = relay_to(fake_resolver().await).await;
        for id in 0..MAX_IN_FLIGHT as u32 {
            g.0.send(query(id, Transport::Udp, b"slow")).await.unwrap();
        }
        g.0.send(query(1000, Transport::Udp, b"fast"))
            .await
            .unwrap();
        let r = next_reply(&mut g).await;
        assert_eq!((r.id, r.message.len()), (1000, 0));
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_relay() {
        let mut g = relay_to(fake_resolver().await).await;
        g.0.send(Bytes::from_static(b"\0\0")).await.unwrap();
        assert!(g.1.next().await.is_none(), "the host closed its end");
    }
}
