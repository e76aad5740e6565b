//! A container cannot reach the agent: no vsock connection from inside the
//! guest reaches the agent's ports (ttrpc 1024, stdio 1025) at any CID,
//! while vsock itself works from the container (a connection to a port the
//! test serves on the host goes through).
//!
//! Busybox has no vsock client, so the test compiles a small static C
//! program with the host's gcc into the bundle's rootfs.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ampoule_agent_api::{AGENT_PORT, GUEST_CID, HOST_CID, STDIO_PORT};
use ampoule_tests::{files_in, show, vm_test, CliEnv, VmLock};

/// Host port the probe first connects to (the test serves it), proving that
/// vsock works from the container and the refusals below are real.
const CONTROL_PORT: u32 = 5005;
const VMADDR_CID_LOCAL: u32 = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;

/// `vsockprobe CONTROL_PORT [CID PORT]...`: connects to CID 2 at
/// CONTROL_PORT (retrying while the test sets up its listener) and prints
/// `control ok <what it read>`, then tries each CID:PORT once and prints
/// `target CID PORT connected <eof|data|open>` or
/// `target CID PORT refused <errno> <message>`.
const PROBE_C: &str = r#"
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int try_connect(unsigned cid, unsigned port, int *err) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) { *err = errno; return -2; }
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) return s;
    *err = errno;
    close(s);
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    unsigned control = strtoul(argv[1], 0, 0);
    int err = 0, s = -1;
    time_t give_up = time(NULL) + 240;
    while (s < 0 && time(NULL) < give_up) {
        s = try_connect(2, control, &err);
        if (s == -2) { printf("socket failed %d %s\n", err, strerror(err)); return 3; }
        if (s < 0) usleep(200000);
    }
    if (s < 0) { printf("control failed %d %s\n", err, strerror(err)); return 4; }
    char buf[64];
    ssize_t n = read(s, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("control ok %s\n", buf);
    close(s);
    for (int i = 2; i + 1 < argc; i += 2) {
        unsigned cid = strtoul(argv[i], 0, 0), port = strtoul(argv[i + 1], 0, 0);
        s = try_connect(cid, port, &err);
        if (s >= 0) {
            struct pollfd p = { s, POLLIN, 0 };
            int r = poll(&p, 1, 3000);
            char c;
            ssize_t m = r > 0 ? read(s, &c, 1) : -1;
            printf("target %u %u connected %s\n", cid, port, r == 0 ? "open" : m == 0 ? "eof" : "data");
            close(s);
        } else {
            printf("target %u %u refused %d %s\n", cid, port, err, strerror(err));
        }
        fflush(stdout);
    }
    return 0;
}
"#;

/// Compiles the probe, static, to `out`.
fn compile_probe(dir: &Path, out: &Path) {
    let src = dir.join("vsockprobe.c");
    std::fs::write(&src, PROBE_C).expect("writing the probe source");
    let res = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .expect("running gcc (needed to build the vsock probe)");
    assert!(res.status.success(), "gcc: {}", show(&res));
}

/// The hybrid vsock socket of the one sandbox under `dirs` (the CLI keeps
/// its sandboxes under `--root`).
fn find_vsock_socket(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| files_in(d))
        .map(PathBuf::from)
        .find(|p| p.file_name().is_some_and(|n| n == "vsock.sock"))
}

/// Serves one connection on the host side of guest->host port
/// `CONTROL_PORT` (`<vsock socket>_PORT`) and writes "pong" to it. Returns
/// whether a connection was served before `deadline`.
fn serve_control(dirs: &[PathBuf], deadline: Instant) -> bool {
    let sock = loop {
        if let Some(s) = find_vsock_socket(dirs) {
            break s;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let path = PathBuf::from(format!("{}_{CONTROL_PORT}", sock.display()));
    let listener = UnixListener::bind(&path).expect("binding the control port socket");
    // The vsock backend may run as an unprivileged user.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .expect("chmod the control socket");
    listener.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = std::fs::remove_file(&path);
                conn.set_nonblocking(false).expect("blocking");
                conn.write_all(b"pong").expect("writing pong");
                let _ = conn.shutdown(std::net::Shutdown::Write);
                // Wait for the probe to close its end.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = conn.read(&mut [0u8; 1]);
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept on the control socket: {e}"),
        }
    }
    let _ = std::fs::remove_file(&path);
    false
}

