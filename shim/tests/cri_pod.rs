//! Pods in the shape kubelet sends them, through containerd's CRI plugin and
//! the `ampoule` runtime handler: a network namespace of the pod's own
//! (configured by Debian's CNI bridge + host-local plugins, with containerd
//! in a network namespace this test creates), a PID namespace per
//! container, shared IPC/UTS, a hostname, DNS config, and host directories
//! mounted into several containers (hostPath and emptyDir style).

mod common;

use std::path::Path;
use std::time::Duration;

use common::cri::{container_config, cri_client, sandbox_config, K8S_NS};
use common::{Containerd, VmLock};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, CreateContainerRequest, DnsConfig, ExecSyncRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

type Cri = RuntimeServiceClient<Channel>;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// What kubelet sends for a pod that is not on the node's network.
fn kubelet_pod(name: &str) -> PodSandboxConfig {
    let mut c = sandbox_config(name);
    c.hostname = format!("{name}-host");
    c.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    });
    if let Some(linux) = c.linux.as_mut() {
        if let Some(sc) = linux.security_context.as_mut() {
            sc.namespace_options = Some(NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            });
        }
    }
    c
}

fn kubelet_container(name: &str, args: &[&str], mounts: Vec<Mount>) -> ContainerConfig {
    let mut c = container_config(name, args);
    c.mounts = mounts;
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: NamespaceMode::Container as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn mount(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        host_path: host.display().to_string(),
        container_path: container.to_string(),
        readonly,
        ..Default::default()
    }
}

