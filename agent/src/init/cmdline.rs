//! The agent's options on the kernel command line (`ampoule.*=`).

use tracing::Level;

/// What the kernel command line asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// `ampoule.log=error|warn|info|debug|trace` (default info).
    pub log_level: Level,
    /// `ampoule.ready_port=N`: host port for the readiness connection.
    pub ready_port: u32,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            log_level: Level::INFO,
            ready_port: ampoule_agent_api::READY_PORT,
        }
    }
}

impl AgentOptions {
    /// Parses `/proc/cmdline`; unknown or malformed values keep the default.
    pub fn parse(cmdline: &str) -> AgentOptions {
        let mut opts = AgentOptions::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "ampoule.log" => {
                    if let Some(level) = parse_level(value) {
                        opts.log_level = level;
                    }
                }
                "ampoule.ready_port" => {
                    if let Ok(port) = value.parse() {
                        opts.ready_port = port;
                    }
                }
                _ => {}
            }
        }
        opts
    }
}

fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" | "warning" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_is_read_from_ampoule_log() {
        let o = AgentOptions::parse("console=ttyS0 quiet ampoule.log=debug panic=-1\n");
        assert_eq!(o.log_level, Level::DEBUG);
    }

    #[test]
    fn missing_or_bad_log_level_defaults_to_info() {
        assert_eq!(AgentOptions::parse("quiet").log_level, Level::INFO);
        assert_eq!(
            AgentOptions::parse("ampoule.log=loud").log_level,
            Level::INFO
        );
        assert_eq!(AgentOptions::parse("ampoule.log").log_level, Level::INFO);
    }

    #[test]
    fn ready_port_can_be_overridden_and_garbage_is_ignored() {
        assert_eq!(
            AgentOptions::parse("ampoule.ready_port=2000").ready_port,
            2000
        );
        assert_eq!(
            AgentOptions::parse("ampoule.ready_port=x").ready_port,
            ampoule_agent_api::READY_PORT
        );
    }
}
