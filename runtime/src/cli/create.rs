//! `create`, `run` and the container monitor.
//!
//! `create` checks the bundle, records the container, and starts a detached
//! monitor (`ampoule __monitor`) with its own stdio: the monitor builds the
//! rootfs image, boots the sandbox, creates the container in the guest,
//! relays its stdio, reports readiness, and then waits for the container's
//! init process: the monitor's exit is the container's exit (its pid is the
//! `--pid-file` pid). `run` does the same in the foreground.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ampoule_runtime::config::RootfsSharing;
use ampoule_runtime::container::{self, rootfs, Bundle};
use ampoule_runtime::pod::guest::FdMode;
use ampoule_runtime::pod::record::SandboxRecord;
use ampoule_runtime::pod::share_fs;
use ampoule_runtime::sandbox::{Sandbox, SandboxError, SandboxSpec};
use ampoule_runtime::state::{self, ContainerState, Status, Store};
use anyhow::Context;
use sha2::Digest;

use super::stdio::{self, Relay};
use super::{exit_code, Ctx, WrongState};

/// A detached child (monitor) that failed, with its exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChildFailed {
    pub code: i32,
    pub message: String,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Bundle directory (with config.json and the rootfs).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// File to write the pid of the process whose exit is the container's.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master (process.terminal).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Refused above 0: extra fds cannot cross into the VM.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility (the guest always uses pivot_root).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Detach: create and start, then return.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub keep: bool,
}

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Descriptors 3.. that `create` was given and passed on.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

/// Sandbox id of container `id` under `root`: short, fixed length (socket
/// paths are limited), unique per root.
pub fn sandbox_id(root: &Path, id: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn initial_state(ctx: &Ctx, id: &str, bundle: &Bundle) -> ContainerState {
    ContainerState {
        id: id.to_string(),
        status: Status::Creating,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        annotations: bundle.annotations(),
        created: state::now_rfc3339(),
        monitor_pid: 0,
        monitor_start_time: 0,
        vsock_uds: PathBuf::new(),
        sandbox: SandboxRecord {
            sandbox_dir: ctx.config.run_dir.join(sandbox_id(&ctx.root, id)),
            ..Default::default()
        },
        guest_pid: 0,
        exit_status: None,
        owner: nix::unistd::geteuid().as_raw(),
    }
}

/// Writes `--pid-file` atomically.
fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("cannot write pid file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write pid file {}", path.display()))
}

/// Records the container (state directory), failing on a duplicate id.
fn register(ctx: &Ctx, id: &str, bundle: &Bundle) -> anyhow::Result<Store> {
    let store = ctx.store();
    store.create_dir(id)?;
    if let Err(e) = store.save(&initial_state(ctx, id, bundle)) {
        let _ = store.remove(id);
        return Err(e.into());
    }
    Ok(store)
}

fn load_bundle(dir: &Path) -> anyhow::Result<Bundle> {
    Ok(Bundle::load(dir)?)
}

/// What `create` and `run` refuse before anything is recorded or booted,
/// beyond what [`Bundle::load`] checks: extra fds and namespace paths.
/// Returns the extra descriptors (`--preserve-fds`) with their modes.
fn check_before_boot(a: &CreateArgs, bundle: &Bundle) -> anyhow::Result<Vec<(u32, FdMode)>> {
    let extra = super::extra_fds::check_own(a.preserve_fds, true)?;
    container::namespaces::check_no_host_paths(&bundle.spec)
        .map_err(container::ContainerError::from)?;
    container::namespaces::check_own_network(&bundle.spec)
        .map_err(container::ContainerError::from)?;
    Ok(extra)
}