#[test]
fn a_container_cannot_connect_to_the_agents_vsock_ports_at_any_cid() {
    if !vm_test("a_container_cannot_connect_to_the_agents_vsock_ports_at_any_cid") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let targets: Vec<(u32, u32)> = [VMADDR_CID_LOCAL, GUEST_CID, VMADDR_CID_ANY, HOST_CID]
        .into_iter()
        .flat_map(|cid| [(cid, AGENT_PORT), (cid, STDIO_PORT)])
        .collect();
    let mut args = vec!["/vsockprobe".to_string(), CONTROL_PORT.to_string()];
    for (cid, port) in &targets {
        args.push(cid.to_string());
        args.push(port.to_string());
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bundle = env.bundle("b", &arg_refs, |_| {});
    compile_probe(env.env.tmp.path(), &bundle.join("rootfs/vsockprobe"));

    let dirs = vec![env.root.clone(), env.env.config.run_dir.clone()];
    let control =
        std::thread::spawn(move || serve_control(&dirs, Instant::now() + Duration::from_secs(240)));
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("probe")
        .stdin(Stdio::null())
        .output()
        .expect("ampoule run");
    let served = control.join().expect("control thread");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(out.status.success(), "{}", show(&out));
    assert!(served, "the probe never reached the host: {}", show(&out));
    assert!(
        text.lines().any(|l| l == "control ok pong"),
        "vsock from the container to the host must work: {}",
        show(&out)
    );
    for (cid, port) in &targets {
        let prefix = format!("target {cid} {port} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no result for {cid}:{port}: {}", show(&out)));
        assert!(
            line[prefix.len()..].starts_with("refused "),
            "a container reached vsock {cid}:{port}: {line}"
        );
    }
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// containerd's default seccomp profile for a container without
/// CAP_SYS_ADMIN, as containerd writes it into config.json (its `clone`
/// rule has no `valueTwo`: the spec's Go types omit a 0).
const CONTAINERD_SECCOMP: &str =
    include_str!("../../agent/src/container/testdata/seccomp-containerd-amd64.json");

/// Runs `unshare -u` as root with CAP_SYS_ADMIN, with `seccomp` as the
/// container's profile (or none), and returns the run's stdout.
fn unshare_with_profile(env: &CliEnv, name: &str, seccomp: Option<serde_json::Value>) -> String {
    let script = "unshare -u true && echo unshare-allowed || echo unshare-denied; echo alive";
    let bundle = env.bundle(name, &["sh", "-c", script], |v| {
        for set in ["bounding", "effective", "permitted"] {
            if let Some(caps) = v["process"]["capabilities"][set].as_array_mut() {
                caps.push("CAP_SYS_ADMIN".into());
            }
        }
        if let Some(s) = seccomp {
            v["linux"]["seccomp"] = s;
        }
    });
    let out = env
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .expect("ampoule run");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containerds_default_seccomp_profile_is_accepted_and_confines_the_container() {
    if !vm_test("containerds_default_seccomp_profile_is_accepted_and_confines_the_container") {
        return;
    }
    let _l = VmLock::acquire();
    let env = CliEnv::new();
    let profile: serde_json::Value =
        serde_json::from_str(CONTAINERD_SECCOMP).expect("the fixture is JSON");
    // Without a profile, CAP_SYS_ADMIN lets the process make a namespace.
    let open = unshare_with_profile(&env, "noprofile", None);
    assert!(open.contains("unshare-allowed"), "{open}");
    // With containerd's profile the container runs, and unshare(2), which
    // the profile does not allow, fails.
    let confined = unshare_with_profile(&env, "containerd", Some(profile));
    assert!(confined.contains("unshare-denied"), "{confined}");
    assert!(confined.contains("alive"), "{confined}");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
