//! The `ampoule` command line: runc's commands, flags and exit statuses, plus
//! `ampoule check`.

mod check;
mod create;
mod exec;
mod extra_fds;
mod hooks;
mod logging;
mod oci;
mod stdio;

use std::path::PathBuf;

use ampoule_runtime::config::ConfigError;
use ampoule_runtime::container::ContainerError;
use ampoule_runtime::sandbox::SandboxError;
use ampoule_runtime::state::StateError;
use clap::{Parser, Subcommand};

/// Generic failure.
pub const EXIT_FAILURE: i32 = 1;
/// The host cannot run a sandbox (`check`).
pub const EXIT_HOST: i32 = 2;
/// Usage or configuration error.
pub const EXIT_CONFIG: i32 = 3;
/// Bad bundle: no config.json, invalid JSON, missing rootfs, ...
pub const EXIT_BUNDLE: i32 = 4;
/// Unknown container id.
pub const EXIT_NOT_FOUND: i32 = 5;
/// The container id is taken.
pub const EXIT_EXISTS: i32 = 6;
/// The container is not in a state that allows the operation.
pub const EXIT_STATE: i32 = 7;
/// The VM could not be started or died.
pub const EXIT_VM: i32 = 8;
/// A bundle path that could lead outside the bundle: a symlinked rootfs or
/// config.json, `..` or a symlink in the rootfs path or a bind mount source.
pub const EXIT_UNSAFE_PATH: i32 = 9;
/// config.json over the size limit.
pub const EXIT_TOO_LARGE: i32 = 10;
/// A namespace path in the spec (another host process's namespace, a host
/// network namespace): nothing of the host can be joined from a microVM.
pub const EXIT_NAMESPACE: i32 = 11;
/// A prestart or createRuntime hook failed (the create was undone).
pub const EXIT_HOOK: i32 = 12;

/// An operation refused because of the container's state.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WrongState(pub String);

/// The one line a person reads for an error: each cause once, in order.
pub fn describe(e: &anyhow::Error) -> String {
    ampoule_runtime::text::error_chain(e.as_ref())
}

/// The exit status for an error, from its kind.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<StateError>() {
            return match s {
                StateError::NotFound(_) => EXIT_NOT_FOUND,
                StateError::Exists(_) => EXIT_EXISTS,
                StateError::BadId(_) => EXIT_CONFIG,
                StateError::Io { .. } => EXIT_FAILURE,
            };
        }
        if let Some(c) = cause.downcast_ref::<create::ChildFailed>() {
            return c.code;
        }
        if cause.downcast_ref::<hooks::HookFailed>().is_some() {
            return EXIT_HOOK;
        }
        if cause.downcast_ref::<WrongState>().is_some() {
            return EXIT_STATE;
        }
        if let Some(c) = cause.downcast_ref::<ContainerError>() {
            return match c {
                ContainerError::UnsafePath { .. } => EXIT_UNSAFE_PATH,
                ContainerError::ConfigTooLarge { .. } => EXIT_TOO_LARGE,
                ContainerError::Namespace(_) => EXIT_NAMESPACE,
                _ => EXIT_BUNDLE,
            };
        }
        if cause.downcast_ref::<extra_fds::ExtraFdsError>().is_some() {
            return EXIT_CONFIG;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return EXIT_CONFIG;
        }
        if let Some(s) = cause.downcast_ref::<SandboxError>() {
            return match s {
                SandboxError::Config(_) | SandboxError::BadId(_) => EXIT_CONFIG,
                _ => EXIT_VM,
            };
        }
    }
    EXIT_FAILURE
}

