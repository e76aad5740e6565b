//! A Kubernetes-style pod through containerd's CRI plugin with the runtime
//! handler `ampoule`: one microVM for the pod, two containers in it.
//! Driven by a small CRI v1 gRPC client (tonic) over containerd's socket.

mod common;

use std::time::Duration;

use common::cri::{container_config, cri_client, sandbox_config, K8S_NS};
use common::{Containerd, VmLock};
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};

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
    let ctd = tokio::task::spawn_blocking(|| Containerd::start_with_pod_network(K8S_NS))
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

    // CRI knows the pod's tasks by the VM's host pid, not by guest pids.
    let vm_pid = u64::from(vms[0].0);
    let pid_in = |info: &std::collections::HashMap<String, String>| {
        info.get("info")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
    };
    let sandbox_info = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
        .into_inner()
        .info;
    assert_eq!(pid_in(&sandbox_info), Some(vm_pid), "{sandbox_info:?}");
    for id in &ids {
        let info = cri
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus: {e}"))
            .into_inner()
            .info;
        assert_eq!(pid_in(&info), Some(vm_pid), "{info:?}");
    }
    // CRI gave the containers the pod's IPC and UTS namespaces as
    // /proc/<that pid>/ns/* paths: in the guest, both joined the same ones.
    let mut namespaces = Vec::new();
    for id in &ids {
        let r = cri
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts".into(),
                ],
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}"))
            .into_inner();
        assert_eq!(r.exit_code, 0, "stderr: {}", text(&r.stderr));
        namespaces.push(text(&r.stdout));
    }
    assert!(namespaces[0].contains("ipc:["), "{namespaces:?}");
    assert_eq!(
        namespaces[0], namespaces[1],
        "the pod's containers are in different IPC/UTS namespaces"
    );
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
