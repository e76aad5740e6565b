//! Logging for the CLI: text, or JSON lines shaped as runc writes them
//! (`{"level":"error","msg":"...","time":"..."}`), to stderr or `--log`.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where `error()` writes when a log file is set (besides stderr).
static LOG_FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();

/// runc-style JSON lines.
struct RuncJson;

#[derive(Default)]
struct Fields {
    msg: String,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra.insert(field.name().into(), value.into());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.msg = v;
        } else {
            self.extra.insert(field.name().into(), v.into());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.extra.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.extra.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.extra.insert(field.name().into(), value.into());
    }
}

/// One runc-style JSON log line.
pub fn json_line(
    level: &str,
    msg: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut m = extra;
    m.insert("level".into(), level.into());
    m.insert("msg".into(), msg.into());
    m.insert("time".into(), ampoule_runtime::state::now_rfc3339().into());
    serde_json::Value::Object(m).to_string()
}

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(w, "{}", json_line(&level, &f.msg, f.extra))
    }
}

/// The filter for `level`. Below debug, ttrpc's connection task is quiet: it
/// logs an error when the CLI exits with a client still connected (its
/// writer task is cancelled with the runtime), which is not an error of
/// ours; a connection that really fails surfaces as the call's error.
fn directives(level: &str) -> String {
    if matches!(level, "debug" | "trace") {
        level.to_string()
    } else {
        format!("{level},ttrpc::asynchronous::connection=off")
    }
}

/// Installs the global subscriber.
pub fn init(file: Option<&Path>, format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(directives(level))
        .with_context(|| format!("bad log level {level:?}"))?;
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?;
            let _ = LOG_FILE.set(f.try_clone().ok().map(Mutex::new));
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let _ = FORMAT.set(format);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => b.with_target(false).try_init(),
        LogFormat::Json => b.event_format(RuncJson).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Reports an error: to the log (if any, in its format) and to stderr.
pub fn error(msg: &str) {
    if let Some(Some(f)) = LOG_FILE.get() {
        if let Ok(mut f) = f.lock() {
            let line = match FORMAT.get() {
                Some(LogFormat::Json) => json_line("error", msg, Default::default()),
                _ => format!("{} ERROR {msg}", ampoule_runtime::state::now_rfc3339()),
            };
            let _ = writeln!(f, "{line}");
        }
    }
    match FORMAT.get() {
        Some(LogFormat::Json) if LOG_FILE.get().is_none_or(|f| f.is_none()) => {
            eprintln!("{}", json_line("error", msg, Default::default()))
        }
        _ => eprintln!("ampoule: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttrpc_connection_noise_is_filtered_below_debug_and_kept_at_debug() {
        for level in ["error", "warn", "info"] {
            let d = directives(level);
            assert!(d.contains("ttrpc::asynchronous::connection=off"), "{d}");
            assert!(EnvFilter::try_new(&d).is_ok(), "{d}");
        }
        assert_eq!(directives("debug"), "debug");
        assert_eq!(directives("trace"), "trace");
    }
}
