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

/// Largest frame the host accepts from the guest or from an exec client:
/// stream headers and [`crate::GuestMessage`]s are small, so a hostile guest
/// gets no more than this per stream.
pub const MAX_SMALL_FRAME: usize = 64 * 1024;

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the channel failed")]
    Io(#[from] std::io::Error),
    #[error("a frame is not valid JSON for the expected message")]
    Decode(#[source] serde_json::Error),
    #[error("a message could not be encoded")]
    Encode(#[source] serde_json::Error),
    #[error("the peer closed the stream before sending a message")]
    Closed,
    #[error("a frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: u32, limit: usize },
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

/// Reads exactly one frame of at most [`MAX_FRAME`] bytes, and not a byte
/// more, so that the stream can go on as raw data afterwards.
pub async fn read_frame<R: AsyncRead + Unpin, M: DeserializeOwned>(
    r: &mut R,
) -> Result<M, FrameError> {
    read_frame_limited(r, MAX_FRAME).await
}

/// Reads exactly one frame of at most `limit` bytes. Memory grows with the
/// bytes that actually arrive, not with the length the peer announces.
pub async fn read_frame_limited<R: AsyncRead + Unpin, M: DeserializeOwned>(
    r: &mut R,
    limit: usize,
) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len as usize > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = Vec::with_capacity((len as usize).min(16 * 1024));
    let got = r.take(u64::from(len)).read_to_end(&mut body).await?;
    if got < len as usize {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended after {got} of a frame's {len} bytes"),
        )));
    }
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
        assert!(matches!(r, Err(FrameError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn the_small_limit_refuses_what_the_large_one_takes() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        let big = GuestMessage::SetupFailed {
            message: "x".repeat(MAX_SMALL_FRAME),
        };
        write_frame(&mut a, &big).await.unwrap();
        write_frame(&mut a, &big).await.unwrap();
        let r: Result<GuestMessage, _> = read_frame_limited(&mut b, MAX_SMALL_FRAME).await;
        assert!(matches!(r, Err(FrameError::TooLarge { .. })), "{r:?}");
        // The first frame's body is still unread; a fresh stream decodes the
        // same frame under the large limit.
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        write_frame(&mut a, &big).await.unwrap();
        let r: GuestMessage = read_frame(&mut b).await.unwrap();
        assert_eq!(r, big);
    }

    #[tokio::test]
    async fn an_announced_length_allocates_nothing_before_the_bytes_arrive() {
        // A peer announcing a frame at the limit and then closing costs a
        // truncated-frame error, not a buffer of the announced size.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_FRAME as u32).to_be_bytes())
            .await
            .unwrap();
        a.write_all(b"{\"type\"").await.unwrap();
        drop(a);
        let r: Result<GuestMessage, _> = read_frame(&mut b).await;
        match r {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected a truncated frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hostile_frames_are_errors_not_panics() {
        // Deep nesting, huge numbers, invalid UTF-8, unknown fields, empty
        // bodies and lengths of u32::MAX.
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        let deep = "[".repeat(100_000);
        let nasties: [&[u8]; 5] = [
            deep.as_bytes(),
            br#"{"type":"exited","status":99999999999999999999999}"#,
            b"\xff\xfe\x00{}",
            b"",
            br#"{"type":"started","pid":-1,"extra":[1,2,3]}"#,
        ];
        for body in nasties {
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(body);
            inputs.push(framed);
        }
        inputs.push(u32::MAX.to_be_bytes().to_vec());
        for input in inputs {
            let mut r = &input[..];
            let _ = read_frame_limited::<_, GuestMessage>(&mut r, MAX_SMALL_FRAME).await;
            let mut r = &input[..];
            let _ = read_frame::<_, HostMessage>(&mut r).await;
            let mut r = &input[..];
            let _ = read_frame::<_, StreamHeader>(&mut r).await;
        }
    }

    #[test]
    fn start_container_survives_json() {
        let container = ContainerSpec {
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
            mounts: vec![],
            readonly_root: false,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            sysfs_readonly: true,
            cgroup_readonly: true,
            any_device: true,
            seccomp: Some(SeccompFilter {
                program: vec![SockFilter(0x06, 0, 0, 0x7fff_0000)],
                flags: 0,
            }),
            kernel_modules: Some("6.1.0-57-cloud-amd64".into()),
            disks: vec![GuestDisk {
                serial: "runvm-disk0".into(),
                destination: "/data".into(),
                fs: DiskFs::Xfs,
            }],
            docker_mounts: vec!["/etc/hosts".into()],
            cgroupfs: Some(CgroupFs::Hybrid),
            sysctl: vec![("net.ipv4.ip_forward".into(), "1".into())],
            limits: GuestLimits {
                memory_bytes: Some(64 << 20),
                pids: Some(10),
            },
            devices: vec![GuestDevice {
                path: "/dev/mynull".into(),
                block: false,
                major: 1,
                minor: 3,
                mode: 0o666,
                uid: 0,
                gid: 0,
            }],
        };
        let spec = StartContainer {
            container,
            network: GuestNetwork {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: "02:42:ac:11:00:02".parse().unwrap(),
                    mtu: 1500,
                    addresses: vec![
                        "172.17.0.2/16".parse().unwrap(),
                        "fd00::2/64".parse().unwrap(),
                    ],
                }],
                routes: vec![
                    Route {
                        destination: "0.0.0.0/0".parse().unwrap(),
                        gateway: Some("172.17.0.1".parse().unwrap()),
                        device: "eth0".into(),
                        metric: None,
                    },
                    Route {
                        destination: "::/0".parse().unwrap(),
                        gateway: Some("fd00::1".parse().unwrap()),
                        device: "eth0".into(),
                        metric: None,
                    },
                ],
                dns_relay: true,
            },
        };
        let json =
            serde_json::to_string(&HostMessage::StartContainer(Box::new(spec.clone()))).unwrap();
        // A BPF instruction travels as a compact [code, jt, jf, k] array.
        assert!(json.contains(r#""program":[[6,0,0,2147418112]]"#), "{json}");
        // Addresses travel in their usual text forms.
        assert!(
            json.contains(
                r#""mac":"02:42:ac:11:00:02","mtu":1500,"addresses":["172.17.0.2/16","fd00::2/64"]"#
            ),
            "{json}"
        );
        assert!(
            json.contains(r#""destination":"::/0","gateway":"fd00::1""#),
            "{json}"
        );
        // The container and its network are the fields of one object.
        assert!(
            json.starts_with(r#"{"type":"start_container","hostname":"abc","#),
            "{json}"
        );
        let back: HostMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, HostMessage::StartContainer(Box::new(spec)));
    }
}
