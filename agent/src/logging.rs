//! Logging to the console (fd 2, which PID 1 points at /dev/console), each
//! line stamped with the guest's uptime so boot timing can be read off it.

use tracing::Level;
use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

struct Uptime;

impl FormatTime for Uptime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let ms = crate::sysinfo::uptime_ms();
        write!(w, "[{:>5}.{:03}]", ms / 1000, ms % 1000)
    }
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(level: Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_timer(Uptime)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
