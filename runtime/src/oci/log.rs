//! The runtime's log: stderr or `--log FILE`, as text or as the JSON lines
//! containerd and conmon read back (`{"level":..,"msg":..,"time":..}`; on
//! a failed command they show the last error line's msg).

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use super::cli::LogFormat;

/// Formats an event as one JSON object: level, msg (the message followed by
/// its fields as key=value), time.
struct JsonLines;

#[derive(Default)]
struct Message {
    msg: String,
    fields: Vec<String>,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.fields.push(format!("{}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.fields.push(format!("{}={value}", field.name()));
        }
    }
}

pub fn json_line(level: &str, msg: &str) -> String {
    serde_json::json!({
        "level": level,
        "msg": msg,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    })
    .to_string()
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        let mut msg = message.msg;
        for field in message.fields {
            msg.push(' ');
            msg.push_str(&field);
        }
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(writer, "{}", json_line(&level, &msg))
    }
}

/// Installs the global subscriber. `level` is an EnvFilter directive
/// (info, debug, kata_rs=trace, ...).
pub fn init(path: Option<&Path>, format: LogFormat, level: &str) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match path {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let file = std::sync::Arc::new(Mutex::new(file));
            Box::new(move || Box::new(SharedFile(file.clone())))
        }
        None => Box::new(|| Box::new(std::io::stderr())),
    };
    let result = match format {
        LogFormat::Json => builder
            .event_format(JsonLines)
            .with_writer(writer)
            .try_init(),
        LogFormat::Text => builder.with_writer(writer).try_init(),
    };
    result.map_err(|e| std::io::Error::other(e.to_string()))
}

struct SharedFile(std::sync::Arc<Mutex<std::fs::File>>);

impl std::io::Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::io::Write::write_all(&mut *file, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_level_msg_and_time() {
        let line = json_line("error", "container x does not exist");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container x does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
