//! Length-delimited JSON frames on a byte stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. The codec is tokio-util's `LengthDelimitedCodec`; this module only
//! adds (de)serialisation and a size limit.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{self, LengthDelimitedCodec};

/// Largest control frame accepted (a container spec with a large
/// environment fits many times over).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame is not valid JSON for the expected message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("a message could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the peer closed the stream before sending a message")]
    Closed,
}

/// A byte stream carrying JSON frames.
pub struct Framed<T> {
    inner: codec::Framed<T, LengthDelimitedCodec>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Framed<T> {
    pub fn new(io: T) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec();
        Self {
            inner: codec::Framed::new(io, codec),
        }
    }

    /// Sends one message and flushes it.
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), FrameError> {
        let bytes = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
        self.inner.send(Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Receives one message; `Ok(None)` at a clean end of stream.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(frame) => {
                let frame = frame?;
                serde_json::from_slice(&frame)
                    .map(Some)
                    .map_err(FrameError::Decode)
            }
        }
    }

    /// Receives one message, treating end of stream as an error.
    pub async fn expect<M: DeserializeOwned>(&mut self) -> Result<M, FrameError> {
        self.recv().await?.ok_or(FrameError::Closed)
    }

    /// Gives back the byte stream. Bytes already read past the last frame
    /// are returned too, so nothing is lost when the stream goes on as raw
    /// data after a header.
    pub fn into_parts(self) -> (T, bytes::BytesMut) {
        let parts = self.inner.into_parts();
        (parts.io, parts.read_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    #[tokio::test]
    async fn round_trip_over_a_duplex_pipe() {
        let (a, b) = tokio::io::duplex(64);
        let mut a = Framed::new(a);
        let mut b = Framed::new(b);
        let sent = HostMessage::Resize { rows: 24, cols: 80 };
        let writer = tokio::spawn(async move {
            a.send(&sent).await.unwrap();
            a.send(&HostMessage::Signal { signal: 15 }).await.unwrap();
        });
        let got: HostMessage = b.expect().await.unwrap();
        assert_eq!(got, HostMessage::Resize { rows: 24, cols: 80 });
        let got: HostMessage = b.expect().await.unwrap();
        assert_eq!(got, HostMessage::Signal { signal: 15 });
        writer.await.unwrap();
        assert!(b.recv::<HostMessage>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wire_format_is_big_endian_length_then_json() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = Framed::new(a);
        a.send(&GuestMessage::Exited { status: 7 }).await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut buf)
            .await
            .unwrap();
        let json = br#"{"type":"exited","status":7}"#;
        assert_eq!(&buf[..4], &(json.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..], json);
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error_and_eof_mid_stream_is_closed() {
        let (a, b) = tokio::io::duplex(1024);
        let mut raw = codec::Framed::new(a, LengthDelimitedCodec::new());
        raw.send(Bytes::from_static(b"not json")).await.unwrap();
        drop(raw);
        let mut b = Framed::new(b);
        assert!(matches!(
            b.recv::<GuestMessage>().await,
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            b.expect::<GuestMessage>().await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn raw_bytes_after_a_header_are_kept() {
        let (a, b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            let mut a = Framed::new(a);
            a.send(&StreamHeader::Stdout { process: 3 }).await.unwrap();
            let (mut io, _) = a.into_parts();
            tokio::io::AsyncWriteExt::write_all(&mut io, b"raw output")
                .await
                .unwrap();
        });
        writer.await.unwrap();
        let mut b = Framed::new(b);
        let h: StreamHeader = b.expect().await.unwrap();
        assert_eq!(h, StreamHeader::Stdout { process: 3 });
        let (mut io, rest) = b.into_parts();
        let mut all = rest.to_vec();
        tokio::io::AsyncReadExt::read_to_end(&mut io, &mut all)
            .await
            .unwrap();
        assert_eq!(all, b"raw output");
    }

    #[test]
    fn container_spec_survives_json() {
        let spec = ContainerSpec {
            hostname: Some("abc".into()),
            process: ProcessSpec {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                rlimits: vec![Rlimit {
                    kind: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 4096,
                }],
                ..Default::default()
            },
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:02".into(),
                mtu: 1500,
                addresses: vec!["172.17.0.2/16".into()],
            }],
            routes: vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: Some("172.17.0.1".into()),
                device: "eth0".into(),
                metric: None,
            }],
            mounts: vec![],
            readonly_root: false,
        };
        let json =
            serde_json::to_string(&HostMessage::StartContainer(Box::new(spec.clone()))).unwrap();
        let back: HostMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, HostMessage::StartContainer(Box::new(spec)));
    }
}
