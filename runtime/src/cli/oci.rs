//! runc's container commands that act on an existing container: start, state,
//! kill, delete, pause, resume, ps, list; and spec, features.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ampoule_runtime::container::parse_signal;
use ampoule_runtime::pod::guest::Guest;
use ampoule_runtime::state::{effective_status, process_start_time, ContainerState, Status};
use ampoule_runtime::text::escape_control;
use anyhow::Context;

use super::create::wrong_state;
use super::{Ctx, WrongState};

#[derive(clap::Args, Debug)]
pub struct IdArg {
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(long, short = 'a')]
    pub all: bool,
    pub id: String,
    /// Signal name (with or without SIG) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(long, short = 'f')]
    pub force: bool,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only the ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
}

#[derive(clap::Args, Debug)]
pub struct SpecArgs {
    /// Bundle directory to write config.json to.
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub rootless: bool,
}

fn monitor_alive(s: &ContainerState) -> bool {
    s.monitor_pid != 0 && process_start_time(s.monitor_pid) == Some(s.monitor_start_time)
}

async fn agent_of(s: &ContainerState) -> anyhow::Result<Guest> {
    Guest::connect(&s.vsock_uds, Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot reach the agent of container {}", s.id))
}

pub async fn start(ctx: &Ctx, id: &str) -> anyhow::Result<i32> {
    let store = ctx.store();
    let s = store.load(id)?;
    let status = effective_status(&s);
    if !status.can_start() {
        return Err(wrong_state(id, status, "start"));
    }
    let agent = agent_of(&s).await?;
    agent
        .start_container(id)
        .await
        .with_context(|| format!("start container {id:?}"))?;
    store.update(id, |s| {
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    })?;
    super::hooks::after_start(&store, id, &super::hooks::load(&store, id)).await;
    Ok(0)
}

pub fn state(ctx: &Ctx, id: &str) -> anyhow::Result<i32> {
    let s = ctx.store().load(id)?;
    let out = serde_json::to_string_pretty(&s.to_oci(effective_status(&s)))?;
    println!("{out}");
    Ok(0)
}

pub async fn kill(ctx: &Ctx, a: KillArgs) -> anyhow::Result<i32> {
    let sig = parse_signal(&a.signal).map_err(|e| anyhow::Error::new(WrongState(e)))?;
    let s = ctx.store().load(&a.id)?;
    let status = effective_status(&s);
    if !status.can_kill() {
        return Err(wrong_state(&a.id, status, "kill"));
    }
    let agent = agent_of(&s).await?;
    agent
        .signal(&a.id, "", sig as u32, a.all)
        .await
        .with_context(|| format!("signal container {:?}", a.id))?;
    Ok(0)
}

pub async fn delete(ctx: &Ctx, a: DeleteArgs) -> anyhow::Result<i32> {
    let store = ctx.store();
    let s = match store.load(&a.id) {
        Ok(s) => s,
        Err(ampoule_runtime::state::StateError::NotFound(_))
            if a.force && store.dir(&a.id).exists() =>
        {
            // A create that died before writing its state: remove what is there.
            store.remove(&a.id)?;
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let status = effective_status(&s);
    if !status.can_delete() && !a.force {
        return Err(wrong_state(&a.id, status, "delete (use --force)"));
    }
    if monitor_alive(&s) {
        let pid = nix::unistd::Pid::from_raw(s.monitor_pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while monitor_alive(&s) && t0.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if monitor_alive(&s) {
            tracing::warn!(container = %a.id, "monitor did not stop in time; killing it");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let t0 = Instant::now();
            while monitor_alive(&s) && t0.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Read before the state directory goes.
    let hooks = super::hooks::load(&store, &a.id);
    // Whatever a dead monitor left (its VM processes die with it, having a
    // parent-death signal): the pod service's cleanup by record.
    s.sandbox.clean_up().await;
    store.remove(&a.id)?;
    super::hooks::after_delete(&s, &hooks).await;
    Ok(0)
}

pub async fn pause_resume(ctx: &Ctx, id: &str, pause: bool) -> anyhow::Result<i32> {
    let store = ctx.store();
    let s = store.load(id)?;
    let status = effective_status(&s);
    let (need, to, what) = if pause {
        (Status::Running, Status::Paused, "pause")
    } else {
        (Status::Paused, Status::Running, "resume")
    };
    if status != need {
        return Err(wrong_state(id, status, what));
    }
    let agent = agent_of(&s).await?;
    if pause {
        agent.pause(id).await
    } else {
        agent.resume(id).await
    }
    .with_context(|| format!("{what} container {id:?}"))?;
    store.update(id, |s| {
        if s.status == need {
            s.status = to;
        }
    })?;
    Ok(0)
}

pub async fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<i32> {
    let s = ctx.store().load(&a.id)?;
    let status = effective_status(&s);
    if !status.can_list_processes() {
        return Err(wrong_state(&a.id, status, "list processes of"));
    }
    let agent = agent_of(&s).await?;
    let processes = agent
        .list_processes(&a.id)
        .await
        .with_context(|| format!("list processes of container {:?}", a.id))?;
    match a.format.as_str() {
        "json" => {
            let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
            println!("{}", serde_json::to_string(&pids)?);
        }
        "table" => {
            println!("{:<8} {:<12} CMD", "PID", "EXEC");
            for p in &processes {
                println!("{}", ps_row(p.pid, &p.exec_id, &p.args));
            }
        }
        other => anyhow::bail!(WrongState(format!(
            "unknown format {other:?}: table or json"
        ))),
    }
    Ok(0)
}

/// One `ps` table row. The guest reports the exec id and the argv, which
/// the container controls: their control characters are escaped so that
/// printing them cannot drive the terminal.
fn ps_row(pid: u32, exec_id: &str, args: &[String]) -> String {
    let exec = if exec_id.is_empty() {
        "-".into()
    } else {
        escape_control(exec_id)
    };
    let cmd: Vec<_> = args.iter().map(|a| escape_control(a)).collect();
    format!("{:<8} {:<12} {}", pid, exec, cmd.join(" "))
}

pub fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<i32> {
    let store = ctx.store();
    let states: Vec<ContainerState> = store
        .list()
        .iter()
        .filter_map(|id| store.load(id).ok())
        .collect();
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "json" => {
            let v: Vec<_> = states
                .iter()
                .map(|s| s.to_oci(effective_status(s)))
                .collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        "table" => {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let o = s.to_oci(effective_status(s));
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32} {}",
                    o.id,
                    o.pid,
                    o.status,
                    o.bundle.display(),
                    o.created,
                    o.owner
                );
            }
        }
        other => anyhow::bail!(WrongState(format!(
            "unknown format {other:?}: table or json"
        ))),
    }
    Ok(0)
}

pub fn spec(a: &SpecArgs) -> anyhow::Result<i32> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("File {} exists. Remove it first", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("ampoule".into()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}

/// `features`, in the shape of the runtime spec's features.md, from the
/// agent's own tables (what it creates, accepts and enforces).
pub fn features_json() -> serde_json::Value {
    use ampoule_runtime::api::features as f;
    use ampoule_runtime::container::{ANNOTATION_MEMORY, ANNOTATION_VCPUS};
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        // Run by the CLI on the host and by the agent in the guest.
        "hooks": ampoule_runtime::oci_hooks::all_hook_names(),
        "mountOptions": &f::MOUNT_OPTIONS[..],
        "linux": {
            "namespaces": &f::NAMESPACES[..],
            "capabilities": &f::CAPABILITIES[..],
            // The agent makes one cgroup v2 per container in the guest.
            "cgroup": { "v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false },
            "seccomp": {
                "enabled": true,
                "actions": &f::SECCOMP_ACTIONS[..],
                "operators": &f::SECCOMP_OPERATORS[..],
                "archs": &f::SECCOMP_ARCHS[..],
                "knownFlags": &f::SECCOMP_FLAGS[..],
                "supportedFlags": &f::SECCOMP_FLAGS[..],
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
        },
        "annotations": {
            "io.ampoule.version": ampoule_runtime::api::VERSION,
            ANNOTATION_VCPUS: "vCPUs of the container's microVM",
            ANNOTATION_MEMORY: "memory of the container's microVM, MiB",
        }
    })
}

pub fn features() -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(&features_json())?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_rows_escape_what_the_container_put_in_its_argv() {
        let row = ps_row(
            7,
            "",
            &[
                "sh".into(),
                "-c".into(),
                "echo \x1b]0;owned\x07\x1b[2J\n".into(),
            ],
        );
        assert!(!row.chars().any(|c| c.is_control()), "{row:?}");
        assert!(
            row.ends_with("sh -c echo \\x1b]0;owned\\x07\\x1b[2J\\n"),
            "{row}"
        );
        assert!(ps_row(1, "exec-\x1b", &[]).contains("exec-\\x1b"));
    }

    #[test]
    fn features_come_from_the_agents_tables() {
        let v = features_json();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("array")
                .iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect()
        };
        assert_eq!(
            strings(&v["linux"]["capabilities"]),
            ampoule_runtime::api::features::CAPABILITIES
        );
        let ns = strings(&v["linux"]["namespaces"]);
        for want in ["mount", "pid", "network", "ipc", "uts", "cgroup"] {
            assert!(ns.iter().any(|n| n == want), "{want} in {ns:?}");
        }
        assert_eq!(v["linux"]["seccomp"]["enabled"], true);
        assert!(strings(&v["linux"]["seccomp"]["actions"]).contains(&"SCMP_ACT_ERRNO".into()));
        assert_eq!(
            strings(&v["hooks"]),
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ]
        );
        let parsed: oci_spec::runtime::Features =
            serde_json::from_value(v).expect("parses as runtime-spec features");
        assert_eq!(parsed.oci_version_min(), "1.0.0");
    }
}
