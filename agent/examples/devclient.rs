//! Developer client for a booted agent, through the hybrid-vsock Unix
//! socket of vhost-device-vsock / ampoule-vmm. Not the product's client
//! (that lives in runtime/); it exercises the API by hand and in a smoke
//! test.
//!
//!   devclient ready UDS_1023              wait for the readiness line
//!   devclient check UDS
//!   devclient shutdown UDS
//!   devclient run UDS SERIAL [-t] [-i] -- ARGS...   create+start+wait+delete
//!   devclient smoke UDS SERIAL            the container checks, one by one

use std::time::{Duration, Instant};

use ampoule_agent_api as api;
use ampoule_agent_api::agent_ttrpc::AgentClient;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const T: i64 = 120_000_000_000; // request timeout, ns

async fn vsock_connect(uds: &str, port: u32) -> Result<UnixStream> {
    let mut s = UnixStream::connect(uds)
        .await
        .with_context(|| format!("connect {uds}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await.context("reading CONNECT answer")?;
        if b == b'\n' {
            break;
        }
        line.push(b);
    }
    if !line.starts_with(b"OK") {
        bail!("CONNECT {port}: {}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

async fn client(uds: &str) -> Result<AgentClient> {
    let s = vsock_connect(uds, api::AGENT_PORT).await?;
    Ok(AgentClient::new(ttrpc::r#async::Client::new(
        ttrpc::asynchronous::transport::Socket::from(s),
    )))
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(T)
}

fn spec(args: &[&str], terminal: bool, extra: impl FnOnce(&mut Value)) -> Value {
    let caps = json!([
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_SETUID",
        "CAP_SETGID"
    ]);
    let mut v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ampoule",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    extra(&mut v);
    v
}

struct Streams {
    stdout: tokio::task::JoinHandle<Vec<u8>>,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
    stdin: Option<UnixStream>,
}

async fn attach(uds: &str, id: &str, exec: &str, stdin: bool, stderr: bool) -> Result<Streams> {
    let open = |kind: &'static str| {
        let (uds, id, exec) = (uds.to_string(), id.to_string(), exec.to_string());
        async move {
            let mut s = vsock_connect(&uds, api::STDIO_PORT).await?;
            let e = if exec.is_empty() {
                "-".to_string()
            } else {
                exec
            };
            s.write_all(format!("{id} {e} {kind}\n").as_bytes()).await?;
            Ok::<_, anyhow::Error>(s)
        }
    };
    let reader = |mut s: UnixStream| {
        tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v).await;
            v
        })
    };
    let stdout = reader(open("stdout").await?);
    let stderr = if stderr {
        Some(reader(open("stderr").await?))
    } else {
        None
    };
    let stdin = if stdin {
        Some(open("stdin").await?)
    } else {
        None
    };
    Ok(Streams {
        stdout,
        stderr,
        stdin,
    })
}

fn stdio_cfg(
    stdin: bool,
    stderr: bool,
    terminal: bool,
) -> protobuf::MessageField<api::StdioConfig> {
    protobuf::MessageField::some(api::StdioConfig {
        stdin,
        stdout: true,
        stderr: stderr && !terminal,
        terminal,
        ..Default::default()
    })
}

struct Outcome {
    status: i32,
    oom: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    create_ms: u128,
    total_ms: u128,
}

/// create, attach, start, feed stdin, wait, delete.
async fn run(
    c: &AgentClient,
    uds: &str,
    serial: &str,
    id: &str,
    spec: Value,
    input: Option<&[u8]>,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let terminal = spec["process"]["terminal"].as_bool().unwrap_or(false);
    let streams = attach(uds, id, "", input.is_some(), !terminal).await?;
    let req = api::CreateContainerRequest {
        container_id: id.into(),
        oci_spec: serde_json::to_vec(&spec)?,
        rootfs_layers: vec![api::BlockDevice {
            serial: serial.into(),
            fstype: "erofs".into(),
            options: vec!["ro".into()],
            ..Default::default()
        }],
        stdio: stdio_cfg(input.is_some(), true, terminal),
        ..Default::default()
    };
    c.create_container(ctx(), &req)
        .await
        .context("CreateContainer")?;
    let create_ms = t0.elapsed().as_millis();
    c.start_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await
    .context("StartContainer")?;
    if let (Some(mut s), Some(data)) = (streams.stdin, input) {
        s.write_all(data).await?;
        s.shutdown().await?;
    }
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .context("WaitProcess")?;
    let stdout = streams.stdout.await?;
    let stderr = match streams.stderr {
        Some(h) => h.await?,
        None => Vec::new(),
    };
    c.delete_container(
        ctx(),
        &api::DeleteContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        },
    )
    .await
    .context("DeleteContainer")?;
    Ok(Outcome {
        status: w.exit_status,
        oom: w.oom_killed,
        stdout,
        stderr,
        create_ms,
        total_ms: t0.elapsed().as_millis(),
    })
}

