//! `exec`: a new process in a running container. In the foreground its stdio
//! are ours and its exit status is ours; `--detach` runs the same in a
//! detached child whose pid goes to `--pid-file`.

use std::path::PathBuf;
use std::time::Duration;

use ampoule_runtime::container::{self, Bundle};
use ampoule_runtime::pod::guest::Guest;
use ampoule_runtime::state::effective_status;
use anyhow::Context;

use super::create::wrong_state;
use super::stdio;
use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// OCI process JSON file (instead of ARGS).
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-TTY.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Detach from the process.
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Refused above 0: extra fds cannot cross into the VM.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment variables (KEY=VALUE).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// uid[:gid].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    pub id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The OCI process JSON for this exec.
fn process_json(a: &ExecArgs, bundle_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if let Some(p) = &a.process {
        let text = std::fs::read(p)
            .with_context(|| format!("cannot read process file {}", p.display()))?;
        let _: oci_spec::runtime::Process =
            serde_json::from_slice(&text).map_err(|e| container::ContainerError::BadSpec {
                path: p.clone(),
                message: e.to_string(),
            })?;
        return Ok(text);
    }
    if a.args.is_empty() {
        anyhow::bail!(super::WrongState(
            "exec needs a command (ARGS) or --process".into()
        ));
    }
    let bundle = Bundle::load(bundle_dir)?;
    let mut proc = bundle.spec.process().clone().unwrap_or_default();
    proc.set_args(Some(a.args.clone()));
    proc.set_terminal(Some(a.tty));
    if let Some(c) = &a.cwd {
        proc.set_cwd(c.into());
    }
    if !a.env.is_empty() {
        let mut env = proc.env().clone().unwrap_or_default();
        for e in &a.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        proc.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let mut user = proc.user().clone();
        user.set_uid(
            uid.parse()
                .with_context(|| format!("bad uid in --user {u:?}"))?,
        );
        user.set_gid(
            gid.parse()
                .with_context(|| format!("bad gid in --user {u:?}"))?,
        );
        proc.set_user(user);
    }
    Ok(serde_json::to_vec(&proc)?)
}

fn detach_args(ctx: &Ctx, a: &ExecArgs) -> Vec<std::ffi::OsString> {
    let mut v = ctx.global_args();
    v.push("exec".into());
    if let Some(p) = &a.process {
        v.push("--process".into());
        v.push(p.into());
    }
    if a.tty {
        v.push("--tty".into());
    }
    if let Some(c) = &a.console_socket {
        v.push("--console-socket".into());
        v.push(c.into());
    }
    if let Some(c) = &a.cwd {
        v.push("--cwd".into());
        v.push(c.into());
    }
    for e in &a.env {
        v.push("--env".into());
        v.push(e.into());
    }
    if let Some(u) = &a.user {
        v.push("--user".into());
        v.push(u.into());
    }
    if a.preserve_fds > 0 {
        v.push(format!("--preserve-fds={}", a.preserve_fds).into());
    }
    v.push(a.id.clone().into());
    if !a.args.is_empty() {
        v.push("--".into());
        v.extend(a.args.iter().map(Into::into));
    }
    v
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<i32> {
    let extra = super::extra_fds::check_own(a.preserve_fds, false)?;
    let s = ctx.store().load(&a.id)?;
    let status = effective_status(&s);
    if !status.can_exec() {
        return Err(wrong_state(&a.id, status, "exec in"));
    }
    if a.tty && a.detach && a.console_socket.is_none() {
        anyhow::bail!("--tty with --detach needs --console-socket");
    }
    let process = process_json(&a, &s.bundle)?;
    if a.detach {
        let pid = stdio::spawn_detached(
            detach_args(ctx, &a),
            a.console_socket.is_some(),
            a.preserve_fds,
        )
        .await?;
        if let Some(p) = &a.pid_file {
            std::fs::write(p, pid.to_string())
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        return Ok(0);
    }
    let mut notify = stdio::notify_pipe();
    let guest = Guest::connect(&s.vsock_uds, Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot reach the agent of container {}", a.id))?;
    let exec_id = format!("exec-{}", ampoule_runtime::sandbox::random_id());
    let mut cfg = container::stdio_config(a.tty);
    cfg.extra = extra;
    // The streams are opened while the agent starts the process: it holds
    // connections that arrive first (and drops them if the exec fails).
    let (started, streams) = tokio::join!(
        guest.exec(&a.id, &exec_id, process, cfg.clone()),
        container::open_streams(&s.vsock_uds, &a.id, &exec_id, &cfg),
    );
    if let Err(e) = started {
        let msg = format!("exec in container {:?}: {e}", a.id);
        stdio::notify(&mut notify, &format!("ERR 1 {msg}"));
        anyhow::bail!(msg);
    }
    let streams = streams?;
    let mut _raw = None;
    let relay = match &a.console_socket {
        Some(sock) => stdio::relay_pty(
            streams,
            stdio::console_to_socket(sock)?,
            guest.clone(),
            a.id.clone(),
            exec_id.clone(),
        )?,
        None => {
            if a.tty {
                _raw = Some(stdio::RawMode::enter());
                let _ = stdio::forward_own_winsize(guest.clone(), a.id.clone(), exec_id.clone());
            }
            stdio::relay_own_stdio(streams)
        }
    };
    if let Some(p) = &a.pid_file {
        std::fs::write(p, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    stdio::notify(&mut notify, &format!("OK {}", std::process::id()));
    let r = guest.wait(&a.id, &exec_id).await;
    match r {
        Ok(w) => {
            relay.finish(Duration::from_secs(10)).await;
            Ok(w.exit_status)
        }
        Err(e) => {
            relay.finish(Duration::from_millis(200)).await;
            Err(anyhow::anyhow!(
                "lost the exec'd process in container {:?}: {e}",
                a.id
            ))
        }
    }
}