pub async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<i32> {
    state::validate_id(&a.id)?;
    let bundle = load_bundle(&a.bundle)?;
    if bundle.terminal() && a.console_socket.is_none() {
        anyhow::bail!("process.terminal is true: --console-socket is required with create");
    }
    let extra = check_before_boot(&a, &bundle)?;
    let store = register(ctx, &a.id, &bundle)?;
    let spec_hooks = bundle.spec.hooks().as_ref();
    if let Err(e) = super::hooks::save(&store, &a.id, spec_hooks) {
        let _ = store.remove(&a.id);
        return Err(e);
    }
    let monitor = spawn_monitor(
        ctx,
        &a.id,
        &bundle.dir,
        a.console_socket.as_deref(),
        extra.len() as u32,
    );
    let pid = match monitor.await {
        Ok(pid) => pid,
        Err(e) => {
            let _ = store.remove(&a.id);
            return Err(e);
        }
    };
    // prestart and createRuntime: the container exists in the guest. A
    // failing one undoes the create, as `delete --force` (which runs the
    // poststop hooks, as the runtime spec's lifecycle says).
    if let Err(e) = super::hooks::at_create(&store, &a.id, spec_hooks).await {
        let undo = super::oci::delete(
            ctx,
            super::oci::DeleteArgs {
                force: true,
                id: a.id.clone(),
            },
        )
        .await;
        if let Err(u) = undo {
            tracing::warn!(container = %a.id, error = %super::describe(&u), "cannot undo the create");
        }
        return Err(e.context(format!("create container {:?}", a.id)));
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, pid)?;
    }
    Ok(0)
}

async fn spawn_monitor(
    ctx: &Ctx,
    id: &str,
    bundle: &Path,
    console: Option<&Path>,
    preserve_fds: u32,
) -> anyhow::Result<u32> {
    let mut args = ctx.global_args();
    args.push("__monitor".into());
    args.push("--bundle".into());
    args.push(bundle.into());
    if let Some(c) = console {
        args.push("--console-socket".into());
        args.push(c.into());
    }
    if preserve_fds > 0 {
        args.push(format!("--preserve-fds={preserve_fds}").into());
    }
    args.push("--".into());
    args.push(id.into());
    // With a console the container's stdio is the pty, not our fds. The
    // extra descriptors go to the monitor, which relays them.
    stdio::spawn_detached(args, console.is_some(), preserve_fds).await
}

/// Host cgroup directories a create made, removed (deepest first) if the
/// create fails, once the sandbox that was in them is gone.
#[derive(Default)]
struct CreatedCgroups(Vec<PathBuf>);

impl Drop for CreatedCgroups {
    fn drop(&mut self) {
        ampoule_runtime::host_cgroup::remove(&self.0);
    }
}

/// A container created in its sandbox, with its stdio relayed.
struct Prepared {
    sandbox: Sandbox,
    relay: Relay,
    _raw: Option<stdio::RawMode>,
}