fn check(name: &str, ok: bool, detail: String, failures: &mut u32) {
    if ok {
        println!("PASS {name}");
    } else {
        println!("FAIL {name}: {detail}");
        *failures += 1;
    }
}

async fn smoke(uds: &str, serial: &str, binds: Option<&str>) -> Result<u32> {
    let c = client(uds).await?;
    let chk = c.check(ctx(), &api::CheckRequest::default()).await?;
    let mut f = 0;
    let s = |o: &Outcome| {
        format!(
            "status {} stdout {:?} stderr {:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let o = run(
        &c,
        uds,
        serial,
        "uname",
        spec(&["uname", "-r"], false, |_| {}),
        None,
    )
    .await?;
    println!(
        "     (create {} ms, create..delete {} ms)",
        o.create_ms, o.total_ms
    );
    check(
        "uname -r prints the guest kernel release",
        o.status == 0 && String::from_utf8_lossy(&o.stdout).trim() == chk.kernel_release,
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "exit7",
        spec(
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            |_| {},
        ),
        None,
    )
    .await?;
    check(
        "exit 7 with stdout and stderr apart",
        o.status == 7 && o.stdout == b"out\n" && o.stderr == b"err\n",
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "kill9",
        spec(&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"], false, |_| {}),
        None,
    )
    .await?;
    check("SIGKILL gives 137", o.status == 137, s(&o), &mut f);

    let o = run(
        &c,
        uds,
        serial,
        "big",
        spec(
            &[
                "sh",
                "-c",
                "head -c 1048576 /dev/urandom | tee /tmp/x | md5sum >&2; cat /tmp/x",
            ],
            false,
            |_| {},
        ),
        None,
    )
    .await?;
    let sum = String::from_utf8_lossy(&o.stderr)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let local = md5(&o.stdout);
    check(
        "1 MiB of stdout arrives intact",
        o.status == 0 && o.stdout.len() == 1 << 20 && sum == local,
        format!("len {} sum {sum} local {local}", o.stdout.len()),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "lastwords",
        spec(
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done",
            ],
            false,
            |_| {},
        ),
        None,
    )
    .await?;
    check(
        "output written just before exit is not lost",
        o.stdout.ends_with(b"line1999\n") && o.stdout.starts_with(b"line0\n"),
        format!("len {}", o.stdout.len()),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "stdin",
        spec(&["sh", "-c", "wc -c"], false, |_| {}),
        Some(&vec![b'a'; 100_000]),
    )
    .await?;
    check(
        "stdin reaches the process and its EOF too",
        String::from_utf8_lossy(&o.stdout).trim() == "100000",
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "ident",
        spec(
            &["sh", "-c", "hostname; echo $FOO; pwd; id -u; id -g; id -G"],
            false,
            |v| {
                v["hostname"] = json!("pod-a");
                if let Some(e) = v["process"]["env"].as_array_mut() {
                    e.push(json!("FOO=bar"));
                }
                v["process"]["cwd"] = json!("/tmp");
                v["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10]});
            },
        ),
        None,
    )
    .await?;
    check(
        "hostname env cwd uid gid groups honoured",
        String::from_utf8_lossy(&o.stdout) == "pod-a\nbar\n/tmp\n1000\n1000\n1000 10\n",
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "ro",
        spec(&["sh", "-c", "touch /x && echo wrote"], false, |v| {
            v["root"]["readonly"] = json!(true)
        }),
        None,
    )
    .await?;
    check(
        "read-only rootfs refuses writes",
        o.status != 0 && !o.stdout.starts_with(b"wrote"),
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "pids1",
        spec(&["echo", "alone"], false, |v| {
            v["linux"]["resources"] = json!({"pids": {"limit": 1}})
        }),
        None,
    )
    .await?;
    check(
        "pids limit 1 still runs the init (the helper is not in the cgroup)",
        o.status == 0 && o.stdout == b"alone\n",
        s(&o),
        &mut f,
    );
    let o = run(
        &c,
        uds,
        serial,
        "rmdir",
        spec(
            &[
                "sh",
                "-c",
                "rm -rf /etc && mkdir /etc && echo ok > /etc/x && cat /etc/x",
            ],
            false,
            |_| {},
        ),
        None,
    )
    .await?;
    check(
        "an image directory can be removed and recreated (overlay upper needs CONFIG_TMPFS_XATTR)",
        o.status == 0 && o.stdout == b"ok\n",
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "tty",
        spec(&["sh", "-c", "tty; stty size"], true, |v| {
            v["process"]["consoleSize"] = json!({"height": 33, "width": 99})
        }),
        None,
    )
    .await?;
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    check(
        "terminal: tty reports a pty and its size",
        o.status == 0 && out.starts_with("/dev/pts/") && out.contains("33 99"),
        s(&o),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "oom",
        spec(
            &["sh", "-c", "x=a; while true; do x=$x$x; done"],
            false,
            |v| v["linux"]["resources"] = json!({"memory": {"limit": 16777216}}),
        ),
        None,
    )
    .await?;
    check(
        "memory limit: killed and reported as OOM",
        o.status == 137 && o.oom,
        format!("{} oom {}", s(&o), o.oom),
        &mut f,
    );

    let o = run(
        &c,
        uds,
        serial,
        "pids",
        spec(
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait; echo done",
            ],
            false,
            |v| v["linux"]["resources"] = json!({"pids": {"limit": 4}}),
        ),
        None,
    )
    .await?;
    check(
        "pids limit is honoured",
        String::from_utf8_lossy(&o.stderr).contains("fork")
            || String::from_utf8_lossy(&o.stderr).contains("esource"),
        s(&o),
        &mut f,
    );

    let o = run(&c, uds, serial, "caps", spec(&["sh", "-c", "echo home=$HOME; cat /sys/class/net/lo/flags; ulimit -n; umask; cat /proc/self/oom_score_adj; grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status; cat /proc/self/status | grep NoNewPrivs; cat /sys/fs/cgroup/cpu.max 2>&1; ls /dev"], false, |v| {
        v["linux"]["resources"] = json!({"cpu": {"quota": 50000, "period": 100000}});
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]);
        v["process"]["user"]["umask"] = json!(0o027);
        v["process"]["oomScoreAdj"] = json!(100);
    }), None).await?;
    let out = String::from_utf8_lossy(&o.stdout);
    check(
        "capabilities, no_new_privs, cpu.max, /dev",
        out.contains("home=/root\n0x9\n512\n0027\n100\n")
            && out.contains("CapBnd:\t00000000200004eb")
            && out.contains("NoNewPrivs:\t1")
            && out.contains("50000 100000")
            && out.contains("null")
            && out.contains("ptmx"),
        s(&o),
        &mut f,
    );

    // exec, ps, signal, pause/resume, stats, list while running.
    let id = "svc";
    let streams = attach(uds, id, "", false, true).await?;
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(&spec(
                &["sh", "-c", "echo started; sleep 1000"],
                false,
                |_| {},
            ))?,
            rootfs_layers: vec![api::BlockDevice {
                serial: serial.into(),
                fstype: "erofs".into(),
                ..Default::default()
            }],
            stdio: stdio_cfg(false, true, false),
            ..Default::default()
        },
    )
    .await?;
    let dup = c
        .create_container(
            ctx(),
            &api::CreateContainerRequest {
                container_id: id.into(),
                oci_spec: b"{}".to_vec(),
                ..Default::default()
            },
        )
        .await;
    check(
        "duplicate id is refused",
        dup.is_err(),
        format!("{dup:?}"),
        &mut f,
    );
    c.start_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let es = attach(uds, id, "e1", false, true).await?;
    let proc_json = json!({"args": ["sh", "-c", "echo in-exec; cat /proc/1/cmdline | tr '\\0' ' '"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    c.exec_process(
        ctx(),
        &api::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e1".into(),
            process: serde_json::to_vec(&proc_json)?,
            stdio: stdio_cfg(false, true, false),
            ..Default::default()
        },
    )
    .await?;
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await?;
    let out = String::from_utf8(es.stdout.await?)?;
    check(
        "exec runs in the container's pid namespace",
        w.exit_status == 0 && out == "in-exec\nsleep 1000 ",
        out.clone(),
        &mut f,
    );
    let ps = c
        .list_processes(
            ctx(),
            &api::ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
    check(
        "ps lists the container's processes",
        ps.processes
            .iter()
            .any(|p| p.exec_id.is_empty() && p.args == ["sleep", "1000"]),
        format!("{:?}", ps.processes),
        &mut f,
    );
    // exec with a terminal, and a signal to one exec'd process.
    let ts = attach(uds, id, "t1", false, false).await?;
    let tty_json = json!({"args": ["tty"], "cwd": "/", "terminal": true, "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    c.exec_process(
        ctx(),
        &api::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "t1".into(),
            process: serde_json::to_vec(&tty_json)?,
            stdio: stdio_cfg(false, false, true),
            ..Default::default()
        },
    )
    .await?;
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                exec_id: "t1".into(),
                ..Default::default()
            },
        )
        .await?;
    let out = String::from_utf8_lossy(&ts.stdout.await?).to_string();
    check(
        "exec with a terminal gets a pty",
        w.exit_status == 0 && out.starts_with("/dev/pts/"),
        out,
        &mut f,
    );
    let _ss = attach(uds, id, "s1", false, false).await?;
    let sleep_json = json!({"args": ["sleep", "100"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    c.exec_process(
        ctx(),
        &api::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "s1".into(),
            process: serde_json::to_vec(&sleep_json)?,
            stdio: stdio_cfg(false, false, false),
            ..Default::default()
        },
    )
    .await?;
    c.signal_process(
        ctx(),
        &api::SignalProcessRequest {
            container_id: id.into(),
            exec_id: "s1".into(),
            signal: 15,
            ..Default::default()
        },
    )
    .await?;
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                exec_id: "s1".into(),
                ..Default::default()
            },
        )
        .await?;
    check(
        "SIGTERM to one exec'd process gives 143 and signal 15",
        w.exit_status == 143 && w.signal == 15,
        format!("{w:?}"),
        &mut f,
    );
    c.pause_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    c.resume_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let st = c
        .stats_container(
            ctx(),
            &api::ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
    check(
        "stats read the cgroup",
        st.pids_current >= 1 && st.memory_usage > 0 && st.cpu_usage_usec > 0,
        format!("{st:?}"),
        &mut f,
    );
    c.update_container(
        ctx(),
        &api::UpdateContainerRequest {
            container_id: id.into(),
            resources: br#"{"pids":{"limit":50}}"#.to_vec(),
            ..Default::default()
        },
    )
    .await?;
    let st = c
        .stats_container(
            ctx(),
            &api::ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
    check(
        "update changes pids.max",
        st.pids_limit == 50,
        format!("{}", st.pids_limit),
        &mut f,
    );
    let del = c
        .delete_container(
            ctx(),
            &api::DeleteContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await;
    check(
        "delete of a running container needs force",
        del.is_err(),
        format!("{del:?}"),
        &mut f,
    );
    c.signal_process(
        ctx(),
        &api::SignalProcessRequest {
            container_id: id.into(),
            signal: 9,
            all: true,
            ..Default::default()
        },
    )
    .await?;
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
    let out = String::from_utf8(streams.stdout.await?)?;
    check(
        "kill --all ends the container with 137",
        w.exit_status == 137 && out == "started\n",
        format!("{} {out:?}", w.exit_status),
        &mut f,
    );
    c.delete_container(
        ctx(),
        &api::DeleteContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;

    let bad = run(
        &c,
        uds,
        serial,
        "nobin",
        spec(&["/no/such/binary"], false, |_| {}),
        None,
    )
    .await;
    check(
        "missing binary fails at create with a clear error",
        bad.as_ref()
            .err()
            .map(|e| format!("{e:#}").contains("not found"))
            .unwrap_or(false),
        format!("{:?}", bad.err()),
        &mut f,
    );
    let again = run(
        &c,
        uds,
        serial,
        "nobin",
        spec(&["true"], false, |_| {}),
        None,
    )
    .await;
    check(
        "a failed create leaves nothing behind (same id reusable)",
        again.map(|o| o.status == 0).unwrap_or(false),
        String::new(),
        &mut f,
    );
    let unknown = c
        .start_container(
            ctx(),
            &api::ContainerRequest {
                container_id: "nope".into(),
                ..Default::default()
            },
        )
        .await;
    check(
        "unknown id is NOT_FOUND",
        format!("{unknown:?}").contains("NOT_FOUND"),
        format!("{unknown:?}"),
        &mut f,
    );
    let badns = run(
        &c,
        uds,
        serial,
        "badns",
        spec(&["true"], false, |v| {
            v["linux"]["namespaces"] = json!([{"type": "bogus"}])
        }),
        None,
    )
    .await;
    check(
        "invalid spec is INVALID_ARGUMENT",
        format!("{:?}", badns.err()).contains("INVALID_ARGUMENT"),
        String::new(),
        &mut f,
    );

    // OOM event, CloseStdin, ResizeTty, bind mounts from the binds drive.
    let oom_c = client(uds).await?;
    // Events queue up until someone asks: the first OOM test's is first.
    let oom_wait = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(e) = oom_c
            .get_oom_event(ttrpc::context::with_timeout(T), &api::Empty::default())
            .await
        {
            seen.push(e.container_id.clone());
            if e.container_id == "oom2" {
                break;
            }
        }
        seen
    });
    let o = run(
        &c,
        uds,
        serial,
        "oom2",
        spec(
            &["sh", "-c", "x=a; while true; do x=$x$x; done"],
            false,
            |v| v["linux"]["resources"] = json!({"memory": {"limit": 16777216}}),
        ),
        None,
    )
    .await?;
    let ev = tokio::time::timeout(Duration::from_secs(10), oom_wait).await;
    let got = matches!(&ev, Ok(Ok(seen)) if seen.last().map(String::as_str) == Some("oom2"));
    check(
        "GetOomEvent names the OOM-killed container",
        got && o.oom,
        format!("{ev:?}"),
        &mut f,
    );

    let id = "cat";
    let st = attach(uds, id, "", true, true).await?;
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(&spec(&["cat"], false, |_| {}))?,
            rootfs_layers: vec![api::BlockDevice {
                serial: serial.into(),
                ..Default::default()
            }],
            stdio: stdio_cfg(true, true, false),
            ..Default::default()
        },
    )
    .await?;
    c.start_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let mut stdin = st.stdin.context("stdin")?;
    stdin.write_all(b"abc").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.close_stdin(
        ctx(),
        &api::ProcessRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let w = tokio::time::timeout(
        Duration::from_secs(20),
        c.wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let out = st.stdout.await?;
    check(
        "CloseStdin ends cat while the host keeps its connection",
        matches!(&w, Ok(Ok(r)) if r.exit_status == 0) && out == b"abc",
        format!("{w:?} {out:?}"),
        &mut f,
    );
    c.delete_container(
        ctx(),
        &api::DeleteContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        },
    )
    .await?;
    drop(stdin);

    let id = "resize";
    let st = attach(uds, id, "", false, false).await?;
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(&spec(&["sh", "-c", "sleep 2; stty size"], true, |_| {}))?,
            rootfs_layers: vec![api::BlockDevice {
                serial: serial.into(),
                ..Default::default()
            }],
            stdio: stdio_cfg(false, false, true),
            ..Default::default()
        },
    )
    .await?;
    c.start_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    c.resize_tty(
        ctx(),
        &api::ResizeTtyRequest {
            container_id: id.into(),
            rows: 12,
            cols: 34,
            ..Default::default()
        },
    )
    .await?;
    c.wait_process(
        ctx(),
        &api::ProcessRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let out = String::from_utf8_lossy(&st.stdout.await?).to_string();
    check(
        "ResizeTty changes the terminal size",
        out.contains("12 34"),
        out,
        &mut f,
    );
    c.delete_container(
        ctx(),
        &api::DeleteContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        },
    )
    .await?;

    if let Some(binds) = binds {
        let id = "binds";
        let st = attach(uds, id, "", false, true).await?;
        let sp = spec(
            &[
                "sh",
                "-c",
                "cat /data/hello.txt /etc/hello; touch /data/x 2>/dev/null || echo ro",
            ],
            false,
            |v| {
                if let Some(m) = v["mounts"].as_array_mut() {
                    m.push(json!({"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro"]}));
                    m.push(json!({"destination": "/etc/hello", "type": "bind", "source": "/host/data/hello.txt", "options": ["bind"]}));
                }
            },
        );
        c.create_container(
            ctx(),
            &api::CreateContainerRequest {
                container_id: id.into(),
                oci_spec: serde_json::to_vec(&sp)?,
                rootfs_layers: vec![api::BlockDevice {
                    serial: serial.into(),
                    ..Default::default()
                }],
                stdio: stdio_cfg(false, true, false),
                bind_sources: protobuf::MessageField::some(api::BlockDevice {
                    serial: binds.into(),
                    fstype: "erofs".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        c.start_container(
            ctx(),
            &api::ContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
        c.wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await?;
        let out = String::from_utf8_lossy(&st.stdout.await?).to_string();
        check(
            "bind mounts of a directory and a file from the binds drive, ro",
            out == "hi\nhi\nro\n",
            out,
            &mut f,
        );
        c.delete_container(
            ctx(),
            &api::DeleteContainerRequest {
                container_id: id.into(),
                force: true,
                ..Default::default()
            },
        )
        .await?;

        // A read-only root (a CRI sandbox) whose image lacks the bind
        // targets: /etc/resolv.conf (a file), /var/run/secrets/sa (a
        // directory under missing parents), /run/pod/hosts (a file under
        // missing parents) and the cwd /work are created before / turns
        // read-only. Also an empty hostname without a uts namespace
        // (host-network pods) is accepted.
        let id = "ro-binds";
        let st = attach(uds, id, "", false, true).await?;
        let sp = spec(
            &[
                "sh",
                "-c",
                "cat /etc/resolv.conf /var/run/secrets/sa/token /run/pod/hosts; cd /work && pwd; touch /x 2>/dev/null || echo ro-root; touch /etc/y 2>/dev/null || echo ro-etc",
            ],
            false,
            |v| {
                v["root"]["readonly"] = json!(true);
                v["hostname"] = json!("");
                v["process"]["cwd"] = json!("/work");
                v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]);
                if let Some(m) = v["mounts"].as_array_mut() {
                    m.push(json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/host/resolv.conf", "options": ["rbind", "ro"]}));
                    m.push(json!({"destination": "/var/run/secrets/sa", "type": "bind", "source": "/host/secrets", "options": ["rbind", "ro"]}));
                    m.push(json!({"destination": "/run/pod/hosts", "type": "bind", "source": "/host/hosts", "options": ["rbind", "ro"]}));
                }
            },
        );
        let created = c
            .create_container(
                ctx(),
                &api::CreateContainerRequest {
                    container_id: id.into(),
                    oci_spec: serde_json::to_vec(&sp)?,
                    rootfs_layers: vec![api::BlockDevice {
                        serial: serial.into(),
                        ..Default::default()
                    }],
                    stdio: stdio_cfg(false, true, false),
                    bind_sources: protobuf::MessageField::some(api::BlockDevice {
                        serial: binds.into(),
                        fstype: "erofs".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await;
        let out = match created {
            Err(e) => format!("CreateContainer: {e}"),
            Ok(_) => {
                c.start_container(
                    ctx(),
                    &api::ContainerRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                )
                .await?;
                c.wait_process(
                    ctx(),
                    &api::ProcessRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                )
                .await?;
                let out = String::from_utf8_lossy(&st.stdout.await?).to_string();
                c.delete_container(
                    ctx(),
                    &api::DeleteContainerRequest {
                        container_id: id.into(),
                        force: true,
                        ..Default::default()
                    },
                )
                .await?;
                out
            }
        };
        check(
            "read-only rootfs gets missing bind targets (files, dir, parents) and cwd; empty hostname without uts ns",
            out == "nameserver 10.0.0.10\nsecret\n127.0.0.1 localhost\n/work\nro-root\nro-etc\n",
            out,
            &mut f,
        );
    }

    let t = Instant::now();
    for i in 0..20 {
        run(
            &c,
            uds,
            serial,
            &format!("cycle{i}"),
            spec(&["true"], false, |_| {}),
            None,
        )
        .await?;
    }
    println!(
        "     (20 create/start/wait/delete cycles: {} ms each)",
        t.elapsed().as_millis() / 20
    );
    let left = run(
        &c,
        uds,
        serial,
        "leftovers",
        spec(
            &["sh", "-c", "ls /sys/fs/cgroup | grep -c cycle; true"],
            false,
            |v| {
                v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
                v["hostname"] = Value::Null;
            },
        ),
        None,
    )
    .await?;
    check(
        "cycles leave no cgroups behind",
        String::from_utf8_lossy(&left.stdout).trim() == "0",
        s(&left),
        &mut f,
    );
    f += seccomp_smoke(&c, uds, serial).await?;
    f += cgroups_path_and_sysctl_smoke(&c, uds, serial).await?;
    Ok(f)
}

/// linux.cgroupsPath (systemd style, and `..` refused) and linux.sysctl.
async fn cgroups_path_and_sysctl_smoke(c: &AgentClient, uds: &str, serial: &str) -> Result<u32> {
    let mut f = 0;
    let s = |o: &Outcome| {
        format!(
            "status {} stdout {:?} stderr {:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = run(
        c,
        uds,
        serial,
        "cg1",
        spec(
            &["sh", "-c", "cat /proc/self/cgroup; cat /sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-cg1.scope/pids.max"],
            false,
            |v| {
                v["linux"]["cgroupsPath"] = json!("kubepods-besteffort-pod1.slice:cri-containerd:cg1");
                v["linux"]["resources"] = json!({"pids": {"limit": 42}});
                v["linux"]["namespaces"] =
                    json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}]);
            },
        ),
        None,
    )
    .await?;
    let out = String::from_utf8_lossy(&o.stdout);
    check(
        "systemd cgroupsPath maps to kubepods.slice/.../cri-containerd-cg1.scope with its limits",
        o.status == 0
            && out.contains("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-cg1.scope\n")
            && out.ends_with("42\n"),
        s(&o),
        &mut f,
    );
    let bad = |id: &str, extra: Value| {
        let mut v = spec(&["true"], false, |_| {});
        if let (Some(l), Some(e)) = (v["linux"].as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                l.insert(k.clone(), x.clone());
            }
        }
        api::CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(&v).unwrap_or_default(),
            rootfs_layers: vec![api::BlockDevice {
                serial: serial.into(),
                fstype: "erofs".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let r = c
        .create_container(ctx(), &bad("cg2", json!({"cgroupsPath": "/../../x"})))
        .await;
    check(
        "cgroupsPath with `..` is refused",
        matches!(&r, Err(e) if format!("{e:?}").contains("cgroupsPath")),
        format!("{r:?}"),
        &mut f,
    );
    let o = run(
        c,
        uds,
        serial,
        "sysctl1",
        spec(
            &["sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; echo 0 > /proc/sys/net/ipv4/ip_forward; echo rc=$?"],
            false,
            |v| {
                v["linux"]["sysctl"] =
                    json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
            },
        ),
        None,
    )
    .await?;
    check(
        "namespaced sysctls are written in the container (before /proc/sys goes read-only)",
        o.status == 0 && String::from_utf8_lossy(&o.stdout) == "1\n1234\nrc=1\n",
        s(&o),
        &mut f,
    );
    let r = c
        .create_container(
            ctx(),
            &bad("sysctl2", json!({"sysctl": {"vm.swappiness": "10"}})),
        )
        .await;
    check(
        "a sysctl of no container namespace is refused",
        matches!(&r, Err(e) if format!("{e:?}").contains("vm.swappiness")),
        format!("{r:?}"),
        &mut f,
    );
    Ok(f)
}

/// linux.seccomp: ERRNO, KILL, an args filter, an unknown name, a
/// default-deny profile, and an exec'd process under the container's profile.
async fn seccomp_smoke(c: &AgentClient, uds: &str, serial: &str) -> Result<u32> {
    let mut f = 0;
    let s = |o: &Outcome| {
        format!(
            "status {} stdout {:?} stderr {:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let deny_mkdir = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat", "no_such_syscall_name"],
                      "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let with = |profile: Value, nnp: bool| {
        move |v: &mut Value| {
            v["linux"]["seccomp"] = profile;
            v["process"]["noNewPrivileges"] = json!(nnp);
        }
    };
    let o = run(
        c,
        uds,
        serial,
        "sc-errno",
        spec(
            &[
                "sh",
                "-c",
                "mkdir /tmp/x; echo rc=$?; touch /tmp/y && ls /tmp; grep ^Seccomp: /proc/self/status",
            ],
            false,
            with(deny_mkdir.clone(), true),
        ),
        None,
    )
    .await?;
    let out = String::from_utf8_lossy(&o.stdout);
    check(
        "seccomp ERRNO: mkdir fails with EPERM, other calls work, unknown name skipped",
        o.status == 0
            && out.contains("rc=1")
            && out.contains("\ny\n")
            && !out.contains("\nx\n")
            && out.contains("Seccomp:\t2")
            && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
        s(&o),
        &mut f,
    );

    let kill = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL"}]
    });
    let o = run(
        c,
        uds,
        serial,
        "sc-kill",
        spec(&["mkdir", "/tmp/x"], false, with(kill, false)),
        None,
    )
    .await?;
    check(
        "seccomp KILL (no noNewPrivileges): SIGSYS gives 159",
        o.status == 159,
        s(&o),
        &mut f,
    );

    let args = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 1, "value": 18, "op": "SCMP_CMP_EQ"}]}]
    });
    let o = run(
        c,
        uds,
        serial,
        "sc-args",
        spec(
            &[
                "sh",
                "-c",
                "kill -CONT $$; echo cont=$?; kill -0 $$; echo zero=$?",
            ],
            false,
            with(args, true),
        ),
        None,
    )
    .await?;
    let out = String::from_utf8_lossy(&o.stdout);
    check(
        "seccomp args: kill(pid, SIGCONT) denied, kill(pid, 0) allowed",
        o.status == 0 && out.contains("cont=1") && out.contains("zero=0"),
        s(&o),
        &mut f,
    );

    // Default deny: every x86_64 syscall allowed but mkdir/mkdirat, with
    // the filter installed before the uid/capability change.
    let names: Vec<&str> = syscalls::x86_64::Sysno::iter()
        .map(|s| s.name())
        .filter(|n| *n != "mkdir" && *n != "mkdirat")
        .collect();
    let deny_default = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
    });
    let o = run(
        c,
        uds,
        serial,
        "sc-deny",
        spec(
            &["sh", "-c", "mkdir /tmp/x; echo rc=$?; echo ok"],
            false,
            with(deny_default, false),
        ),
        None,
    )
    .await?;
    let out = String::from_utf8_lossy(&o.stdout);
    check(
        "seccomp default ERRNO with an allow list: only the unlisted call fails",
        o.status == 0 && out.contains("rc=1") && out.contains("ok"),
        s(&o),
        &mut f,
    );

    // An exec'd process gets the container's profile.
    let id = "sc-exec";
    let _init = attach(uds, id, "", false, true).await?;
    c.create_container(
        ctx(),
        &api::CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(&spec(&["sleep", "1000"], false, with(deny_mkdir, true)))?,
            rootfs_layers: vec![api::BlockDevice {
                serial: serial.into(),
                fstype: "erofs".into(),
                ..Default::default()
            }],
            stdio: stdio_cfg(false, true, false),
            ..Default::default()
        },
    )
    .await?;
    c.start_container(
        ctx(),
        &api::ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        },
    )
    .await?;
    let es = attach(uds, id, "e1", false, true).await?;
    let proc_json = json!({"args": ["sh", "-c", "mkdir /tmp/e; echo rc=$?"], "cwd": "/",
        "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    c.exec_process(
        ctx(),
        &api::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e1".into(),
            process: serde_json::to_vec(&proc_json)?,
            stdio: stdio_cfg(false, true, false),
            ..Default::default()
        },
    )
    .await?;
    let w = c
        .wait_process(
            ctx(),
            &api::ProcessRequest {
                container_id: id.into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await?;
    let out = String::from_utf8_lossy(&es.stdout.await?).to_string();
    check(
        "seccomp applies to exec'd processes",
        w.exit_status == 0 && out.trim() == "rc=1",
        out,
        &mut f,
    );
    c.delete_container(
        ctx(),
        &api::DeleteContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        },
    )
    .await?;

    // Optionally, a real engine's default profile (e.g. podman's
    // /usr/share/containers/seccomp.json as podman resolves it for these
    // capabilities): a shell works under it.
    if let Ok(path) = std::env::var("AMPOULE_SMOKE_SECCOMP") {
        let profile: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let o = run(
            c,
            uds,
            serial,
            "sc-engine",
            spec(
                &[
                    "sh",
                    "-c",
                    "mkdir /tmp/d && cd /tmp/d && echo hi > f && cat f && ls -la . >/dev/null && grep ^Seccomp: /proc/self/status",
                ],
                false,
                with(profile.clone(), true),
            ),
            None,
        )
        .await?;
        let out = String::from_utf8_lossy(&o.stdout);
        check(
            &format!("a shell works under the seccomp profile {path}"),
            o.status == 0 && out.contains("hi") && out.contains("Seccomp:\t2"),
            s(&o),
            &mut f,
        );
        let o = run(
            c,
            uds,
            serial,
            "sc-engine2",
            spec(&["sh", "-c", "echo ok"], false, with(profile, false)),
            None,
        )
        .await?;
        check(
            "the same profile without noNewPrivileges (installed before setuid/capset)",
            o.status == 0 && String::from_utf8_lossy(&o.stdout).trim() == "ok",
            s(&o),
            &mut f,
        );
    }

    let bad = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    });
    let r = c
        .create_container(
            ctx(),
            &api::CreateContainerRequest {
                container_id: "sc-bad".into(),
                oci_spec: serde_json::to_vec(&spec(&["true"], false, with(bad, true)))?,
                rootfs_layers: vec![api::BlockDevice {
                    serial: serial.into(),
                    fstype: "erofs".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await;
    check(
        "an unsupported seccomp action fails CreateContainer with the reason",
        matches!(&r, Err(e) if format!("{e:?}").contains("SCMP_ACT_NOTIFY")),
        format!("{r:?}"),
        &mut f,
    );
    Ok(f)
}

fn md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().map(|mut i| i.write_all(data));
    let out = child.wait_with_output().expect("md5sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "ready" => {
            let path = arg(2);
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            let t0 = Instant::now();
            let (s, _) = l.accept().await?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).await?;
            println!("{} after {} ms", line.trim_end(), t0.elapsed().as_millis());
        }
        "check" => {
            let c = client(arg(2)).await?;
            let t0 = Instant::now();
            let r = c.check(ctx(), &api::CheckRequest::default()).await?;
            println!("{r:?} ({} ms)", t0.elapsed().as_millis());
        }
        "shutdown" => {
            let c = client(arg(2)).await?;
            c.shutdown(ctx(), &api::ShutdownRequest::default()).await?;
            println!("shutdown answered");
        }
        "run" => {
            let (uds, serial) = (arg(2), arg(3));
            let dd = args
                .iter()
                .position(|a| a == "--")
                .context("run needs -- ARGS")?;
            let terminal = args[4..dd].iter().any(|a| a == "-t");
            let rest: Vec<&str> = args[dd + 1..].iter().map(String::as_str).collect();
            let c = client(uds).await?;
            let o = run(&c, uds, serial, "dev", spec(&rest, terminal, |_| {}), None).await?;
            use std::io::Write;
            std::io::stdout().write_all(&o.stdout)?;
            std::io::stderr().write_all(&o.stderr)?;
            eprintln!(
                "exit status {} oom {} (create {} ms, total {} ms)",
                o.status, o.oom, o.create_ms, o.total_ms
            );
        }
        "smoke" => {
            let failures = tokio::time::timeout(
                Duration::from_secs(900),
                smoke(arg(2), arg(3), args.get(4).map(String::as_str)),
            )
            .await??;
            println!("{failures} failed");
            if failures > 0 {
                std::process::exit(1);
            }
        }
        _ => bail!("usage: devclient ready|check|shutdown|run|smoke ..."),
    }
    Ok(())
}
