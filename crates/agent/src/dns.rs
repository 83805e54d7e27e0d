//! The guest end of the DNS relay (see [`runvm_protocol::dns`]): Docker's
//! embedded resolver, `127.0.0.11:53`, answered in the guest over UDP and
//! TCP by relaying each query to the host.
//!
//! The relay runs only when the container's `/etc/resolv.conf` names that
//! address (user-defined networks); otherwise the address is left free, as
//! under runc. Queries are matched to answers by an id of the relay's own;
//! at most [`MAX_PENDING`] wait at once, the rest are dropped as an
//! overloaded server drops them (the client retries).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use runvm_protocol::dns::{codec, Query, Reply, Transport, MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

pub use runvm_protocol::dns::EMBEDDED_RESOLVER;

/// Most queries waiting for their answer at once.
pub const MAX_PENDING: usize = 256;

/// Most TCP connections served at once.
const MAX_TCP_CLIENTS: usize = 32;

/// How long a TCP client may stay idle between queries (RFC 7766 suggests
/// a few seconds; resolvers use about 10).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How long an answer may take before a query is forgotten: longer than
/// the host waits for the resolver, so an answer is never dropped here
/// first.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// Whether a resolv.conf names Docker's embedded resolver.
pub fn names_embedded_resolver(resolv_conf: &str) -> bool {
    let wanted = EMBEDDED_RESOLVER.ip().to_string();
    resolv_conf.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("nameserver") && words.next() == Some(wanted.as_str())
    })
}

enum Waiter {
    Udp(SocketAddr),
    Tcp(oneshot::Sender<Bytes>),
}

/// Queries sent to the host, waiting for their answers.
struct Pending {
    waiting: Mutex<(u32, HashMap<u32, Waiter>)>,
    to_host: mpsc::Sender<Query>,
}

impl Pending {
    /// Sends a query to the host; `None` if too many wait already.
    fn send(&self, transport: Transport, message: Bytes, waiter: Waiter) -> Option<u32> {
        let id = {
            let mut w = self.waiting.lock().expect("pending lock");
            if w.1.len() >= MAX_PENDING {
                return None;
            }
            let id = w.0;
            w.0 = w.0.wrapping_add(1);
            w.1.insert(id, waiter);
            id
        };
        let query = Query {
            id,
            transport,
            message,
        };
        if self.to_host.try_send(query).is_err() {
            self.forget(id);
            return None;
        }
        Some(id)
    }

    fn forget(&self, id: u32) -> Option<Waiter> {
        self.waiting.lock().expect("pending lock").1.remove(&id)
    }
}

/// Listens on `listen` (UDP and TCP) and relays over `host` until the host
/// closes it. Fails only if the sockets cannot be bound.
pub async fn relay<S>(host: S, listen: SocketAddr) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let udp = Arc::new(UdpSocket::bind(listen).await?);
    let tcp = TcpListener::bind(listen).await?;
    tokio::spawn(run(host, udp, tcp));
    Ok(())
}

async fn run<S>(host: S, udp: Arc<UdpSocket>, tcp: TcpListener)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(host);
    let (to_host, mut queries) = mpsc::channel::<Query>(MAX_PENDING);
    let pending = Arc::new(Pending {
        waiting: Mutex::default(),
        to_host,
    });
    tokio::spawn(async move {
        let mut out = FramedWrite::new(wr, codec());
        while let Some(q) = queries.recv().await {
            if out.send(q.encode()).await.is_err() {
                return;
            }
        }
    });
    let answers = {
        let (pending, udp) = (pending.clone(), udp.clone());
        async move {
            let mut replies = FramedRead::new(rd, codec());
            while let Some(Ok(frame)) = replies.next().await {
                let Ok(reply) = Reply::decode(frame.freeze()) else {
                    break;
                };
                match pending.forget(reply.id) {
                    Some(Waiter::Udp(client)) if !reply.message.is_empty() => {
                        let _ = udp.send_to(&reply.message, client).await;
                    }
                    Some(Waiter::Tcp(tx)) => {
                        let _ = tx.send(reply.message);
                    }
                    _ => {}
                }
            }
        }
    };
    let udp_queries = {
        let pending = pending.clone();
        async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let Ok((n, client)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let message = Bytes::copy_from_slice(&buf[..n]);
                if let Some(id) = pending.send(Transport::Udp, message, Waiter::Udp(client)) {
                    let pending = pending.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(ANSWER_WAIT).await;
                        pending.forget(id);
                    });
                }
            }
        }
    };
    let tcp_clients = async move {
        let slots = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                continue;
            };
            // Beyond the limit a connection is closed at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let pending = pending.clone();
            tokio::spawn(async move {
                serve_tcp(conn, &pending).await;
                drop(slot);
            });
        }
    };
    // The relay ends with the host's stream; the sockets close with it.
    tokio::select! {
        _ = answers => {}
        _ = udp_queries => {}
        _ = tcp_clients => {}
    }
}

