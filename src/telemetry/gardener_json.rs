//! JSON log lines in the shape Gardener's components write, so Gardener's log pipeline
//! (and anyone grepping a seed's logs) reads ours like MCM's and gardenlet's.
//!
//! Gardener logs through zap's production JSON encoder (`gardener/gardener`
//! `pkg/logger/zap.go`, with the ISO 8601 time encoder): one object per line whose fixed keys
//! are `level` (lowercase), `ts` (ISO 8601 with milliseconds), `logger` (the logger's name)
//! and `msg`, followed by the structured fields at the top level. Here `logger` is the
//! event's module path, the fields are the event's own, preceded by those of its enclosing
//! spans (so `machine`, `rpc.method` appear on every line of a reconcile or an RPC).
//!
//! zap has no trace level; trace events are written as `debug`, like logr's V(2+) lines that
//! zap prints below debug.

use std::fmt;

use serde_json::Value;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

/// The event formatter (pair it with `tracing_subscriber::fmt::format::JsonFields`, which
/// keeps each span's fields as a JSON object).
#[derive(Debug, Default, Clone, Copy)]
pub struct GardenerJson;

/// zap's lowercase level names.
pub fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG | Level::TRACE => "debug",
    }
}

/// The four keys every line starts with; a field of the same name is written as
/// `fields.<name>` rather than overwrite them.
const FIXED: [&str; 4] = ["level", "ts", "logger", "msg"];

impl<S, N> FormatEvent<S, N> for GardenerJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted.as_str()) {
                    for (key, value) in map {
                        fields.insert(key, value);
                    }
                }
            }
        }
        event.record(&mut fields);

        let meta = event.metadata();
        // Events forwarded from the `log` crate carry their real target as a field.
        let logger = fields
            .log_target
            .take()
            .unwrap_or_else(|| meta.target().into());
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let message = fields.message.take().unwrap_or_default();
        // Written key by key: the fixed keys first, in zap's order, then the fields.
        let json = |v: &dyn erased::Json| v.to_json().map_err(|_| fmt::Error);
        write!(
            writer,
            "{{\"level\":\"{}\",\"ts\":{},\"logger\":{},\"msg\":{}",
            level_name(meta.level()),
            json(&ts)?,
            json(&logger)?,
            json(&message)?,
        )?;
        for (key, value) in &fields.map {
            let key = if FIXED.contains(&key.as_str()) {
                format!("fields.{key}")
            } else {
                key.clone()
            };
            write!(writer, ",{}:{}", json(&key)?, json(value)?)?;
        }
        writeln!(writer, "}}")
    }
}

mod erased {
    /// Anything serde can write as JSON text.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }

    impl<T: serde::Serialize + ?Sized> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

/// Collects an event's fields as JSON values, in the order they were recorded (span
/// fields from the outermost span in, then the event's; a later value of a key wins in
/// place).
#[derive(Default)]
struct Fields {
    message: Option<String>,
    log_target: Option<String>,
    map: Vec<(String, Value)>,
}

impl Fields {
    fn insert(&mut self, key: String, value: Value) {
        match self.map.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.map.push((key, value)),
        }
    }

    fn record(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            // The rest of the `log` crate's bookkeeping (module path, file, line).
            name if name.starts_with("log.") => {}
            name => self.insert(name.to_owned(), value),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use serde_json::Value;
    use tracing_subscriber::{fmt, fmt::format::JsonFields, prelude::*};

    use super::GardenerJson;

    /// A writer into a shared buffer, for capturing a subscriber's output.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Each line as written, and parsed.
    fn capture(body: impl FnOnce()) -> Vec<(String, Value)> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(GardenerJson)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, body);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                (l.to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn lines_have_gardeners_keys_and_flat_fields() {
        let lines = capture(|| {
            let span = tracing::info_span!("reconcile", machine = "worker-0");
            let _entered = span.enter();
            tracing::info!(
                attempt = 3,
                ok = true,
                code = "Unavailable",
                "create failed"
            );
            tracing::trace!("deep detail");
            tracing::warn!(error = %std::io::Error::other("boom"), "retrying");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");

        let (raw, first) = &lines[0];
        let at = |key: &str| raw.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
        assert!(raw.starts_with(r#"{"level":"info","ts":""#), "{raw}");
        assert!(
            at("ts") < at("logger") && at("logger") < at("msg") && at("msg") < at("attempt"),
            "zap's key order, then the fields: {raw}"
        );
        assert_eq!(first["level"], "info");
        assert_eq!(first["msg"], "create failed");
        assert_eq!(first["logger"], module_path!());
        assert_eq!(first["attempt"], 3);
        assert_eq!(first["ok"], true);
        assert_eq!(first["code"], "Unavailable");
        assert_eq!(first["machine"], "worker-0", "span fields are on the line");
        let ts = first["ts"].as_str().unwrap();
        humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts:?}: {e}"));
        assert!(
            ts.len() == "2026-01-02T03:04:05.678Z".len() && ts.ends_with('Z'),
            "ISO 8601 with milliseconds, UTC: {ts}"
        );

        assert_eq!(lines[1].1["level"], "debug", "zap has no trace level");
        assert_eq!(lines[2].1["level"], "warn");
        assert_eq!(lines[2].1["error"], "boom");
    }

    #[test]
    fn a_field_named_like_a_fixed_key_does_not_replace_it() {
        let lines = capture(|| tracing::info!(level = "custom", msg = "field", "the message"));
        let line = &lines[0].1;
        assert_eq!(line["level"], "info");
        assert_eq!(line["msg"], "the message");
        assert_eq!(line["fields.level"], "custom");
        assert_eq!(line["fields.msg"], "field");
    }
}