fn diag(ctd: &Containerd) -> String {
    let log = ctd.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

async fn exec(cri: &mut Cri, id: &str, script: &str) -> (i32, String, String) {
    let r = cri
        .exec_sync(ExecSyncRequest {
            container_id: id.to_string(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
        .into_inner();
    (r.exit_code, text(&r.stdout), text(&r.stderr))
}

async fn run_pod(cri: &mut Cri, ctd: &Containerd, sb: &PodSandboxConfig) -> String {
    cri.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(sb.clone()),
        runtime_handler: "ampoule".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", diag(ctd)))
    .into_inner()
    .pod_sandbox_id
}

async fn run_container(
    cri: &mut Cri,
    ctd: &Containerd,
    pod: &str,
    sb: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sb.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", diag(ctd)))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", diag(ctd)));
    id
}

async fn remove_container(cri: &mut Cri, id: &str) {
    cri.stop_container(StopContainerRequest {
        container_id: id.to_string(),
        timeout: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    cri.remove_container(RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
}

async fn remove_pod(cri: &mut Cri, ctd: &Containerd, pod: &str) {
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", diag(ctd)));
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", diag(ctd)));
}

/// Polls `f` every 50 ms for up to `secs` seconds.
async fn within<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(name: &str) -> Option<(VmLock, Containerd, Cri)> {
    if !common::should_run(name, true) {
        return None;
    }
    let lock = tokio::task::spawn_blocking(VmLock::acquire)
        .await
        .expect("lock");
    let ctd = tokio::task::spawn_blocking(|| Containerd::start_with_pod_network(K8S_NS))
        .await
        .expect("containerd");
    let cri = cri_client(ctd.socket()).await;
    Some((lock, ctd, cri))
}

async fn finish(ctd: Containerd, pod: &str) {
    finish_pods(ctd, &[pod]).await;
}

async fn finish_pods(ctd: Containerd, groups: &[&str]) {
    let left = common::wait_for(Duration::from_secs(15), || {
        ctd.leftovers_with(groups).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "left behind: {:?}\n{}",
        ctd.leftovers_with(groups),
        diag(&ctd)
    );
    tokio::task::spawn_blocking(move || drop(ctd))
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_shaped_pod_shares_live_volumes_dns_and_hostname_in_one_vm() {
    const NAME: &str = "kubelet_shaped_pod_shares_live_volumes_dns_and_hostname_in_one_vm";
    let Some((_lock, ctd, mut cri)) = setup(NAME).await else {
        return;
    };
    let host_path = ctd.dir().join("volumes/host-path");
    let empty_dir = ctd.dir().join("volumes/empty-dir");
    for d in [&host_path, &empty_dir] {
        std::fs::create_dir_all(d).expect("volume dir");
    }
    std::fs::write(host_path.join("seed"), "from the host before start\n").expect("seed");

    let sb = kubelet_pod("web");
    let pod = run_pod(&mut cri, &ctd, &sb).await;

    // One hostPath directory in three containers (read-only in the third),
    // an emptyDir-style directory in the first two.
    let mut ids = Vec::new();
    for (name, mounts) in [
        (
            "a",
            vec![
                mount(&host_path, "/data", false),
                mount(&empty_dir, "/cache", false),
            ],
        ),
        (
            "b",
            vec![
                mount(&host_path, "/data", false),
                mount(&empty_dir, "/cache", false),
            ],
        ),
        ("c", vec![mount(&host_path, "/data", true)]),
    ] {
        let config = kubelet_container(name, &["sleep", "1000"], mounts);
        ids.push(run_container(&mut cri, &ctd, &pod, &sb, config).await);
    }
    let [a, b, c] = [ids[0].clone(), ids[1].clone(), ids[2].clone()];

    // All three in one guest kernel.
    let mut boots = Vec::new();
    for id in [&a, &b, &c] {
        let (code, out, err) = exec(&mut cri, id, "cat /proc/sys/kernel/random/boot_id").await;
        assert_eq!(code, 0, "{err}");
        boots.push(out);
    }
    assert!(boots.iter().all(|x| *x == boots[0]), "{boots:?}");

    // What the host wrote before start is there; a container's write
    // reaches the host and the other containers; a host write reaches them.
    let (code, out, err) = exec(&mut cri, &c, "cat /data/seed").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from the host before start"),
        "{err}"
    );
    let (code, _, err) = exec(&mut cri, &a, "echo written-by-a > /data/from-a").await;
    assert_eq!(code, 0, "{err}");
    let on_host = within(1, || async {
        std::fs::read_to_string(host_path.join("from-a"))
            .ok()
            .as_deref()
            == Some("written-by-a\n")
    })
    .await;
    assert!(
        on_host,
        "a container's write did not reach the host within 1 s"
    );
    for id in [&b, &c] {
        let (code, out, err) = exec(&mut cri, id, "cat /data/from-a").await;
        assert_eq!((code, out.as_str()), (0, "written-by-a"), "{id}: {err}");
    }
    std::fs::write(host_path.join("from-host"), "written-by-host\n").expect("host write");
    for id in [&a, &b, &c] {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            if exec(&mut cri, id, "cat /data/from-host").await.1 == "written-by-host" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a host write did not reach container {id} within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // emptyDir style: one directory for the pod's containers.
    let (code, _, err) = exec(&mut cri, &b, "echo shared > /cache/f && mkdir /cache/d").await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = exec(&mut cri, &a, "cat /cache/f && ls -d /cache/d").await;
    assert_eq!((code, out.as_str()), (0, "shared\n/cache/d"), "{err}");
    // A read-only mount refuses writes in the guest.
    let (code, _, err) = exec(&mut cri, &c, "echo x > /data/from-c").await;
    assert_ne!(code, 0, "a write to a read-only mount succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!host_path.join("from-c").exists());

    // CRI's DNS config and the pod's hostname.
    let (code, out, err) = exec(&mut cri, &a, "cat /etc/resolv.conf").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(
        out.contains("search default.svc.cluster.local svc.cluster.local"),
        "{out}"
    );
    assert!(out.contains("options ndots:5"), "{out}");
    for id in [&a, &c] {
        let (code, out, err) = exec(&mut cri, id, "hostname; cat /etc/hostname").await;
        assert_eq!((code, out.as_str()), (0, "web-host\nweb-host"), "{err}");
    }
    // /etc/hosts is the file CRI wrote for the pod, used in place.
    let cri_hosts = ctd
        .dir()
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod)
        .join("hosts");
    let want = std::fs::read_to_string(&cri_hosts)
        .unwrap_or_else(|e| panic!("{}: {e}", cri_hosts.display()));
    let (code, out, err) = exec(&mut cri, &a, "cat /etc/hosts").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, want.trim(), "/etc/hosts is not CRI's");
    assert!(out.contains("localhost"), "{out}");
    // The pod's network namespace as CNI configured it (the bridge plugin's
    // eth0 with the pod IP), shared by its containers; a PID namespace each.
    let pod_ip = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(pod_ip.starts_with("10.88.7."), "pod IP {pod_ip:?}");
    let mut nets = Vec::new();
    for id in [&a, &b] {
        let (code, out, err) = exec(
            &mut cri,
            id,
            "ls /sys/class/net; readlink /proc/self/ns/net; readlink /proc/self/ns/pid",
        )
        .await;
        assert_eq!(code, 0, "{err}");
        nets.push(out);
    }
    let lines: Vec<Vec<&str>> = nets.iter().map(|n| n.lines().collect()).collect();
    assert_eq!(lines[0][..2], ["eth0", "lo"], "{nets:?}");
    assert_eq!(lines[0].len(), 4, "{nets:?}");
    assert_eq!(
        lines[0][2], lines[1][2],
        "containers of a pod share its network: {nets:?}"
    );
    assert_ne!(
        lines[0][3], lines[1][3],
        "PID namespace per container: {nets:?}"
    );
    let (code, out, err) = exec(&mut cri, &a, "ip -4 -o addr show dev eth0; ip route").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{pod_ip}/24")), "{out}");
    assert!(out.contains("default via 10.88.7.1"), "{out}");
    // A container reaches the gateway (the bridge, in containerd's
    // namespace), and a server in the pod answers at the pod IP from there.
    let (code, out, err) = exec(
        &mut cri,
        &a,
        "ping -c1 -W5 10.88.7.1 >/dev/null && echo gateway; \
         mkdir -p /tmp/w && echo hello-from-the-pod > /tmp/w/index.html && httpd -p 8080 -h /tmp/w",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "gateway"), "{err}");
    let url = format!("http://{pod_ip}:8080/index.html");
    let got = common::wait_for(Duration::from_secs(20), || {
        // (Debian's busybox wget crashes with -T: bound it with timeout.)
        let o = ctd.in_netns("timeout", &["3", "busybox", "wget", "-q", "-O-", &url]);
        String::from_utf8_lossy(&o.stdout)
            .contains("hello-from-the-pod")
            .then_some(())
    });
    assert!(
        got.is_some(),
        "GET {url} from containerd's namespace failed"
    );
    // A second pod reaches the first at its IP.
    let sb2 = kubelet_pod("client");
    let pod2 = run_pod(&mut cri, &ctd, &sb2).await;
    let client = run_container(
        &mut cri,
        &ctd,
        &pod2,
        &sb2,
        kubelet_container("client", &["sleep", "1000"], Vec::new()),
    )
    .await;
    let (code, out, err) = exec(&mut cri, &client, &format!("timeout 10 wget -q -O- {url}")).await;
    assert_eq!((code, out.as_str()), (0, "hello-from-the-pod"), "{err}");
    remove_pod(&mut cri, &ctd, &pod2).await;

    remove_pod(&mut cri, &ctd, &pod).await;
    // The volumes keep what was written; nothing of the pod is mounted.
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("f")).unwrap_or_default(),
        "shared\n"
    );
    drop(cri);
    finish(ctd, &pod).await;
}

/// Mount points under this containerd's shared directories.
fn shared_mounts(ctd: &Containerd) -> Vec<String> {
    let root = ctd.vm_run_dir().join(".shared").display().to_string();
    let mut m: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_containers_in_one_pod_and_thirty_create_delete_cycles_leave_nothing_behind() {
    const NAME: &str =
        "ten_containers_in_one_pod_and_thirty_create_delete_cycles_leave_nothing_behind";
    let Some((_lock, ctd, mut cri)) = setup(NAME).await else {
        return;
    };
    let vol = ctd.dir().join("volumes/counter");
    std::fs::create_dir_all(&vol).expect("volume dir");
    let sb = kubelet_pod("many");
    let pod = run_pod(&mut cri, &ctd, &sb).await;
    let sandbox_only = shared_mounts(&ctd);
    assert_eq!(
        sandbox_only
            .iter()
            .filter(|m| m.ends_with("/rootfs"))
            .count(),
        1,
        "{sandbox_only:?}"
    );
    let mut ids = Vec::new();
    for n in 0..10 {
        let name = format!("c{n}");
        let script = format!("echo {name} > /v/{name}; exec sleep 1000");
        let id = run_container(
            &mut cri,
            &ctd,
            &pod,
            &sb,
            kubelet_container(
                &name,
                &["sh", "-c", &script],
                vec![mount(&vol, "/v", false)],
            ),
        )
        .await;
        ids.push(id);
    }
    let all = within(10, || async {
        (0..10).all(|n| vol.join(format!("c{n}")).exists())
    })
    .await;
    assert!(all, "not every container of ten wrote its file");
    let (code, out, err) = exec(&mut cri, &ids[9], "ls /v | wc -l").await;
    assert_eq!((code, out.as_str()), (0, "10"), "{err}");
    for id in &ids {
        remove_container(&mut cri, id).await;
    }

    for cycle in 0..30 {
        let name = format!("cycle{cycle}");
        let id = run_container(
            &mut cri,
            &ctd,
            &pod,
            &sb,
            kubelet_container(&name, &["sleep", "1000"], vec![mount(&vol, "/v", false)]),
        )
        .await;
        let (code, _, err) = exec(&mut cri, &id, &format!("echo {cycle} >> /v/cycles")).await;
        assert_eq!(code, 0, "cycle {cycle}: {err}");
        remove_container(&mut cri, &id).await;
    }
    let cycles = std::fs::read_to_string(vol.join("cycles")).unwrap_or_default();
    assert_eq!(cycles.lines().count(), 30, "{cycles}");

    // Only the pod's sandbox container is left: its shared directory holds
    // what it held before the first app container came.
    assert_eq!(
        shared_mounts(&ctd),
        sandbox_only,
        "mounts of deleted containers are left in the shared directory"
    );

    remove_pod(&mut cri, &ctd, &pod).await;
    assert!(
        common::processes_mentioning("virtiofsd")
            .iter()
            .all(|(_, c)| !c.contains(&ctd.dir().display().to_string())),
        "a virtiofsd of this containerd is left"
    );
    let shared_root = ctd.vm_run_dir().join(".shared");
    let shared_left: Vec<_> = std::fs::read_dir(&shared_root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        shared_left.is_empty(),
        "shared directories left: {shared_left:?}"
    );
    drop(cri);
    finish(ctd, &pod).await;
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn in_pod_netns(netns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args(args)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_leaves_no_tap_or_redirect_in_the_pods_network_namespace() {
    const NAME: &str = "a_killed_shim_leaves_no_tap_or_redirect_in_the_pods_network_namespace";
    let Some((_lock, ctd, mut cri)) = setup(NAME).await else {
        return;
    };
    let before = netns_names();
    let sb = kubelet_pod("killed");
    let pod = run_pod(&mut cri, &ctd, &sb).await;
    let netns: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert_eq!(netns.len(), 1, "the pod's CNI namespace: {netns:?}");
    let netns = &netns[0];
    let links = in_pod_netns(netns, &["ip", "-o", "link", "show"]);
    assert!(links.contains("tap0_amp"), "{links}");
    let qdiscs = in_pod_netns(netns, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(qdiscs.contains("ingress"), "{qdiscs}");

    let shim: Vec<u32> = ctd
        .shim_processes()
        .into_iter()
        .filter(|(_, c)| c.contains("containerd-shim-ampoule-v2"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(shim.len(), 1, "the pod's shim");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &shim[0].to_string()])
        .status();
    // The VM dies with its shim and the tap with the VM; containerd's
    // cleanup (the shim's `delete`) removes the redirect.
    let clean = common::wait_for(Duration::from_secs(30), || {
        let links = in_pod_netns(netns, &["ip", "-o", "link", "show"]);
        let qdiscs = in_pod_netns(netns, &["tc", "qdisc", "show", "dev", "eth0"]);
        (!links.contains("_amp") && !qdiscs.contains("ingress")).then_some(())
    });
    assert!(
        clean.is_some(),
        "left in {netns}: {} {}",
        in_pod_netns(netns, &["ip", "-o", "link", "show"]),
        in_pod_netns(netns, &["tc", "qdisc", "show", "dev", "eth0"])
    );
    remove_pod(&mut cri, &ctd, &pod).await;
    drop(cri);
    finish(ctd, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod_is_refused_with_the_reason() {
    const NAME: &str = "a_host_network_pod_is_refused_with_the_reason";
    let Some((_lock, ctd, mut cri)) = setup(NAME).await else {
        return;
    };
    let mut sb = kubelet_pod("hostnet");
    if let Some(sc) = sb.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.namespace_options = Some(NamespaceOption {
            network: NamespaceMode::Node as i32,
            ..Default::default()
        });
    }
    let e = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sb),
            runtime_handler: "ampoule".into(),
        })
        .await
        .expect_err("a hostNetwork pod on ampoule");
    assert!(e.message().contains("host network"), "{}", e.message());
    drop(cri);
    finish_pods(ctd, &[]).await;
}
