//! Length-delimited JSON frames on a byte stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. Frames are read with exact reads and no buffering, so a stream can
//! carry a header frame and then go on as raw bytes (stdio streams do).

use std::io;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Writes one frame (4-byte big-endian length + JSON) without buffering.
pub async fn write_frame<W: AsyncWrite + Unpin, M: Serialize>(
    w: &mut W,
    msg: &M,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
    let len = u32::try_from(body.len()).map_err(|_| {
        FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ))
    })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads exactly one frame, and not a byte more, so that the stream can go
/// on as raw data afterwards.
pub async fn read_frame<R: AsyncRead + Unpin, M: DeserializeOwned>(
    r: &mut R,
) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    #[tokio::test]
    async fn round_trip_over_a_duplex_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &HostMessage::Resize { rows: 24, cols: 80 })
                .await
                .unwrap();
            write_frame(&mut a, &HostMessage::Signal { signal: 15 })
                .await
                .unwrap();
        });
        let got: HostMessage = read_frame(&mut b).await.unwrap();
        assert_eq!(got, HostMessage::Resize { rows: 24, cols: 80 });
        let got: HostMessage = read_frame(&mut b).await.unwrap();
        assert_eq!(got, HostMessage::Signal { signal: 15 });
        writer.await.unwrap();
        assert!(matches!(
            read_frame::<_, HostMessage>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn wire_format_is_big_endian_length_then_json() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &GuestMessage::Exited { status: 7 })
            .await
            .unwrap();
        drop(a);
        let mut buf = Vec::new();
        b.read_to_end(&mut buf).await.unwrap();
        let json = br#"{"type":"exited","status":7}"#;
        assert_eq!(&buf[..4], &(json.len() as u32).to_be_bytes());
        assert_eq!(&buf[4..], json);
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error_and_eof_mid_stream_is_closed() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let junk = b"not json";
        a.write_all(&(junk.len() as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(junk).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut b).await,
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            read_frame::<_, GuestMessage>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn raw_bytes_after_a_header_are_kept() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &StreamHeader::Stdout { process: 3 })
            .await
            .unwrap();
        a.write_all(b"raw output").await.unwrap();
        drop(a);
        let h: StreamHeader = read_frame(&mut b).await.unwrap();
        assert_eq!(h, StreamHeader::Stdout { process: 3 });
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"raw output");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let r: Result<StreamHeader, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Io(_))));
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
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            sysfs_readonly: true,
            cgroup_readonly: true,
            seccomp: Some(SeccompFilter {
                program: vec![SockFilter(0x06, 0, 0, 0x7fff_0000)],
                flags: 0,
            }),
        };
        let json =
            serde_json::to_string(&HostMessage::StartContainer(Box::new(spec.clone()))).unwrap();
        // A BPF instruction travels as a compact [code, jt, jf, k] array.
        assert!(json.contains(r#""program":[[6,0,0,2147418112]]"#), "{json}");
        let back: HostMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, HostMessage::StartContainer(Box::new(spec)));
    }
}