/// Builds the images, boots the sandbox, creates the container, relays its
/// stdio and records the state as `created`. On error nothing is left but
/// the state directory (the caller removes it).
async fn prepare(
    ctx: &Ctx,
    id: &str,
    bundle: &Bundle,
    console: Option<&Path>,
    foreground: bool,
    extra: &[(u32, FdMode)],
) -> anyhow::Result<Prepared> {
    let store = ctx.store();
    let state_dir = store.dir(id);
    let t0 = std::time::Instant::now();
    let sharing = container::rootfs_sharing(&bundle.spec, &ctx.config)?;
    let (vcpus, memory_mib) = container::sandbox_size(&bundle.spec, &ctx.config)?;
    let mut spec = SandboxSpec {
        id: Some(sandbox_id(&ctx.root, id)),
        vcpus: Some(vcpus),
        memory_mib: Some(memory_mib),
        ..Default::default()
    };
    let terminal = bundle.terminal();
    let mut cfg = container::stdio_config(terminal);
    cfg.extra = extra.to_vec();
    let mut binds_image = None;
    let image_files = match sharing {
        RootfsSharing::VirtioFs => {
            // A bad bind source is refused before anything boots.
            let (_, plan) = share_fs::container::plan_binds(&bundle.config_json, Some(&bundle.dir))
                .map_err(container::ContainerError::from)?;
            share_fs::volumes::check_sources(&plan).map_err(container::ContainerError::from)?;
            spec.shared_fs = true;
            None
        }
        RootfsSharing::Erofs => {
            let image = rootfs::rootfs_image(&bundle.rootfs, &ctx.config.cache_dir)
                .map_err(container::ContainerError::from)?;
            tracing::debug!(ms = t0.elapsed().as_millis() as u64, "rootfs image ready");
            let binds = bundle.bind_sources();
            if !binds.is_empty() {
                let out = state_dir.join("binds.erofs");
                rootfs::binds_image(&binds, &state_dir.join("binds-staging"), &out)
                    .map_err(container::ContainerError::from)?;
                binds_image = Some(out);
            }
            spec.drives = container::drives(&image, binds_image.as_deref());
            Some(container::image_files(binds_image.is_some()))
        }
    };
    // A cgroupsPath the host cannot take is refused before anything boots;
    // the levels the sandbox will create there are removed at delete.
    let cgroups_path = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let mut host_cgroups = CreatedCgroups::default();
    if let Some(path) = &cgroups_path {
        host_cgroups.0 = ampoule_runtime::host_cgroup::missing_levels(
            Path::new(ampoule_runtime::pod::cgroups::CGROUP_ROOT),
            path,
        )
        .context("linux.cgroupsPath")?;
        spec.cgroups_path = Some(path.clone());
    }
    // The network namespace file on the host (podman's, with netavark): its
    // interfaces become the guest's NICs, configured in the pod's guest
    // network namespace, which the container joins.
    let mut config_json = bundle.config_json.clone();
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&config_json) {
        if let Some(netns) = container::namespaces::join_guest_pod_network(&mut v) {
            spec.network = Some(PathBuf::from(netns));
            config_json = serde_json::to_vec(&v)?;
        }
    }
    let sandbox = Sandbox::start(&ctx.config, spec).await?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "sandbox started");
    let (oci_spec, files) = match (image_files, sandbox.shared()) {
        (Some(files), _) => (config_json.clone(), files),
        (None, Some(shared)) => {
            let rootfs = share_fs::RootfsSource::Dir(bundle.rootfs.clone());
            match share_fs::container::share(shared, id, &rootfs, &config_json, Some(&bundle.dir)) {
                Ok(files) => files.into_request_parts(),
                Err(e) => {
                    sandbox.stop().await;
                    return Err(anyhow::Error::new(e).context(format!("create container {id:?}")));
                }
            }
        }
        (None, None) => {
            sandbox.stop().await;
            anyhow::bail!("internal: the sandbox has no shared directory");
        }
    };
    // The streams are opened while the agent creates the container: it
    // holds connections that arrive before the process exists.
    let (created, streams) = tokio::join!(
        sandbox
            .guest()
            .create_container(id, oci_spec, files, cfg.clone()),
        container::open_streams(sandbox.vsock_uds(), id, "", &cfg),
    );
    let created = match created {
        Ok(c) => c,
        Err(e) => {
            sandbox.stop().await;
            return Err(anyhow::Error::new(e).context(format!("create container {id:?}")));
        }
    };
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "container created in the guest"
    );
    let streams = match streams {
        Ok(s) => s,
        Err(e) => {
            sandbox.stop().await;
            return Err(anyhow::Error::new(e).context("cannot open the container's stdio"));
        }
    };
    let mut raw = None;
    let relay = match console {
        Some(sock) => {
            let slave = match stdio::console_to_socket(sock) {
                Ok(s) => s,
                Err(e) => {
                    sandbox.stop().await;
                    return Err(e);
                }
            };
            stdio::relay_pty(
                streams,
                slave,
                sandbox.guest().clone(),
                id.to_string(),
                String::new(),
            )?
        }
        None => {
            if terminal && foreground {
                raw = Some(stdio::RawMode::enter());
                let _ = stdio::forward_own_winsize(
                    sandbox.guest().clone(),
                    id.to_string(),
                    String::new(),
                );
            }
            stdio::relay_own_stdio(streams)
        }
    };
    // The sandbox's host processes go into linux.cgroupsPath, with the
    // host's share of linux.resources (the shim places a pod VM likewise,
    // without the pause container's limits).
    if let Some(path) = &cgroups_path {
        let limits = ampoule_runtime::pod::cgroups::limits(
            bundle
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref()),
            sandbox.memory_mib(),
            ctx.config.jail_memory_overhead_mib,
        );
        match ampoule_runtime::pod::cgroups::place(&sandbox, path, &limits) {
            Ok(created) => {
                for d in created {
                    if !host_cgroups.0.contains(&d) {
                        host_cgroups.0.push(d);
                    }
                }
            }
            Err(e) => {
                sandbox.stop().await;
                return Err(anyhow::Error::new(e).context("linux.cgroupsPath"));
            }
        }
    }
    let mut record = SandboxRecord::of(&sandbox);
    record.host_cgroups = host_cgroups.0.clone();
    record.files = binds_image.iter().cloned().collect();
    let me = std::process::id();
    let saved = store.update(id, |s| {
        s.status = Status::Created;
        s.monitor_pid = me;
        s.monitor_start_time = state::process_start_time(me).unwrap_or(0);
        s.sandbox = record.clone();
        s.vsock_uds = sandbox.vsock_uds().to_path_buf();
        s.guest_pid = created;
    });
    if let Err(e) = saved {
        sandbox.stop().await;
        return Err(e.into());
    }
    // Recorded: removed at delete from now on.
    host_cgroups.0.clear();
    Ok(Prepared {
        sandbox,
        relay,
        _raw: raw,
    })
}

