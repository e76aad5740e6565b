//! The host's OCI hooks in the CLI's lifecycle ([`oci_hooks`] runs them):
//! which kinds run after which command, with which state, and where a
//! container's later hooks are kept.
//!
//! `create` runs `prestart` and `createRuntime` from the bundle's spec and
//! keeps `poststart` and `poststop` in the container's state directory
//! (`hooks.json`, beside `state.json`), so that `start` and `delete` run
//! them as they were at create time, as runc does, whatever happens to the
//! bundle later. Every hook gets the state `ampoule state` prints at that
//! moment (`delete`: the last state, as stopped) and the bundle as its
//! working directory.

use std::path::Path;

use ampoule_runtime::oci_hooks::{self, HookError, HostHook};
use ampoule_runtime::state::{effective_status, ContainerState, Status, Store};
use anyhow::Context;
use oci_spec::runtime::Hooks;

/// The file in a container's state directory with its later hooks.
const HOOKS_FILE: &str = "hooks.json";

/// Keeps the hooks that `start` and `delete` run (poststart, poststop)
/// in the container's state directory; nothing when there are none.
pub fn save(store: &Store, id: &str, spec: Option<&Hooks>) -> anyhow::Result<()> {
    let Some(spec) = spec else {
        return Ok(());
    };
    let mut later = Hooks::default();
    later.set_poststart(spec.poststart().clone());
    later.set_poststop(spec.poststop().clone());
    if HostHook::Poststart.of(&later).is_empty() && HostHook::Poststop.of(&later).is_empty() {
        return Ok(());
    }
    let dir = store.dir(id);
    let tmp = dir.join(format!(".{HOOKS_FILE}.tmp"));
    let path = dir.join(HOOKS_FILE);
    let data = serde_json::to_vec_pretty(&later)?;
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// The hooks kept by [`save`]: none when there is no file; an unreadable
/// file is logged and gives none (it must not stop a delete).
pub fn load(store: &Store, id: &str) -> Hooks {
    let path = store.dir(id).join(HOOKS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Hooks::default(),
        Err(e) => {
            tracing::warn!(container = id, path = %path.display(), error = %e, "cannot read the container's hooks; none run");
            return Hooks::default();
        }
    };
    serde_json::from_slice(&text).unwrap_or_else(|e| {
        tracing::warn!(container = id, path = %path.display(), error = %e, "invalid hooks file; no hook runs");
        Hooks::default()
    })
}

/// `create`'s hooks (prestart, then createRuntime), once the container
/// exists in the guest. An error fails the create: the caller tears the
/// container down.
pub async fn at_create(store: &Store, id: &str, spec: Option<&Hooks>) -> anyhow::Result<()> {
    let Some(spec) = spec else {
        return Ok(());
    };
    if HostHook::AT_CREATE.iter().all(|k| k.of(spec).is_empty()) {
        return Ok(());
    }
    let s = store.load(id)?;
    let state = s.to_oci(effective_status(&s));
    for kind in HostHook::AT_CREATE {
        oci_hooks::run(kind, kind.of(spec), &state, bundle_dir(&s))
            .await
            .map_err(HookFailed)?;
    }
    Ok(())
}

/// `start`'s poststart hooks (`hooks`: [`load`]ed, or the spec's for a
/// `run`), once the process started: failures are warnings (logged by
/// [`oci_hooks::run`]).
pub async fn after_start(store: &Store, id: &str, hooks: &Hooks) {
    if HostHook::Poststart.of(hooks).is_empty() {
        return;
    }
    let s = match store.load(id) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(container = id, error = %e, "poststart hooks not run: no state");
            return;
        }
    };
    warn_only(HostHook::Poststart, hooks, &s, effective_status(&s)).await;
}

/// `delete`'s poststop hooks, once the container (`last`, its state before
/// the delete, and `hooks`, read before its directory went) is deleted:
/// failures are warnings.
pub async fn after_delete(last: &ContainerState, hooks: &Hooks) {
    warn_only(HostHook::Poststop, hooks, last, Status::Stopped).await;
}

async fn warn_only(kind: HostHook, hooks: &Hooks, s: &ContainerState, status: Status) {
    let list = kind.of(hooks);
    if list.is_empty() {
        return;
    }
    // Failures of these kinds come back as warnings, already logged.
    if let Err(e) = oci_hooks::run(kind, list, &s.to_oci(status), bundle_dir(s)).await {
        tracing::warn!(container = %s.id, error = %e, "{} hooks not run", kind.name());
    }
}

/// The bundle, the hooks' working directory; `/` when it is gone (a
/// poststop hook still runs after the engine removed the bundle).
fn bundle_dir(s: &ContainerState) -> &Path {
    if s.bundle.is_dir() {
        &s.bundle
    } else {
        Path::new("/")
    }
}

/// A hook that failed a create (its own exit status).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HookFailed(#[from] pub HookError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_later_hooks_are_kept_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        store.create_dir("c").expect("dir");
        let spec: Hooks = serde_json::from_str(
            r#"{"prestart":[{"path":"/pre"}],"createRuntime":[{"path":"/cr"}],
                "poststart":[{"path":"/ps","args":["ps","1"],"env":["A=1"],"timeout":3}],
                "poststop":[{"path":"/pst"}]}"#,
        )
        .expect("hooks");
        save(&store, "c", Some(&spec)).expect("save");
        let back = load(&store, "c");
        assert_eq!(back.poststart(), spec.poststart());
        assert_eq!(back.poststop(), spec.poststop());
        assert!(HostHook::Prestart.of(&back).is_empty());
        assert!(HostHook::CreateRuntime.of(&back).is_empty());
    }

    #[test]
    fn no_later_hooks_no_file_and_a_bad_file_runs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        store.create_dir("c").expect("dir");
        let spec: Hooks =
            serde_json::from_str(r#"{"createRuntime":[{"path":"/cr"}]}"#).expect("hooks");
        save(&store, "c", Some(&spec)).expect("save");
        save(&store, "c", None).expect("save");
        assert!(!store.dir("c").join(HOOKS_FILE).exists());
        assert_eq!(load(&store, "c"), Hooks::default());
        std::fs::write(store.dir("c").join(HOOKS_FILE), "{not json").expect("write");
        assert_eq!(load(&store, "c"), Hooks::default());
    }
}
