//! The control socket's line protocol: any line gets exactly one JSON
//! answer line, and only well-formed commands reach the VMM.
#![no_main]

use std::path::Path;

use ampoule_vmm::api::{handle_line, parse_command, Command, Controller};
use libfuzzer_sys::fuzz_target;

/// Records nothing and answers like an empty VM: the harness only checks
/// the protocol around it.
struct Idle;

impl Controller for Idle {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"state": "running"})
    }
    fn shutdown(&self, _deadline_ms: Option<u64>) {}
    fn fill_slot(&self, id: &str, _path: &Path, _read_only: bool) -> Result<(), String> {
        Err(format!("no drive slot {id:?}"))
    }
    fn empty_slot(&self, id: &str) -> Result<(), String> {
        Err(format!("no drive slot {id:?}"))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let reply = handle_line(&Idle, line);
    assert!(reply.ends_with('\n'));
    assert_eq!(reply.matches('\n').count(), 1, "one answer line");
    let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON answer");
    let parsed = parse_command(line);
    assert_eq!(
        v["ok"].as_bool() == Some(true),
        matches!(parsed, Ok(Command::Status | Command::Shutdown { .. }))
    );
});
