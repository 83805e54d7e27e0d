//! The log of the supervisor and of the guest agent, through `tracing`.
//!
//! Both write to their standard error, which the user reads: the
//! supervisor's is the container's (`docker logs`), the agent's is the
//! guest console. So entries are plain lines, `<program>: <message>`, the
//! way the messages read without tracing; debug entries (marked `debug:`)
//! appear only once debugging is switched on (`RUNVM_DEBUG=1`), which may
//! happen after the first entries, when the settings have been read.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

static DEBUG: AtomicBool = AtomicBool::new(false);

/// The text of an event: its message, then its other fields as
/// ` key=value`. Shared with the runtime's logrus-style log.
pub fn event_text(event: &Event<'_>) -> String {
    let mut m = Message::default();
    event.record(&mut m);
    m.0 + &m.1
}

#[derive(Default)]
struct Message(String, String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }
}

/// An event format of one line per event: `write_line(writer, level,
/// text)` writes it, `text` being [`event_text`]. The supervisor's and the
/// agent's plain lines and the runtime's logrus entries are two of these.
pub struct Lines<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Lines<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: Fn(&mut Writer<'_>, Level, &str) -> fmt::Result,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        (self.0)(&mut writer, *event.metadata().level(), &event_text(event))
    }
}

/// Lines `<program>: <message>`; debug entries `<program>: debug: …`.
fn plain(program: &'static str) -> Lines<impl Fn(&mut Writer<'_>, Level, &str) -> fmt::Result> {
    Lines(move |writer: &mut Writer<'_>, level: Level, text: &str| {
        let mark = match level {
            Level::DEBUG | Level::TRACE => "debug: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        writeln!(writer, "{program}: {mark}{text}")
    })
}

/// Installs the logger of `program` (the prefix of every line), writing
/// to standard error. Errors, warnings and information always show; debug
/// entries once [`set_debug`] has switched them on.
pub fn init(program: &'static str) {
    let layer = tracing_subscriber::fmt::layer()
        .event_format(plain(program))
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(|meta| {
            *meta.level() <= Level::INFO || DEBUG.load(Ordering::Relaxed)
        }));
    // A second init (tests) keeps the first logger.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    tracing::callsite::rebuild_interest_cache();
}

/// Switches debug entries on or off.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
    // Callsites cache whether they are enabled: ask again.
    tracing::callsite::rebuild_interest_cache();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_read_as_the_messages_did_and_debug_is_marked() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(plain("runvm"))
            .with_max_level(Level::DEBUG)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("the VM stopped: {}", "QEMU exited");
            tracing::warn!("slow");
            tracing::debug!(streams = 3, "session ended");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "runvm: the VM stopped: QEMU exited\nrunvm: warning: slow\nrunvm: debug: session ended streams=3\n"
        );
    }
}
