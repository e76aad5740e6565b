//! `ampoule-vmm`: command-line front end of the microVM monitor.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use ampoule_vmm::config::{self, VmConfig};
use ampoule_vmm::vmm::Vmm;

/// Ampoule's microVM monitor: boots one KVM microVM from an ELF kernel.
#[derive(Parser, Debug)]
#[command(name = "ampoule-vmm", version, about)]
struct Cli {
    /// JSON configuration file (same fields as the flags; flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux (PVH entry when it has the PVH note).
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32, default 1).
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// Guest memory in MiB (default 128).
    #[arg(long, value_name = "N")]
    memory_mib: Option<u64>,
    /// Hybrid-vsock Unix socket; the guest's CID is 3.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Serial console output file (stdout when absent).
    #[arg(long, value_name = "FILE")]
    serial_log: Option<PathBuf>,
    /// Most bytes the serial log holds; past it only the newest output is
    /// kept (default 1 MiB, at least 4096).
    #[arg(long, value_name = "BYTES")]
    serial_log_max_bytes: Option<u64>,
    /// Control socket (status, shutdown, fill-slot, empty-slot).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// virtio-blk drive: path=FILE[,ro][,id=ID] (repeatable).
    #[arg(long, value_name = "SPEC")]
    drive: Vec<String>,
    /// Empty virtio-blk slot to fill later: id=ID[,ro] (repeatable).
    #[arg(long, value_name = "SPEC")]
    drive_slot: Vec<String>,
    /// virtio-fs device served by a vhost-user backend (virtiofsd) that
    /// listens on PATH: tag=TAG,socket=PATH (repeatable, at most 4).
    #[arg(long, value_name = "SPEC")]
    fs: Vec<String>,
    /// virtio-net device on a tap: tap=NAME,mac=MAC (an existing tap in the
    /// VMM's network namespace) or fd=N,mac=MAC (an inherited, open tap fd)
    /// (repeatable, at most 4).
    #[arg(long, value_name = "SPEC")]
    net: Vec<String>,
    /// Graceful shutdown deadline in ms before the VM is stopped by force.
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// Run without the seccomp filters (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Run as this uid once /dev/kvm, the files and the sockets are open
    /// (with --gid; capabilities are dropped).
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// Run as this gid once everything is open (with --uid).
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
    /// Use this inherited descriptor of /dev/kvm instead of opening it
    /// (a jailed VMM may not be allowed to open the device).
    #[arg(long, value_name = "FD")]
    kvm_fd: Option<i32>,
}

fn build_config(cli: Cli) -> anyhow::Result<VmConfig> {
    let mut c = match &cli.config {
        Some(p) => config::from_json_file(p)?,
        None => VmConfig::default(),
    };
    if cli.kernel.is_some() {
        c.kernel = cli.kernel;
    }
    if cli.initrd.is_some() {
        c.initrd = cli.initrd;
    }
    if let Some(s) = cli.cmdline {
        c.cmdline = s;
    }
    if let Some(v) = cli.vcpus {
        c.vcpus = v;
    }
    if let Some(v) = cli.memory_mib {
        c.memory_mib = v;
    }
    if cli.vsock_uds.is_some() {
        c.vsock_uds = cli.vsock_uds;
    }
    if cli.serial_log.is_some() {
        c.serial_log = cli.serial_log;
    }
    if let Some(v) = cli.serial_log_max_bytes {
        c.serial_log_max_bytes = v;
    }
    if cli.api_sock.is_some() {
        c.api_sock = cli.api_sock;
    }
    if let Some(v) = cli.shutdown_timeout_ms {
        c.shutdown_timeout_ms = v;
    }
    if cli.no_seccomp {
        c.seccomp = false;
    }
    if cli.uid.is_some() {
        c.uid = cli.uid;
    }
    if cli.gid.is_some() {
        c.gid = cli.gid;
    }
    if cli.kvm_fd.is_some() {
        c.kvm_fd = cli.kvm_fd;
    }
    let base = c.drives.len();
    for (i, d) in cli.drive.iter().enumerate() {
        c.drives.push(config::parse_drive(d, base + i)?);
    }
    for d in &cli.drive_slot {
        c.drives.push(config::parse_drive_slot(d)?);
    }
    for f in &cli.fs {
        c.fs.push(config::parse_fs(f)?);
    }
    for n in &cli.net {
        c.net.push(config::parse_net(n)?);
    }
    Ok(c)
}

fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let config = build_config(cli)?;
    let mut vmm = Vmm::build(config).context("cannot start the microVM")?;
    let result = vmm.run();
    // Remove our sockets, but keep guest memory mapped: vCPU threads may
    // still run until the process exits.
    vmm.cleanup.run();
    std::mem::forget(vmm);
    result.context("the microVM failed")
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMPOULE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,virtio_queue=off")),
        )
        .init();
    let code = match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ampoule-vmm: error: {e:#}");
            1
        }
    };
    // Exit at once: vCPU threads may still be inside KVM_RUN.
    std::process::exit(code)
}
