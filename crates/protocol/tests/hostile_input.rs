//! Property tests of the host↔guest decoders on hostile input: whatever bytes
//! the peer sends, `read_frame` and the yamux session return or end with an
//! error; they never panic, never hang and never allocate more than a bound
//! that does not depend on what a length field claims.
//!
//! The generators build messages as JSON (known tags and field names, values
//! of every type) rather than through the Rust types, so that fields and
//! variants added to the protocol do not break them. Each property runs
//! `PROPTEST_CASES` cases (a small default keeps `make test` fast; raise it
//! for long runs: `PROPTEST_CASES=100000 cargo test -p runvm-protocol`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use runvm_hostile_json::{
    self as hostile_json, address_text, apply, config, tree_mutation, AddressKind, Mutation,
};
use runvm_protocol::framing::MAX_FRAME;
use runvm_protocol::session::{Mode, Mux, SERVER_MAX_STREAMS};
use runvm_protocol::{
    read_frame, write_frame, FrameError, GuestMessage, HostMessage, StreamHeader,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

// ---------------------------------------------------------------------------
// Allocation accounting: the bytes allocated and not yet freed by the
// current thread, and their peak. Every property runs its async code on a
// current-thread runtime, so all its allocations are the test thread's.
// ---------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged and only adds bookkeeping in thread-local cells, which
// never allocates (const-initialised, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, which is the
        // system allocator underneath.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most bytes it had allocated at
/// any one time on this thread (beyond what was allocated before).
fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

// A panic in a task spawned by `Mux::start` would be swallowed by tokio (the
// task's handle is dropped), so a panic hook notes it for the thread.
thread_local! {
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

fn note_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICKED.try_with(|p| p.set(true));
            previous(info);
        }));
    });
    PANICKED.with(|p| p.set(false));
}

fn panicked() -> bool {
    PANICKED.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> + Clone {
    hostile_json::any_json(".{0,12}", field_name())
}

/// Field names of the protocol's messages, and some that are not.
fn field_name() -> impl Strategy<Value = String> + Clone {
    hostile_json::field_name(&[
        "kind",
        "type",
        "process",
        "signal",
        "rows",
        "cols",
        "pid",
        "message",
        "exit_code",
        "status",
        "hostname",
        "interfaces",
        "routes",
        "mounts",
        "readonly_root",
        "args",
        "env",
        "cwd",
        "uid",
        "gid",
        "additional_gids",
        "terminal",
        "console_size",
        "rlimits",
        "inherited_rlimits",
        "umask",
        "no_new_privileges",
        "capabilities",
        "bounding",
        "name",
        "mac",
        "mtu",
        "addresses",
        "destination",
        "gateway",
        "device",
        "metric",
        "fstype",
        "source",
        "options",
        "soft",
        "hard",
    ])
}

fn tag() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "control", "stdin", "stdout", "stderr", "start_container", "exec", "signal",
            "resize", "shutdown", "started", "start_failed", "exited", "setup_failed",
        ])
        .prop_map(Value::from),
        1 => any_json(),
    ]
}