/// Waits for the container's init process (or the VM's death, or SIGTERM),
/// records the exit and stops the sandbox. Returns the exit status.
async fn supervise(ctx: &Ctx, id: &str, p: Prepared, forward_signals: bool) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let Prepared {
        sandbox,
        relay,
        _raw,
    } = p;
    let mut term = signal(SignalKind::terminate()).ok();
    let forwarded = [
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (sig_tx, mut sig_rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    if forward_signals {
        for k in forwarded {
            if let Ok(mut s) = signal(k) {
                let tx = sig_tx.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.send(k.as_raw_value());
                    }
                });
            }
        }
    }
    let guest = sandbox.guest();
    let status = {
        let wait = guest.wait(id, "");
        tokio::pin!(wait);
        loop {
            tokio::select! {
                r = &mut wait => break r,
                Some(sig) = sig_rx.recv() => {
                    let _ = guest.signal(id, "", sig as u32, false).await;
                }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                    if forward_signals {
                        let _ = guest.signal(id, "", 15, false).await;
                    } else {
                        tracing::info!(container = id, "monitor terminated: stopping the sandbox");
                        break Err(SandboxError::VmExited(ampoule_runtime::process::ExitEvent {
                            process: "monitor".into(), pid: std::process::id(), status: "terminated".into(), code: None, killed_by_us: true,
                        }));
                    }
                }
            }
        }
    };
    tracing::debug!("container process ended");
    let (code, relay_bound) = match &status {
        Ok(w) => {
            if w.oom_killed {
                tracing::warn!(
                    container = id,
                    "the container's process was killed by the OOM killer"
                );
            }
            (w.exit_status, Duration::from_secs(10))
        }
        Err(e) => {
            tracing::error!(container = id, error = %e, "the container's VM is gone");
            (137, Duration::from_millis(200))
        }
    };
    // Stopped as soon as the process has exited: the output relay may take
    // up to its bound (a process left in the guest without a pid namespace
    // can hold the container's stdout open), and `state`, `delete` and a
    // `kill` loop must not see "running" meanwhile. `delete` waits for this
    // monitor to finish the relay and exit, and cuts it short (SIGTERM).
    let _ = ctx.store().update(id, |s| {
        s.status = Status::Stopped;
        s.exit_status = Some(code);
    });
    tokio::select! {
        _ = relay.finish(relay_bound) => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
            tracing::debug!(container = id, "terminated while relaying the last output");
        }
    }
    // The container's init has exited: the guest (read-only image, overlay
    // upper in tmpfs) holds nothing to sync, so the VM is killed at once.
    sandbox.kill().await;
    code
}

