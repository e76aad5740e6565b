//! Benchmark, not a test: a Kubernetes-style pod start through containerd's
//! CRI plugin, RunPodSandbox + CreateContainer + StartContainer, with the
//! runtime handler `runc` and then `ampoule`, against a private containerd
//! (the shim tests' harness), in the same run. Prints min/median/max over
//! `BENCH_RUNS` runs each (default 20, after one warm-up run each), the ratio
//! of medians, and Ampoule's time minus its pod VM's boot-to-agent time
//! (from the shim's "pod VM ready ... boot_ms=" log line).
//!
//! Run as root: `cargo bench -p containerd-shim-ampoule-v2 --bench cri_pod_start`
//! (`benches/containerd_run.sh` runs it after the `ctr run` comparison).
//! It measures; it asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::cri::{container_config, cri_client, sandbox_config, K8S_NS};
use common::Containerd;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    CreateContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

/// min, median, max of a sample (sorted in place).
fn summary(ms: &mut [f64]) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    (ms[0], median, ms[n - 1])
}

/// One pod with one container, started and then removed. Returns the time
/// from RunPodSandbox to StartContainer's answer and the pod's id.
async fn pod_start(
    cri: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
) -> Result<(f64, String)> {
    let sb = sandbox_config(name);
    let t0 = Instant::now();
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sb.clone()),
            runtime_handler: handler.to_string(),
        })
        .await
        .with_context(|| format!("RunPodSandbox ({handler})"))?
        .into_inner()
        .pod_sandbox_id;
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", &["sleep", "1000"])),
            sandbox_config: Some(sb),
        })
        .await
        .with_context(|| format!("CreateContainer ({handler})"))?
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest { container_id: id })
        .await
        .with_context(|| format!("StartContainer ({handler})"))?;
    let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .context("RemovePodSandbox")?;
    Ok((elapsed, pod))
}

/// The pod VM's boot-to-agent time the shim logged for sandbox `pod`.
fn boot_ms(log: &str, pod: &str) -> Option<f64> {
    let sandbox = format!("sandbox={pod}");
    log.lines()
        .rev()
        .filter(|l| l.contains("pod VM ready") && l.contains(&sandbox))
        .filter_map(|l| {
            let rest = &l[l.find("boot_ms=")? + "boot_ms=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .next()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if let Err(reason) = common::containerd_prerequisites() {
        bail!("cri_pod_start: cannot run: {reason}");
    }
    let runs: usize = match std::env::var("BENCH_RUNS") {
        Ok(v) => v.parse().context("BENCH_RUNS")?,
        Err(_) => 20,
    };
    if runs == 0 {
        bail!("BENCH_RUNS must be at least 1");
    }
    let ctd = tokio::task::spawn_blocking(|| Containerd::start_with_pod_network(K8S_NS)).await?;
    let mut cri = cri_client(ctd.socket()).await;
    let mut medians = Vec::new();
    let mut net = Vec::new();
    println!("CRI RunPodSandbox + CreateContainer + StartContainer, {runs} runs each (ms: min / median / max)");
    for handler in ["runc", "ampoule"] {
        let mut ms = Vec::new();
        for i in 0..=runs {
            let (elapsed, pod) = pod_start(&mut cri, handler, &format!("{handler}{i}")).await?;
            if i == 0 {
                continue; // warms the page cache and the erofs image cache
            }
            ms.push(elapsed);
            if handler == "ampoule" {
                let boot = boot_ms(&ctd.log(), &pod)
                    .with_context(|| format!("no \"pod VM ready\" line for pod {pod}"))?;
                net.push(elapsed - boot);
            }
        }
        let (min, median, max) = summary(&mut ms);
        println!("  {handler:28} {min:6.0} {median:6.0} {max:6.0}");
        medians.push(median);
    }
    let (min, median, max) = summary(&mut net);
    println!("  ampoule minus boot-to-agent  {min:6.0} {median:6.0} {max:6.0}");
    println!(
        "  ratio ampoule/runc (medians): {:.2}",
        medians[1] / medians[0]
    );
    println!(
        "  ratio (ampoule - boot)/runc (medians): {:.2}",
        median / medians[0]
    );
    drop(cri);
    tokio::task::spawn_blocking(move || drop(ctd)).await?;
    Ok(())
}