/// Valid messages of every kind, as JSON: the starting points of mutation.
fn valid_messages() -> Vec<Value> {
    let process = json!({
        "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin"], "cwd": "/", "uid": 1000,
        "gid": 1000, "additional_gids": [10], "terminal": false, "console_size": [24, 80],
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
        "inherited_rlimits": [], "umask": 18, "no_new_privileges": true,
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": [], "permitted": [],
                         "inheritable": [], "ambient": []}
    });
    let mut start = json!({
        "type": "start_container", "hostname": "box",
        "interfaces": [{"name": "eth0", "mac": "02:42:ac:11:00:02", "mtu": 1500,
                        "addresses": ["172.17.0.2/16", "fd00:7::2/64"]},
                       {"name": "eth1", "mac": "02:42:ac:12:00:02", "mtu": 9000,
                        "addresses": ["172.18.0.2/16"]}],
        "routes": [{"destination": "0.0.0.0/0", "gateway": "172.17.0.1", "device": "eth0",
                    "metric": null},
                   {"destination": "::/0", "gateway": "fd00:7::1", "device": "eth0",
                    "metric": null},
                   {"destination": "10.7.0.0/24", "gateway": null, "device": "eth1",
                    "metric": 100}],
        "mounts": [{"destination": "/tmp", "fstype": "tmpfs", "source": "tmpfs",
                    "options": ["size=65536k"]}],
        "readonly_root": false,
    });
    start["process"] = process.clone();
    let mut exec = process;
    exec["type"] = json!("exec");
    vec![
        json!({"kind": "control", "process": 1}),
        json!({"kind": "stdin", "process": 2}),
        json!({"kind": "stdout", "process": 3}),
        json!({"kind": "stderr", "process": 4}),
        start,
        exec,
        json!({"type": "signal", "signal": 15}),
        json!({"type": "resize", "rows": 24, "cols": 80}),
        json!({"type": "shutdown"}),
        json!({"type": "started", "pid": 42}),
        json!({"type": "start_failed", "message": "not found", "exit_code": 127}),
        json!({"type": "exited", "status": 0}),
        json!({"type": "setup_failed", "message": "no root"}),
    ]
}

/// The address fields of the valid start message, and what they hold.
const ADDRESS_FIELDS: &[(&str, AddressKind)] = &[
    ("/interfaces/0/mac", AddressKind::Mac),
    ("/interfaces/1/mac", AddressKind::Mac),
    ("/interfaces/0/addresses/0", AddressKind::IpPrefix),
    ("/interfaces/0/addresses/1", AddressKind::IpPrefix),
    ("/routes/0/destination", AddressKind::IpPrefix),
    ("/routes/1/destination", AddressKind::IpPrefix),
    ("/routes/0/gateway", AddressKind::Ip),
    ("/routes/2/gateway", AddressKind::Ip),
];

/// An address field, its kind, and a text made for a field of its own kind
/// (well-formed or damaged) or a well-formed one of another kind (a damaged
/// text of one kind may be a good one of another: `1.2.3.4/8` is a bad
/// gateway and a good destination), with the kind it was made for.
fn address_field() -> impl Strategy<
    Value = (
        &'static str,
        AddressKind,
        AddressKind,
        hostile_json::AddressText,
    ),
> {
    (
        prop::sample::select(ADDRESS_FIELDS),
        prop::sample::select(vec![
            AddressKind::Ip,
            AddressKind::IpPrefix,
            AddressKind::Mac,
        ]),
        any::<bool>(),
    )
        .prop_flat_map(|((path, kind), other, own)| {
            let text_kind = if own { kind } else { other };
            address_text(text_kind)
                .prop_filter("another kind's texts are well-formed", move |t| {
                    own || t.well_formed
                })
                .prop_map(move |t| (path, kind, text_kind, t))
        })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => tree_mutation(any_json(), field_name()),
        1 => address_field().prop_map(|(path, _, _, t)| Mutation::Set {
            path,
            with: Value::String(t.text),
        }),
    ]
}

