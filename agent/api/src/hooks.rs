//! What the host's and the guest's runners of OCI hooks share: the checks
//! on a hook from a spec, and how a hook's end and output are told.

use std::process::ExitStatus;

/// Checks `hook` as the runtime spec requires (an absolute path,
/// `KEY=VALUE` environment entries, a timeout over zero) and returns its
/// timeout in seconds, if it has one; the reason otherwise.
pub fn check(hook: &oci_spec::runtime::Hook) -> Result<Option<u64>, String> {
    if !hook.path().is_absolute() {
        return Err("the path must be absolute".into());
    }
    if let Some(bad) = hook.env().iter().flatten().find(|e| !e.contains('=')) {
        return Err(format!("env entry {bad:?} is not KEY=VALUE"));
    }
    match hook.timeout() {
        None => Ok(None),
        Some(t) if t > 0 => Ok(Some(t as u64)),
        Some(t) => Err(format!("timeout must be greater than zero, not {t}")),
    }
}

/// How a hook ended, for an error message.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// A hook's output for the end of an error message: `": <output>"`, or
/// nothing when it wrote nothing.
pub fn show_output(output: &str) -> String {
    let o = output.trim_end();
    if o.is_empty() {
        String::new()
    } else {
        format!(": {o}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> oci_spec::runtime::Hook {
        serde_json::from_str(json).expect("hook")
    }

    #[test]
    fn a_hook_needs_an_absolute_path_key_value_env_and_a_positive_timeout() {
        assert_eq!(check(&hook(r#"{"path": "/bin/true"}"#)), Ok(None));
        assert_eq!(
            check(&hook(
                r#"{"path": "/bin/true", "timeout": 5, "env": ["A=1"]}"#
            )),
            Ok(Some(5))
        );
        assert!(check(&hook(r#"{"path": "bin/true"}"#)).is_err());
        assert!(check(&hook(r#"{"path": "/bin/true", "env": ["A"]}"#)).is_err());
        assert!(check(&hook(r#"{"path": "/bin/true", "timeout": 0}"#)).is_err());
        assert_eq!(show_output(" \n"), "");
        assert_eq!(show_output("boom\n"), ": boom");
    }
}