#[derive(Parser, Debug)]
#[command(
    name = "ampoule",
    version,
    about = "Ampoule: OCI containers in KVM microVMs"
)]
pub struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/ampoule")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub log_format: logging::LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Runtime configuration file (default /etc/ampoule/config.toml, or $AMPOULE_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long = "systemd-cgroup", global = true, hide = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report what this host offers and which hypervisor backend runs sandboxes.
    Check(check::CheckArgs),
    /// Create a container (its microVM boots; the process waits for `start`).
    Create(create::CreateArgs),
    /// Start a created container's process.
    Start(oci::IdArg),
    /// Print a container's state as JSON.
    State(oci::IdArg),
    /// Send a signal to a container's process (default SIGTERM).
    Kill(oci::KillArgs),
    /// Delete a container and everything made for it.
    Delete(oci::DeleteArgs),
    /// Pause a container's processes.
    Pause(oci::IdArg),
    /// Resume a paused container.
    Resume(oci::IdArg),
    /// Create and start a container.
    Run(create::RunArgs),
    /// Run a new process in a running container.
    Exec(exec::ExecArgs),
    /// List the processes of a container.
    Ps(oci::PsArgs),
    /// List containers.
    List(oci::ListArgs),
    /// Write a default config.json.
    Spec(oci::SpecArgs),
    /// Print the features this runtime supports, as JSON.
    Features,
    /// The container monitor behind `create` (internal).
    #[command(name = "__monitor", hide = true)]
    Monitor(create::MonitorArgs),
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    // Before anything opens a descriptor of its own.
    extra_fds::snapshot_inherited();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let config = ampoule_runtime::Config::load(cli.config.as_deref());
    let level = match (&config, cli.debug) {
        (_, true) => "debug".to_string(),
        (Ok(c), false) if cli.log.is_some() => c.log_level.clone(),
        _ => "warn".to_string(),
    };
    if let Err(e) = logging::init(cli.log.as_deref(), cli.log_format, &level) {
        eprintln!("ampoule: {}", describe(&e));
        return EXIT_CONFIG;
    }
    // Commands that need no configuration.
    match &cli.command {
        Command::Spec(a) => return report(oci::spec(a)),
        Command::Features => return report(oci::features()),
        _ => {}
    }
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            logging::error(&format!("{e}"));
            return EXIT_CONFIG;
        }
    };
    // Sandboxes of OCI containers live under --root, beside their state.
    if !matches!(cli.command, Command::Check(_)) {
        config.run_dir = cli.root.join(".vm");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::error(&format!("cannot start the async runtime: {e}"));
            return EXIT_FAILURE;
        }
    };
    let ctx = Ctx {
        config,
        cli_config: cli.config.clone(),
        root: cli.root.clone(),
        log: cli.log.clone(),
        log_format: cli.log_format,
        debug: cli.debug,
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Check(args) => Ok(check::run(&ctx.config, args).await),
            Command::Create(a) => create::create(&ctx, a).await,
            Command::Run(a) => create::run(&ctx, a).await,
            Command::Monitor(a) => create::monitor(&ctx, a).await,
            Command::Start(a) => oci::start(&ctx, &a.id).await,
            Command::State(a) => oci::state(&ctx, &a.id),
            Command::Kill(a) => oci::kill(&ctx, a).await,
            Command::Delete(a) => oci::delete(&ctx, a).await,
            Command::Pause(a) => oci::pause_resume(&ctx, &a.id, true).await,
            Command::Resume(a) => oci::pause_resume(&ctx, &a.id, false).await,
            Command::Ps(a) => oci::ps(&ctx, a).await,
            Command::List(a) => oci::list(&ctx, a),
            Command::Exec(a) => exec::exec(&ctx, a).await,
            Command::Spec(_) | Command::Features => Ok(0),
        }
    });
    // Background tasks (stdin readers) must not keep us alive.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    report(code)
}

fn report(r: anyhow::Result<i32>) -> i32 {
    match r {
        Ok(code) => code,
        Err(e) => {
            logging::error(&describe(&e));
            exit_code(&e)
        }
    }
}

/// What every command gets.
pub struct Ctx {
    pub config: ampoule_runtime::Config,
    pub cli_config: Option<PathBuf>,
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub log_format: logging::LogFormat,
    pub debug: bool,
}