pub async fn monitor(ctx: &Ctx, a: MonitorArgs) -> anyhow::Result<i32> {
    let mut notify = stdio::notify_pipe();
    let prepared = async {
        let bundle = load_bundle(&a.bundle)?;
        let extra = super::extra_fds::check_own(a.preserve_fds, false)?;
        prepare(
            ctx,
            &a.id,
            &bundle,
            a.console_socket.as_deref(),
            false,
            &extra,
        )
        .await
    }
    .await;
    let p = match prepared {
        Ok(p) => p,
        Err(e) => {
            let code = exit_code(&e);
            stdio::notify(
                &mut notify,
                &format!("ERR {code} {}", super::describe(&e).replace('\n', "\n  ")),
            );
            return Err(e);
        }
    };
    stdio::notify(&mut notify, &format!("OK {}", std::process::id()));
    Ok(supervise(ctx, &a.id, p, false).await)
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<i32> {
    let c = a.create;
    if a.detach {
        let id = c.id.clone();
        create(ctx, c).await?;
        if let Err(e) = super::oci::start(ctx, &id).await {
            let _ = super::oci::delete(
                ctx,
                super::oci::DeleteArgs {
                    force: true,
                    id: id.clone(),
                },
            )
            .await;
            return Err(e);
        }
        return Ok(0);
    }
    state::validate_id(&c.id)?;
    let bundle = load_bundle(&c.bundle)?;
    let extra = check_before_boot(&c, &bundle)?;
    let store = register(ctx, &c.id, &bundle)?;
    let spec_hooks = bundle.spec.hooks().clone().unwrap_or_default();
    let prepared = prepare(
        ctx,
        &c.id,
        &bundle,
        c.console_socket.as_deref(),
        true,
        &extra,
    );
    let p = match prepared.await {
        Ok(p) => p,
        Err(e) => {
            let _ = store.remove(&c.id);
            return Err(e);
        }
    };
    // The state the poststop hooks get once the container is gone.
    let last_state = store.load(&c.id).ok();
    let outcome = run_created(ctx, &c, &store, p, &spec_hooks).await;
    let _ = store.remove(&c.id);
    if let Some(s) = &last_state {
        // The sandbox has stopped; what it leaves outside its directory
        // (the host cgroups) goes as at `delete`.
        s.sandbox.clean_up().await;
        super::hooks::after_delete(s, &spec_hooks).await;
    }
    outcome
}

/// `run` in the foreground once the container is created: its create
/// hooks, start, poststart hooks, and its life. The sandbox is gone when
/// this returns; the caller removes the state and runs the poststop hooks.
async fn run_created(
    ctx: &Ctx,
    c: &CreateArgs,
    store: &Store,
    p: Prepared,
    hooks: &oci_spec::runtime::Hooks,
) -> anyhow::Result<i32> {
    if let Err(e) = super::hooks::at_create(store, &c.id, Some(hooks)).await {
        p.sandbox.stop().await;
        return Err(e.context(format!("create container {:?}", c.id)));
    }
    if let Some(f) = &c.pid_file {
        if let Err(e) = write_pid_file(f, std::process::id()) {
            p.sandbox.stop().await;
            return Err(e);
        }
    }
    let started = p
        .sandbox
        .guest()
        .start_container(&c.id)
        .await
        .map_err(anyhow::Error::new);
    if let Err(e) = started {
        p.sandbox.stop().await;
        return Err(e.context(format!("start container {:?}", c.id)));
    }
    let _ = store.update(&c.id, |s| {
        if s.status == Status::Created {
            s.status = Status::Running;
        }
    });
    super::hooks::after_start(store, &c.id, hooks).await;
    Ok(supervise(ctx, &c.id, p, true).await)
}

/// Error for an operation on a container in the wrong state.
pub fn wrong_state(id: &str, status: Status, what: &str) -> anyhow::Error {
    WrongState(format!(
        "cannot {what} container {id}: it is {}",
        status.as_str()
    ))
    .into()
}
