//! A Kubernetes-style pod through containerd's CRI plugin with the runtime
//! handler `ampoule`: one microVM for the pod, two containers in it.
//! Driven by a small CRI v1 gRPC client (tonic) over containerd's socket.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{Containerd, VmLock, IMAGE};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI's containerd namespace.
const K8S_NS: &str = "k8s.io";

async fn cri_client(socket: PathBuf) -> RuntimeServiceClient<Channel> {
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

fn sandbox_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        // Empty, as kubelet sends it for a pod on the node's network (a
        // hostname needs a UTS namespace of the pod's own).
        hostname: String::new(),
        labels: HashMap::new(),
        linux: Some(LinuxPodSandboxConfig {
            // ctr-style leftovers check: the pod cgroup sits under /k8s.io.
            cgroup_parent: format!("/{K8S_NS}/pod-{name}"),
            security_context: Some(LinuxSandboxSecurityContext {
                // No CNI here: the pod uses the node's network.
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, args: &[&str]) -> ContainerConfig {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_with_two_containers_shares_one_vm() {
    const NAME: &str = "cri_pod_with_two_containers_shares_one_vm";
    if !common::should_run(NAME, true) {
        return;
    }
    let _lock = tokio::task::spawn_blocking(VmLock::acquire)
        .await
        .expect("lock");
    let ctd = tokio::task::spawn_blocking(|| Containerd::start(K8S_NS))
        .await
        .expect("containerd");
    let mut cri = cri_client(ctd.socket()).await;
    let diag = |ctd: &Containerd| {
        let log = ctd.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };

    let sb_config = sandbox_config("pod1");
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sb_config.clone()),
            runtime_handler: "ampoule".to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", diag(&ctd)))
        .into_inner()
        .pod_sandbox_id;

    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(name, &["sleep", "1000"])),
                sandbox_config: Some(sb_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", diag(&ctd)))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", diag(&ctd)));
        let status = cri
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {name}: {e}"))
            .into_inner()
            .status
            .expect("a status");
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{name}: {status:?}"
        );
        ids.push(id);
    }

    // Both containers run in the same guest kernel instance: same boot id,
    // a guest kernel release, one VM process for the pod.
    let mut boot_ids = Vec::new();
    for id in &ids {
        let r = cri
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["cat".into(), "/proc/sys/kernel/random/boot_id".into()],
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", diag(&ctd)))
            .into_inner();
        assert_eq!(r.exit_code, 0, "stderr: {}", text(&r.stderr));
        boot_ids.push(text(&r.stdout));
    }
    assert!(!boot_ids[0].is_empty());
    assert_eq!(
        boot_ids[0], boot_ids[1],
        "the two containers are in different VMs"
    );
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    assert_ne!(
        boot_ids[0],
        host_boot.trim(),
        "the containers run on the host kernel"
    );
    let r = cri
        .exec_sync(ExecSyncRequest {
            container_id: ids[1].clone(),
            cmd: vec!["sh".into(), "-c".into(), "exit 4".into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}"))
        .into_inner();
    assert_eq!(r.exit_code, 4);
    let vm_dir = ctd.vm_run_dir().display().to_string();
    let vms: Vec<_> = common::processes_mentioning(&vm_dir)
        .into_iter()
        .filter(|(_, c)| c.contains("qemu-system") || c.contains("ampoule-vmm"))
        .collect();
    assert_eq!(vms.len(), 1, "VM processes for the pod: {vms:?}");
    let shims: Vec<_> = ctd
        .shim_processes()
        .into_iter()
        .filter(|(_, c)| c.contains("containerd-shim-ampoule-v2"))
        .collect();
    assert_eq!(shims.len(), 1, "shims for the pod: {shims:?}");

    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", diag(&ctd)));
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", diag(&ctd)));

    let groups = [pod.as_str()];
    let left = common::wait_for(Duration::from_secs(15), || {
        let l = ctd.leftovers_with(&groups);
        l.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: {:?}\n{}",
        ctd.leftovers_with(&groups),
        diag(&ctd)
    );
    drop(cri);
    tokio::task::spawn_blocking(move || drop(ctd))
        .await
        .expect("cleanup");
}