fn deeply_nested(depth: usize, object: bool) -> String {
    let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// A JSON message body: a mutated valid message, a message of random
/// fields, or deep nesting.
fn json_body(own: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        3 => prop::sample::select(own),
        1 => prop::sample::select(valid_messages()),
    ];
    let mutations = prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(mutation(), 1..4),
    ];
    prop_oneof![
        4 => (start, mutations)
            .prop_map(|(mut v, ms)| {
                for m in &ms {
                    apply(&mut v, m);
                }
                serde_json::to_vec(&v).expect("a Value serialises")
            }),
        2 => (
            prop::sample::select(vec!["kind", "type"]),
            tag(),
            prop::collection::vec((field_name(), any_json()), 0..6)
        )
            .prop_map(|(key, tag, fields)| {
                let mut o = serde_json::Map::new();
                o.insert(key.to_owned(), tag);
                o.extend(fields);
                serde_json::to_vec(&Value::Object(o)).expect("a Value serialises")
            }),
        1 => (0usize..4000, any::<bool>(), tag()).prop_map(|(depth, object, tag)| {
            format!(
                "{{\"type\":{tag},\"kind\":{tag},\"process\":{}}}",
                deeply_nested(depth, object)
            )
            .into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Length prefixes that are right, wrong, huge or at the limit.
fn claimed_length(actual: usize) -> impl Strategy<Value = u32> {
    let actual = actual as u32;
    prop_oneof![
        4 => Just(actual),
        1 => 0..=actual.saturating_add(8),
        1 => prop::sample::select(vec![
            0,
            1,
            MAX_FRAME as u32 - 1,
            MAX_FRAME as u32,
            MAX_FRAME as u32 + 1,
            1 << 31,
            u32::MAX,
        ]),
        1 => any::<u32>(),
    ]
}

/// The bytes a hostile peer sends on a stream before closing it, starting
/// from the messages of the type read (`own`) or of any type.
fn frame_stream(own: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    let tail = || prop::collection::vec(any::<u8>(), 0..8);
    prop_oneof![
        // Arbitrary bytes, including fewer than a length prefix.
        1 => prop::collection::vec(any::<u8>(), 0..96),
        // One well-framed body, followed by more bytes.
        4 => (json_body(own.clone()), tail()).prop_map(|(body, tail)| {
            let mut b = (body.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(&body);
            b.extend_from_slice(&tail);
            b
        }),
        // A lying prefix, a body cut short.
        2 => json_body(own)
            .prop_flat_map(move |body| (claimed_length(body.len()), Just(body), 0usize..8, tail()))
            .prop_map(|(len, body, cut, tail)| {
                let mut b = len.to_be_bytes().to_vec();
                b.extend_from_slice(&body);
                b.truncate(b.len().saturating_sub(cut));
                b.extend_from_slice(&tail);
                b
            }),
    ]
}

/// The valid messages whose tag is one of `tags`.
fn messages_tagged(tags: &[&str]) -> Vec<Value> {
    valid_messages()
        .into_iter()
        .filter(|m| {
            let tag = m.get("kind").or(m.get("type")).and_then(Value::as_str);
            tag.is_some_and(|t| tags.contains(&t))
        })
        .collect()
}

fn stream_headers() -> Vec<Value> {
    messages_tagged(&["control", "stdin", "stdout", "stderr"])
}

fn host_messages() -> Vec<Value> {
    messages_tagged(&["start_container", "exec", "signal", "resize", "shutdown"])
}

fn guest_messages() -> Vec<Value> {
    messages_tagged(&["started", "start_failed", "exited", "setup_failed"])
}

/// A reader that hands out the bytes in the given chunk sizes, returning
/// `Pending` (and waking itself) between chunks, as a socket would.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
    pending: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending {
            self.pending = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = if self.chunks.is_empty() {
            usize::MAX
        } else {
            self.chunks[self.next % self.chunks.len()].max(1)
        };
        self.next += 1;
        self.pending = true;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// What a read ended with, comparable across readers.
#[derive(Debug, PartialEq)]
enum Outcome<M> {
    Message(M),
    Closed,
    TooLarge,
    Truncated,
    Decode,
    OtherIo(io::ErrorKind),
    Encode,
}

fn outcome<M>(r: Result<M, FrameError>) -> Outcome<M> {
    match r {
        Ok(m) => Outcome::Message(m),
        Err(FrameError::Closed) => Outcome::Closed,
        Err(FrameError::Decode(_)) => Outcome::Decode,
        Err(FrameError::Encode(_)) => Outcome::Encode,
        Err(FrameError::TooLarge { .. }) => Outcome::TooLarge,
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => Outcome::TooLarge,
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Outcome::Truncated,
        Err(FrameError::Io(e)) => Outcome::OtherIo(e.kind()),
    }
}

/// Reads one frame of `M` from `bytes`, whole and in `chunks`, and checks
/// what the framing promises: the outcome follows from the length prefix,
/// exactly one frame is consumed, nothing is allocated for a refused
/// prefix, a decoded message survives a write/read round trip.
fn check_read<M>(bytes: &[u8], chunks: Vec<usize>) -> Result<(), TestCaseError>
where
    M: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let rt = runtime();
    let mut rest: &[u8] = bytes;
    let (got, peak) = peak_allocation(|| rt.block_on(read_frame::<_, M>(&mut rest)));
    let consumed = bytes.len() - rest.len();
    let got = outcome(got);
    let available = bytes.len().saturating_sub(4);
    match bytes.get(..4) {
        None => prop_assert_eq!(&got, &Outcome::Closed),
        Some(prefix) => {
            let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                prop_assert_eq!(&got, &Outcome::TooLarge);
                prop_assert_eq!(consumed, 4, "a refused frame's body is not read");
                prop_assert!(
                    peak < 64 * 1024,
                    "{} bytes allocated for a refused {}-byte frame",
                    peak,
                    len
                );
            } else if available < len {
                prop_assert_eq!(&got, &Outcome::Truncated);
            } else {
                prop_assert!(
                    matches!(got, Outcome::Message(_) | Outcome::Decode),
                    "a complete frame decodes or is a decode error, not {:?}",
                    got
                );
                prop_assert_eq!(consumed, 4 + len, "exactly one frame is read");
            }
            // The body buffer is at most the claimed length (itself at most
            // MAX_FRAME); decoding costs a bounded multiple of what arrived.
            let bound = len.min(MAX_FRAME) + 64 * available + 64 * 1024;
            prop_assert!(
                peak <= bound,
                "{} bytes allocated for a {}-byte claim with {} bytes sent",
                peak,
                len,
                available
            );
        }
    }
    // The same bytes in pieces give the same outcome.
    let mut chunked = Chunked {
        data: bytes.to_vec(),
        pos: 0,
        chunks,
        next: 0,
        pending: false,
    };
    let again = outcome(rt.block_on(read_frame::<_, M>(&mut chunked)));
    prop_assert_eq!(&again, &got);
    if let Outcome::Message(m) = got {
        let mut wire = Vec::new();
        rt.block_on(write_frame(&mut wire, &m))
            .map_err(|e| TestCaseError::fail(format!("re-encoding {m:?}: {e}")))?;
        let back: M = rt
            .block_on(read_frame(&mut wire.as_slice()))
            .map_err(|e| TestCaseError::fail(format!("re-reading {m:?}: {e}")))?;
        prop_assert_eq!(back, m);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn stream_header_frames_never_panic(bytes in frame_stream(stream_headers()), chunks in prop::collection::vec(0usize..16, 0..4)) {
        check_read::<StreamHeader>(&bytes, chunks)?;
    }

    #[test]
    fn host_message_frames_never_panic(bytes in frame_stream(host_messages()), chunks in prop::collection::vec(0usize..16, 0..4)) {
        check_read::<HostMessage>(&bytes, chunks)?;
    }

    #[test]
    fn guest_message_frames_never_panic(bytes in frame_stream(guest_messages()), chunks in prop::collection::vec(0usize..16, 0..4)) {
        check_read::<GuestMessage>(&bytes, chunks)?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// A start message whose MAC, address, destination or gateway text is
    /// malformed is a decode error, never a panic; a well-formed one is
    /// read as the address it names and written back as the same text.
    /// A text well-formed for another kind of field is malformed here: a
    /// MAC is no IP address, an address with a prefix length is no plain
    /// address, and the other way round.
    #[test]
    fn address_fields_decode_exactly_when_well_formed(
        (path, kind, text_kind, text) in address_field()
    ) {
        let mut msg = messages_tagged(&["start_container"]).remove(0);
        *msg.pointer_mut(path).expect("the valid message has the field") =
            Value::String(text.text.clone());
        let body = serde_json::to_vec(&msg).expect("a Value serialises");
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        note_panics();
        let got = outcome(runtime().block_on(read_frame::<_, HostMessage>(&mut bytes.as_slice())));
        prop_assert!(!panicked());
        let should_take = text.well_formed && text_kind == kind;
        match got {
            Outcome::Message(m) => {
                prop_assert!(should_take, "{:?} was taken for {} ({:?})", text.text, path, kind);
                let back = serde_json::to_value(&m).expect("a message serialises");
                let written = back.pointer(path).and_then(Value::as_str).unwrap_or_default();
                prop_assert_eq!(written, text.text.to_ascii_lowercase());
            }
            Outcome::Decode => prop_assert!(
                !should_take, "{:?} was refused for {} ({:?})", text.text, path, kind
            ),
            other => prop_assert!(false, "{:?}: {:?}", text.text, other),
        }
    }
}

#[test]
fn malformed_addresses_are_decode_errors() {
    for (path, text) in [
        ("/interfaces/0/mac", "02:42:ac:11:00"),
        ("/interfaces/0/mac", "02-42-ac-11-00-02"),
        ("/interfaces/0/mac", "172.17.0.2"),
        ("/interfaces/0/addresses/0", "172.17.0.2"),
        ("/interfaces/0/addresses/0", "172.17.0.2/33"),
        ("/interfaces/0/addresses/0", "fd00::2/129"),
        ("/interfaces/0/addresses/0", "fe80::1%eth0/64"),
        ("/routes/0/destination", "default"),
        ("/routes/0/destination", "0.0.0.0"),
        ("/routes/0/gateway", "172.17.0.1/16"),
        ("/routes/0/gateway", "02:42:ac:11:00:02"),
        ("/routes/0/gateway", ""),
    ] {
        let mut msg = messages_tagged(&["start_container"]).remove(0);
        *msg.pointer_mut(path).unwrap() = json!(text);
        let got = serde_json::from_value::<HostMessage>(msg);
        assert!(got.is_err(), "{text:?} at {path} was taken: {got:?}");
    }
    let valid = messages_tagged(&["start_container"]).remove(0);
    assert!(serde_json::from_value::<HostMessage>(valid).is_ok());
}

#[test]
fn a_prefix_claiming_4_gib_allocates_nothing() {
    for len in [MAX_FRAME as u32 + 1, 1 << 31, u32::MAX] {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{\"type\":\"shutdown\"}");
        for_each_message_type(&bytes, |got, peak| {
            assert!(matches!(got, Outcome::TooLarge), "{len}: {got:?}");
            assert!(peak < 64 * 1024, "{len}: {peak} bytes allocated");
        });
    }
}

#[test]
fn a_frame_at_the_limit_is_read_and_one_past_it_is_not() {
    // A frame of exactly MAX_FRAME bytes: a message with a long string.
    let mut body = br#"{"type":"setup_failed","message":""#.to_vec();
    let padding = MAX_FRAME - body.len() - 2;
    body.extend(vec![b'x'; padding]);
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), MAX_FRAME);
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let rt = runtime();
    let (got, peak) =
        peak_allocation(|| rt.block_on(read_frame::<_, GuestMessage>(&mut bytes.as_slice())));
    match got {
        Ok(GuestMessage::SetupFailed { message, .. }) => assert_eq!(message.len(), padding),
        other => panic!("a frame at the limit is refused: {other:?}"),
    }
    assert!(
        // Bodies are read as they arrive (a lying length prefix allocates
        // nothing up front), so a full frame costs a few times its size.
        peak <= 4 * MAX_FRAME,
        "{peak} bytes allocated for a {MAX_FRAME}-byte frame"
    );
    let mut over = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
    over.extend_from_slice(&body);
    over.push(b' ');
    let got = rt.block_on(read_frame::<_, GuestMessage>(&mut over.as_slice()));
    assert!(matches!(outcome(got), Outcome::TooLarge));
}

#[test]
fn deep_nesting_is_a_decode_error_not_a_stack_overflow() {
    for object in [false, true] {
        let body = format!(
            "{{\"type\":\"exec\",\"args\":{}}}",
            deeply_nested(200_000, object)
        );
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        for_each_message_type(&bytes, |got, _| {
            assert!(matches!(got, Outcome::Decode), "{got:?}");
        });
    }
}

/// Reads `bytes` as each message type; calls `check` with the outcome
/// (message dropped) and the peak allocation.
fn for_each_message_type(bytes: &[u8], check: impl Fn(Outcome<()>, usize)) {
    fn read<M: DeserializeOwned>(
        rt: &tokio::runtime::Runtime,
        bytes: &[u8],
    ) -> (Outcome<()>, usize) {
        let (got, peak) =
            peak_allocation(|| rt.block_on(read_frame::<_, M>(&mut &bytes[..])).map(|_| ()));
        (outcome(got), peak)
    }
    let rt = runtime();
    for (got, peak) in [
        read::<StreamHeader>(&rt, bytes),
        read::<HostMessage>(&rt, bytes),
        read::<GuestMessage>(&rt, bytes),
    ] {
        check(got, peak);
    }
}

// ---------------------------------------------------------------------------
// The yamux session, fed by a hostile peer
// ---------------------------------------------------------------------------

/// A yamux frame header, possibly invalid, and a body.
fn yamux_frame() -> impl Strategy<Value = Vec<u8>> {
    // Mostly well-formed frames (one bad header ends the session at once):
    // data and window updates on a few streams, some pings, rare go-aways.
    let version = prop_oneof![30 => Just(0u8), 1 => any::<u8>()];
    let kind = prop_oneof![
        10 => Just(0u8),
        6 => Just(1u8),
        2 => Just(2u8),
        1 => Just(3u8),
        1 => any::<u8>(),
    ];
    // SYN 1, ACK 2, FIN 4, RST 8, and combinations.
    let flags = prop_oneof![4 => Just(1u16), 4 => 0u16..16, 1 => any::<u16>()];
    let stream = prop_oneof![8 => 0u32..8, 1 => any::<u32>()];
    (
        version,
        kind,
        flags,
        stream,
        prop::collection::vec(any::<u8>(), 0..1024),
        prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
    )
        .prop_map(|(version, kind, flags, stream, body, length)| {
            // Data frames carry their body; the others' length field is a
            // window credit, ping value or go-away code.
            let is_data = kind == 0;
            let length = length.unwrap_or(if is_data {
                body.len() as u32
            } else {
                256 * 1024
            });
            let mut f = vec![version, kind];
            f.extend_from_slice(&flags.to_be_bytes());
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(&length.to_be_bytes());
            if is_data {
                f.extend_from_slice(&body);
            }
            f
        })
}

fn yamux_garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..4096),
        3 => (prop::collection::vec(yamux_frame(), 0..24), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(frames, tail)| {
                let mut b = frames.concat();
                b.extend_from_slice(&tail);
                b
            }),
    ]
}

