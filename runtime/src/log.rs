//! The runtime's log: stderr or `--log FILE`, in runc's two formats, so
//! that what reads runc's log reads ours: text as logrus writes it
//! (`time="..." level=error msg="..."`) and the JSON lines containerd and
//! conmon read back (`{"level":..,"msg":..,"time":..}`; on a failed command
//! they show the last error line's msg).

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The log's format, as runc's `--log-format` names it.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Formats an event as one line of `format`.
struct Lines(LogFormat);

#[derive(Default)]
struct Message {
    msg: String,
    fields: Vec<(String, String)>,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }
}

/// One log line in `format`. JSON has no room for fields beside msg, so
/// they follow the message as key=value.
pub fn line(format: LogFormat, level: &str, msg: &str, fields: &[(String, String)]) -> String {
    match format {
        LogFormat::Json => {
            let mut msg = msg.to_owned();
            for (key, value) in fields {
                msg.push_str(&format!(" {key}={value}"));
            }
            serde_json::json!({
                "level": level,
                "msg": msg,
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            })
            .to_string()
        }
        LogFormat::Text => {
            let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut line = format!(
                "time={} level={level} msg={}",
                logfmt_value(&time),
                logfmt_value(msg)
            );
            for (key, value) in fields {
                line.push_str(&format!(" {key}={}", logfmt_value(value)));
            }
            line
        }
    }
}

/// A value as logrus's text format writes it: bare where it is one plain
/// word, else quoted with Go's escapes.
fn logfmt_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<S, N> FormatEvent<S, N> for Lines
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
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(
            writer,
            "{}",
            line(self.0, &level, &message.msg, &message.fields)
        )
    }
}

/// Installs the global subscriber. `level` is an EnvFilter directive
/// (info, debug, kata_rs=trace, ...); it filters the log only, not the
/// engine's capture of why a container's init failed.
pub fn init(path: Option<&Path>, format: LogFormat, level: &str) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match path {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let file = std::sync::Arc::new(Mutex::new(file));
            Box::new(move || Box::new(SharedFile(file.clone())))
        }
        None => Box::new(|| Box::new(std::io::stderr())),
    };
    let log = tracing_subscriber::fmt::layer()
        .event_format(Lines(format))
        .with_writer(writer)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(log)
        .with(kata_rs_engine::init_cause::layer())
        .try_init()
        .map_err(|e| std::io::Error::other(e.to_string()))
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
        let line = line(LogFormat::Json, "error", "container x does not exist", &[]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container x does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_lines_are_logrus_lines() {
        let fields = [("id".to_owned(), "c1".to_owned())];
        let line = line(LogFormat::Text, "error", "say \"no\"\nplease", &fields);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(
            time.starts_with("time=\"") && time.ends_with("Z\""),
            "{line}"
        );
        assert_eq!(rest, r#"level=error msg="say \"no\"\nplease" id=c1"#);
    }
}
