//! The shim server: the task API on the socket `start` chose, until
//! Shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Flags;
use containerd_shim_protos::shim_async::{create_task, Task};

use crate::events::Events;
use crate::service::task::TaskService;
use crate::start;

/// The task service name containerd 2.x calls (the generated code's).
const TASK_V3: &str = "containerd.task.v3.Task";
/// The same service as containerd 1.6 calls it: v3 is a renamed copy of v2,
/// identical on the wire, so one implementation answers both names.
const TASK_V2: &str = "containerd.task.v2.Task";

/// The service map under both names.
pub fn task_services(
    task: Arc<dyn Task + Send + Sync>,
) -> HashMap<String, ttrpc::r#async::Service> {
    let mut services = create_task(task.clone());
    for (name, service) in create_task(task) {
        if name == TASK_V3 {
            services.insert(TASK_V2.to_string(), service);
        }
    }
    services
}

pub async fn serve(flags: Flags) -> anyhow::Result<()> {
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let publisher = if ttrpc_address.is_empty() {
        tracing::warn!("no TTRPC_ADDRESS: events will not reach containerd");
        None
    } else {
        match RemotePublisher::new(&ttrpc_address).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(address = %ttrpc_address, error = %e, "cannot reach containerd's event service");
                None
            }
        }
    };
    let events = Events::new(publisher, &flags.namespace);
    let config_path = std::env::var(start::CONFIG_PATH_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let service = TaskService::new(&flags.namespace, &flags.id, events, config_path);
    let exit = service.exit_signal();

    let path = start::socket_path(&flags.socket).to_string();
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(&path).with_context(|| format!("listening on {path}"))?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener.into())
        .register_service(task_services(Arc::new(service)));
    server.start().await.context("starting the ttrpc server")?;
    start::signal_listening().context("releasing start's stdout")?;
    tracing::info!(id = %flags.id, namespace = %flags.namespace, socket = %path, "shim serving");

    exit.notified().await;
    tracing::info!("shutting down");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;

    #[test]
    fn the_task_service_answers_to_v2_and_v3() {
        let svc = TaskService::new("ns", "id", Events::new(None, "ns"), None);
        let services = task_services(Arc::new(svc));
        assert!(services.contains_key(TASK_V2), "{:?}", services.keys());
        assert!(services.contains_key(TASK_V3));
    }
}