/// How a session fed `garbage` ended.
struct SessionEnd {
    /// Streams the peer managed to open.
    inbound: usize,
    /// Bytes those streams delivered, read after the end.
    delivered: usize,
    /// Whether opening a stream still worked afterwards (it must not).
    open_after_end: bool,
    peak: usize,
    panicked: bool,
}

/// Starts a session in `mode` on one end of a pipe, writes `garbage` into
/// the other end (closing it afterwards if `close`), drains whatever the
/// session writes back, and waits up to `limit` for the session to end,
/// holding every stream the peer opens (as the supervisor does).
fn feed_session(mode: Mode, garbage: Vec<u8>, close: bool, limit: Duration) -> Option<SessionEnd> {
    note_panics();
    let rt = runtime();
    let (ended, peak) = peak_allocation(|| {
        rt.block_on(async move {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (mux, mut inbound) = Mux::start(ours, mode);
            let (mut from_session, mut to_session) = tokio::io::split(theirs);
            let drain = tokio::spawn(async move {
                let mut sink = [0u8; 8192];
                while matches!(from_session.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            let writer = tokio::spawn(async move {
                // The session may end before everything is written.
                let _ = to_session.write_all(&garbage).await;
                if close {
                    let _ = to_session.shutdown().await;
                } else {
                    std::future::pending::<()>().await;
                }
            });
            // The session has ended when it lets go of its transport (the
            // drain then sees the end of it). The host's (client) side hands
            // out no inbound streams at all: its channel closes at once.
            let mut held = Vec::new();
            let mut drain = drain;
            let ended = tokio::time::timeout(limit, async {
                let mut inbound_open = true;
                loop {
                    tokio::select! {
                        s = inbound.recv(), if inbound_open => match s {
                            Some(s) => held.push(s),
                            None => inbound_open = false,
                        },
                        _ = &mut drain => break,
                    }
                }
                while let Ok(s) = inbound.try_recv() {
                    held.push(s);
                }
            })
            .await
            .is_ok();
            writer.abort();
            if !ended {
                return None;
            }
            let open_after_end = mux.open().await.is_ok();
            let mut delivered = 0;
            for s in &mut held {
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
                delivered += buf.len();
            }
            let inbound = held.len();
            drop(held);
            drop(mux);
            Some((inbound, delivered, open_after_end))
        })
    });
    let (inbound, delivered, open_after_end) = ended?;
    Some(SessionEnd {
        inbound,
        delivered,
        open_after_end,
        peak,
        panicked: panicked(),
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the peer sends before it closes the channel, the session
    /// ends, without panicking and within a bounded allocation.
    #[test]
    fn yamux_session_ends_on_any_bytes(garbage in yamux_garbage(), client in any::<bool>()) {
        let mode = if client { Mode::Client } else { Mode::Server };
        let sent = garbage.len();
        let end = feed_session(mode, garbage, true, Duration::from_secs(10));
        let Some(end) = end else {
            return Err(TestCaseError::fail("the session did not end within 10 s of the peer closing"));
        };
        prop_assert!(!end.panicked, "the session task panicked");
        prop_assert!(!end.open_after_end, "a stream opened on an ended session");
        // The host (client) hands out no stream the guest opens; the agent
        // (server) at most its limit.
        let cap = if client { 0 } else { SERVER_MAX_STREAMS };
        prop_assert!(end.inbound <= cap, "{} inbound streams", end.inbound);
        prop_assert!(end.delivered <= sent);
        prop_assert!(end.peak < 16 * 1024 * 1024 + 64 * sent, "{} bytes allocated for {} bytes of input", end.peak, sent);
    }

    /// A frame header with a version yamux does not know is a protocol
    /// error: the session ends at once, without waiting for the peer to
    /// close.
    #[test]
    fn yamux_session_ends_on_a_bad_version_without_eof(
        version in 1u8..,
        rest in prop::collection::vec(any::<u8>(), 11..512),
        client in any::<bool>(),
    ) {
        let mode = if client { Mode::Client } else { Mode::Server };
        let mut garbage = vec![version];
        garbage.extend_from_slice(&rest);
        let end = feed_session(mode, garbage, false, Duration::from_secs(10));
        let Some(end) = end else {
            return Err(TestCaseError::fail("the session ignored a bad header"));
        };
        prop_assert!(!end.panicked, "the session task panicked");
        prop_assert!(!end.open_after_end);
        prop_assert_eq!(end.inbound, 0);
    }
}

/// yamux frame bytes: header (version 0) and body.
fn frame(kind: u8, flags: u16, stream: u32, length: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0, kind];
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&length.to_be_bytes());
    f.extend_from_slice(body);
    f
}

// On a protocol violation (a stream beyond the limit, data beyond the
// window) yamux 0.13 answers with a go-away frame and refuses the offending
// frame, but keeps reading until the peer closes the session: what must
// hold is that the excess is never accepted or buffered.

#[test]
fn a_peer_opening_streams_without_end_is_refused_past_the_limit() {
    // The guest opens stream after stream (window-update frames with SYN,
    // even ids as the server side uses) and never reads.
    let mut garbage = Vec::new();
    for i in 0..2000u32 {
        garbage.extend(frame(1, 1, 2 * i + 2, 0, &[]));
    }
    // The host (client) side resets every stream the guest opens.
    let end = feed_session(Mode::Client, garbage.clone(), true, Duration::from_secs(30))
        .expect("the session ends when the peer closes");
    assert!(!end.panicked);
    assert_eq!(end.inbound, 0, "the host accepts no stream from the guest");
    assert!(end.peak < 64 * 1024 * 1024, "{} bytes allocated", end.peak);
    // The agent (server) side holds exactly its limit and refuses every
    // stream past it (odd ids, as a client opens them).
    let mut garbage = Vec::new();
    for i in 0..2000u32 {
        garbage.extend(frame(1, 1, 2 * i + 1, 0, &[]));
    }
    let end = feed_session(Mode::Server, garbage, true, Duration::from_secs(20))
        .expect("the session ends when the peer closes");
    assert!(!end.panicked);
    assert!(!end.open_after_end);
    assert_eq!(end.inbound, SERVER_MAX_STREAMS, "the server's stream limit");
    assert!(end.peak < 64 * 1024 * 1024, "{} bytes allocated", end.peak);
}

#[test]
fn a_peer_overrunning_its_window_is_refused() {
    // One stream, then 16 MiB of data that nobody reads: yamux's window is
    // 256 KiB, so the session must refuse the excess, not buffer it.
    let overrun = |id: u32| {
        let mut garbage = frame(0, 1, id, 0, &[]);
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..256 {
            garbage.extend(frame(0, 0, id, chunk.len() as u32, &chunk));
        }
        garbage
    };
    // The host (client) resets the stream at once: the data is dropped.
    let end = feed_session(Mode::Client, overrun(2), true, Duration::from_secs(20))
        .expect("the session ends when the peer closes");
    assert!(!end.panicked);
    assert_eq!(end.inbound, 0);
    assert_eq!(end.delivered, 0);
    assert!(end.peak < 8 * 1024 * 1024, "{} bytes allocated", end.peak);
    // The agent (server) keeps the stream and refuses every frame past its
    // window.
    let end = feed_session(Mode::Server, overrun(1), true, Duration::from_secs(20))
        .expect("the session ends when the peer closes");
    assert!(!end.panicked);
    assert!(!end.open_after_end);
    assert_eq!(end.inbound, 1);
    assert_eq!(end.delivered, 256 * 1024, "exactly one window is delivered");
    assert!(end.peak < 8 * 1024 * 1024, "{} bytes allocated", end.peak);
}

#[test]
fn a_yamux_session_on_a_socketpair_ends_on_garbage() {
    // The real transport (a non-blocking fd under tokio's reactor), on a
    // multi-thread runtime as in the supervisor.
    use runvm_protocol::session::FdStream;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    rt.block_on(async move {
        let (mux, mut inbound) =
            Mux::start(FdStream::new(OwnedFd::from(ours)).unwrap(), Mode::Client);
        theirs.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // The session ends: the peer sees its end of the socket close.
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut theirs, &mut sink) {
                // Closed, or closed with our garbage unread.
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Ok(_) => {}
                Err(e) => panic!("the session did not end on garbage: {e}"),
            }
        }
        assert!(inbound.recv().await.is_none(), "garbage opened a stream");
        assert!(mux.open().await.is_err());
        drop(theirs);
    });
}
