//! A small CRI v1 client (tonic over containerd's Unix socket) and the pod
//! and container configs the CRI test and the CRI benchmark send.

use std::collections::HashMap;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::IMAGE;

/// CRI's containerd namespace.
pub const K8S_NS: &str = "k8s.io";

pub async fn cri_client(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("a static endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to containerd's CRI service");
    RuntimeServiceClient::new(channel)
}

pub fn sandbox_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: String::new(),
        labels: HashMap::new(),
        linux: Some(LinuxPodSandboxConfig {
            // ctr-style leftovers check: the pod cgroup sits under /k8s.io.
            cgroup_parent: format!("/{K8S_NS}/pod-{name}"),
            security_context: Some(LinuxSandboxSecurityContext {
                // The pod's own network (CNI: Containerd::start_with_pod_network).
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_config(name: &str, args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.to_string(),
            ..Default::default()
        }),
        command: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}