impl Ctx {
    pub fn store(&self) -> ampoule_runtime::state::Store {
        ampoule_runtime::state::Store::new(&self.root)
    }

    /// Global flags to pass to a re-executed `ampoule`.
    pub fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--root".into(), self.root.clone().into()];
        if let Some(c) = &self.cli_config {
            a.push("--config".into());
            a.push(c.clone().into());
        }
        if let Some(l) = &self.log {
            a.push("--log".into());
            a.push(l.clone().into());
        }
        a.push("--log-format".into());
        a.push(
            match self.log_format {
                logging::LogFormat::Text => "text",
                logging::LogFormat::Json => "json",
            }
            .into(),
        );
        if self.debug {
            a.push("--debug".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let e: anyhow::Error = StateError::NotFound("x".into()).into();
        assert_eq!(exit_code(&e.context("state")), EXIT_NOT_FOUND);
        let e: anyhow::Error = StateError::Exists("x".into()).into();
        assert_eq!(exit_code(&e), EXIT_EXISTS);
        let e: anyhow::Error = ContainerError::NoConfig("/b".into()).into();
        assert_eq!(exit_code(&e), EXIT_BUNDLE);
        let e: anyhow::Error = ContainerError::UnsafePath {
            what: "rootfs",
            path: "/b/rootfs".into(),
            reason: "is a symlink",
        }
        .into();
        assert_eq!(exit_code(&e), EXIT_UNSAFE_PATH);
        let e: anyhow::Error = ContainerError::ConfigTooLarge {
            path: "/b/config.json".into(),
            size: 1 << 30,
        }
        .into();
        assert_eq!(exit_code(&e), EXIT_TOO_LARGE);
        let e: anyhow::Error = ContainerError::from(
            ampoule_runtime::container::namespaces::NamespaceError::HostPath {
                kind: "ipc",
                path: "/run/ipcns/x".into(),
            },
        )
        .into();
        assert_eq!(exit_code(&e.context("create")), EXIT_NAMESPACE);
        let e: anyhow::Error = extra_fds::ExtraFdsError::TooMany(100).into();
        assert_eq!(exit_code(&e), EXIT_CONFIG);
        let e: anyhow::Error = WrongState("stopped".into()).into();
        assert_eq!(exit_code(&e), EXIT_STATE);
        let e: anyhow::Error = ConfigError::Invalid("x".into()).into();
        assert_eq!(exit_code(&e), EXIT_CONFIG);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), EXIT_FAILURE);
        let e: anyhow::Error = create::ChildFailed {
            code: 42,
            message: "m".into(),
        }
        .into();
        assert_eq!(exit_code(&e), 42);
        let e: anyhow::Error = hooks::HookFailed(ampoule_runtime::oci_hooks::HookError::Failed {
            kind: "createRuntime",
            path: "/h".into(),
            status: "exit status 1".into(),
            output: String::new(),
        })
        .into();
        assert_eq!(exit_code(&e.context("create")), EXIT_HOOK);
    }

    #[test]
    fn runc_style_command_lines_parse() {
        let c = Cli::try_parse_from([
            "ampoule",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--console-socket",
            "/s",
            "id1",
        ])
        .expect("create parses");
        assert!(
            matches!(c.command, Command::Create(ref a) if a.id == "id1" && a.console_socket.is_some())
        );
        let c =
            Cli::try_parse_from(["ampoule", "kill", "--all", "id1", "KILL"]).expect("kill parses");
        assert!(matches!(c.command, Command::Kill(ref a) if a.all && a.signal == "KILL"));
        let c = Cli::try_parse_from(["ampoule", "exec", "-t", "id1", "sh", "-c", "echo -n x"])
            .expect("exec parses");
        assert!(
            matches!(c.command, Command::Exec(ref a) if a.tty && a.args == ["sh", "-c", "echo -n x"])
        );
        let c = Cli::try_parse_from(["ampoule", "delete", "-f", "id1"]).expect("delete parses");
        assert!(matches!(c.command, Command::Delete(ref a) if a.force));
    }
}
