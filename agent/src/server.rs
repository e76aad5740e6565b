//! The agent API (ttrpc on vsock port 1024) and the stdio listener (1025),
//! both serving the host (peer CID 2) only.

use std::sync::Arc;

use ampoule_agent_api as api;
use ampoule_agent_api::agent_ttrpc;
use async_trait::async_trait;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};
use ttrpc::r#async::TtrpcContext;

use crate::container::{ContainerError, Manager};
use crate::init::cmdline::AgentOptions;
use crate::network::{NetworkError, PodNetwork};
use crate::reaper::Reaper;
use crate::stdio::{read_header, Router};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listening on vsock port {port}: {message}")]
    Listen { port: u32, message: String },
    #[error(transparent)]
    Reaper(#[from] crate::reaper::ReaperError),
}

fn status(e: ContainerError) -> ttrpc::Error {
    use ttrpc::Code;
    let code = match &e {
        ContainerError::NotFound(_) | ContainerError::ProcessNotFound { .. } => Code::NOT_FOUND,
        ContainerError::Exists(_) => Code::ALREADY_EXISTS,
        ContainerError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        ContainerError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        ContainerError::Internal(_) => Code::INTERNAL,
    };
    tracing::warn!(error = %e, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

fn network_status(e: NetworkError) -> ttrpc::Error {
    use ttrpc::Code;
    let code = match &e {
        NetworkError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
        NetworkError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        NetworkError::Unsupported { .. } => Code::FAILED_PRECONDITION,
        NetworkError::NicNotFound { .. } => Code::NOT_FOUND,
        NetworkError::Netns(_) | NetworkError::Netlink(_) | NetworkError::Internal(_) => {
            Code::INTERNAL
        }
    };
    tracing::warn!(error = %e, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

pub struct AgentService {
    containers: Arc<Manager>,
    network: PodNetwork,
    /// Guest uptime at readiness, ms (0 until then).
    ready_ms: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckRequest,
    ) -> ttrpc::Result<api::CheckResponse> {
        Ok(api::CheckResponse {
            agent_version: api::VERSION.to_string(),
            kernel_release: crate::sysinfo::kernel_release(),
            cpus: crate::sysinfo::online_cpus(),
            memory_bytes: crate::sysinfo::mem_total_bytes(),
            uptime_ms: crate::sysinfo::uptime_ms(),
            init_uptime_ms: crate::init::first_start_ms().unwrap_or(0),
            ready_uptime_ms: self.ready_ms.load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        tracing::info!(reboot = req.reboot, containers = ?self.containers.ids(), "shutdown requested");
        nix::unistd::sync();
        tokio::spawn(async move {
            // Let the answer reach the host first.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            nix::unistd::sync();
            if std::process::id() != 1 {
                std::process::exit(0);
            }
            // Without ACPI there is no power-off device: a reset is how a
            // microVM guest ends its VM (QEMU -no-reboot, ampoule-vmm and
            // Firecracker exit on it), for both shutdown and reboot. The
            // kernel's default reset (ACPI, then the keyboard controller,
            // retried) takes seconds where there is no i8042; a triple fault
            // resets at once on every VMM (KVM_EXIT_SHUTDOWN), unless the
            // command line chose a method with `reboot=`.
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            if !cmdline
                .split_ascii_whitespace()
                .any(|w| w.starts_with("reboot="))
            {
                let _ = std::fs::write("/sys/kernel/reboot/type", "triple");
            }
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        });
        Ok(api::Empty::default())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let pid = self.containers.create(req).await.map_err(status)?;
        Ok(api::CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .start(&req.container_id)
            .await
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn delete_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .delete(&req.container_id, req.force)
            .await
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .freeze(&req.container_id, true)
            .await
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .freeze(&req.container_id, false)
            .await
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .update(&req.container_id, &req.resources)
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        self.containers.stats(&req.container_id).map_err(status)
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        self.containers
            .list_processes(&req.container_id)
            .map_err(status)
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::ExecProcessResponse> {
        let pid = self.containers.exec(req).await.map_err(status)?;
        Ok(api::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: api::SignalProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers.signal(&req).map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: api::ProcessRequest,
    ) -> ttrpc::Result<api::WaitProcessResponse> {
        self.containers
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(status)
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: api::ProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers
            .close_stdin(&req.container_id, &req.exec_id)
            .map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn resize_tty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizeTtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.containers.resize(&req).map_err(status)?;
        Ok(api::Empty::default())
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: api::Empty,
    ) -> ttrpc::Result<api::OomEvent> {
        let id = self.containers.next_oom_event().await.map_err(status)?;
        Ok(api::OomEvent {
            container_id: id,
            ..Default::default()
        })
    }

    async fn setup_network(
        &self,
        _ctx: &TtrpcContext,
        req: api::SetupNetworkRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.network.setup(&req).await.map_err(network_status)?;
        Ok(api::Empty::default())
    }
}

/// Accepts stdio connections (from the host only) and routes them by their
/// header.
async fn stdio_listener(listener: VsockListener, router: Arc<Router<VsockStream>>) {
    crate::peer::accept_loop(listener, api::STDIO_PORT, |mut conn, peer| {
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            match read_header(&mut conn).await {
                Ok(key) => {
                    tracing::debug!(?key, "stdio stream attached");
                    if !router.attach(key.clone(), conn) {
                        tracing::warn!(
                            ?key,
                            "stdio stream refused (duplicate or too many pending)"
                        );
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e, "stdio connection refused"),
            }
        });
    })
    .await
}

/// Serves until the guest goes down.
pub async fn serve(opts: AgentOptions) -> anyhow::Result<()> {
    let reaper = Reaper::new();
    reaper.start()?;
    let router: Arc<Router<VsockStream>> = Arc::new(Router::default());
    let stdio =
        VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, api::STDIO_PORT)).map_err(|e| {
            ServerError::Listen {
                port: api::STDIO_PORT,
                message: e.to_string(),
            }
        })?;
    tokio::spawn(stdio_listener(stdio, Arc::clone(&router)));
    tracing::debug!(uptime_ms = crate::sysinfo::uptime_ms(), "stdio listener up");

    let ready_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let service = AgentService {
        containers: Arc::new(Manager::new(reaper, router)),
        network: PodNetwork::new(api::POD_NETNS_GUEST_PATH),
        ready_ms: Arc::clone(&ready_ms),
    };
    let services = agent_ttrpc::create_agent(Arc::new(service));
    let agent_listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, api::AGENT_PORT))
        .map_err(|e| ServerError::Listen {
            port: api::AGENT_PORT,
            message: e.to_string(),
        })?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(crate::peer::host_only_ttrpc_listener(
            agent_listener,
            api::AGENT_PORT,
        ))
        .register_service(services);
    server.start().await.map_err(|e| ServerError::Listen {
        port: api::AGENT_PORT,
        message: e.to_string(),
    })?;
    tracing::debug!(uptime_ms = crate::sysinfo::uptime_ms(), "ttrpc serving");
    // Recorded before announcing, so a Check right after readiness sees it.
    ready_ms.store(
        crate::sysinfo::uptime_ms(),
        std::sync::atomic::Ordering::Relaxed,
    );
    match crate::ready::announce(opts.ready_port).await {
        Ok(()) => tracing::info!(uptime_ms = crate::sysinfo::uptime_ms(), "agent ready"),
        Err(e) => tracing::error!(error = %e, "readiness announcement failed; serving anyway"),
    }
    std::future::pending::<()>().await;
    drop(server);
    Ok(())
}
