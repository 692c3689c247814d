//! The agent's own log as a stream, for `GET /v1/logs` and `serf monitor`:
//! a tracing layer copies each log line into a broadcast channel, and only
//! while somebody listens (the layer's filter asks [`listening`] first, so
//! an agent nobody monitors formats nothing extra). Debug lines are
//! streamed even when the agent's own log is at info, as Serf's monitor
//! does; trace lines are not.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines a slow listener may fall behind by before it is told it lagged.
const BUFFER: usize = 1024;

/// One log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// RFC 3339 UTC.
    pub time: String,
    /// `TRACE` .. `ERROR`.
    pub level: &'static str,
    pub target: String,
    /// The message and its fields, `message key=value ...`.
    pub message: String,
    #[serde(skip)]
    pub severity: Level,
}

fn channel() -> &'static broadcast::Sender<Arc<LogLine>> {
    static CHANNEL: OnceLock<broadcast::Sender<Arc<LogLine>>> = OnceLock::new();
    CHANNEL.get_or_init(|| broadcast::channel(BUFFER).0)
}

/// Whether anybody listens (else the layer takes nothing).
pub fn listening() -> bool {
    channel().receiver_count() > 0
}

/// A receiver of the lines logged from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<LogLine>> {
    channel().subscribe()
}

/// The layer to add to the agent's subscriber.
pub fn layer<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>() -> impl Layer<S>
{
    let filter =
        tracing_subscriber::filter::filter_fn(|meta| *meta.level() <= Level::DEBUG && listening());
    StreamLayer.with_filter(filter)
}

struct StreamLayer;

impl<S: Subscriber> Layer<S> for StreamLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = FieldText::default();
        event.record(&mut text);
        let meta = event.metadata();
        let line = LogLine {
            time: crate::events::rfc3339_millis(crate::clock::now_millis()),
            level: meta.level().as_str(),
            target: meta.target().to_string(),
            message: text.0,
            severity: *meta.level(),
        };
        let _ = channel().send(Arc::new(line));
    }
}

/// `message key=value key=value`.
#[derive(Default)]
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value}", field.name());
        }
    }
}

/// A level name as `?level=` gives it (Serf's `err` too).
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "err" | "error" => Some(Level::ERROR),
        _ => None,
    }
}