/// Serves one TCP client: length-prefixed queries, one at a time, until it
/// closes, idles, or a query gets no answer (the connection is closed, as a
/// resolver that fails closes it).
async fn serve_tcp(mut conn: TcpStream, pending: &Pending) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, conn.read_u16()).await else {
            return;
        };
        let mut message = vec![0u8; usize::from(len)];
        if tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut message))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let Some(id) = pending.send(Transport::Tcp, message.into(), Waiter::Tcp(tx)) else {
            return;
        };
        let answer = match tokio::time::timeout(ANSWER_WAIT, rx).await {
            Ok(Ok(a)) if !a.is_empty() => a,
            _ => {
                pending.forget(id);
                return;
            }
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(2 + answer.len());
        out.extend(len.to_be_bytes());
        out.extend(&answer[..]);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nameserver_line_for_127_0_0_11_counts() {
        assert!(names_embedded_resolver(
            "search example.com\nnameserver 127.0.0.11\noptions ndots:0\n"
        ));
        assert!(names_embedded_resolver("nameserver\t127.0.0.11"));
        for other in [
            "nameserver 8.8.8.8\n",
            "# nameserver 127.0.0.11\n",
            "nameserver 127.0.0.111\n",
            "search 127.0.0.11\n",
            "",
        ] {
            assert!(!names_embedded_resolver(other), "{other:?}");
        }
    }

    /// The host's end, played by a closure over each query.
    fn fake_host(
        answer: impl Fn(&Query) -> Option<Bytes> + Send + 'static,
    ) -> tokio::io::DuplexStream {
        let (guest, host) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let (rd, wr) = tokio::io::split(host);
            let mut rd = FramedRead::new(rd, codec());
            let mut wr = FramedWrite::new(wr, codec());
            while let Some(Ok(f)) = rd.next().await {
                let q = Query::decode(f.freeze()).unwrap();
                if let Some(message) = answer(&q) {
                    wr.send(Reply { id: q.id, message }.encode()).await.unwrap();
                }
            }
        });
        guest
    }

    async fn free_port() -> SocketAddr {
        // UDP and TCP must both be free on it; the test binds both at once.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    fn tagged(q: &Query) -> Option<Bytes> {
        let tag: &[u8] = match q.transport {
            Transport::Udp => b"udp:",
            Transport::Tcp => b"tcp:",
        };
        // "none" gets the host's empty answer: the resolver gave none.
        Some(if q.message.starts_with(b"none") {
            Bytes::new()
        } else {
            [tag, &q.message[..]].concat().into()
        })
    }

    #[tokio::test]
    async fn udp_clients_get_the_hosts_answers() {
        let addr = free_port().await;
        relay(fake_host(tagged), addr).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        for q in [&b"one"[..], b"two"] {
            client.send(q).await.unwrap();
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], [&b"udp:"[..], q].concat());
        }
    }

    #[tokio::test]
    async fn tcp_clients_get_length_prefixed_answers_on_one_connection() {
        let addr = free_port().await;
        relay(fake_host(tagged), addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        for q in [&b"first"[..], b"second"] {
            c.write_u16(q.len() as u16).await.unwrap();
            c.write_all(q).await.unwrap();
            let len = c.read_u16().await.unwrap();
            let mut a = vec![0u8; len.into()];
            c.read_exact(&mut a).await.unwrap();
            assert_eq!(a, [&b"tcp:"[..], q].concat());
        }
        // No answer from the host: the connection is closed.
        c.write_u16(4).await.unwrap();
        c.write_all(b"none").await.unwrap();
        assert!(c.read_u16().await.is_err());
    }

    #[tokio::test]
    async fn an_empty_answer_is_no_answer_for_udp() {
        let addr = free_port().await;
        relay(fake_host(tagged), addr).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        client.send(b"none").await.unwrap();
        client.send(b"real").await.unwrap();
        let mut buf = [0u8; 16];
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"udp:real", "the empty answer was never sent");
    }

    #[tokio::test]
    async fn the_relay_ends_and_frees_its_address_when_the_host_goes() {
        let addr = free_port().await;
        let (guest, host) = tokio::io::duplex(1024);
        relay(guest, addr).await.unwrap();
        drop(host);
        for _ in 0..100 {
            if UdpSocket::bind(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{addr} is still bound");
    }
}
