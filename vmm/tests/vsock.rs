//! virtio-vsock through the hybrid-vsock Unix socket: host-initiated
//! CONNECT/OK with a 1 MiB echo, refused ports, bad handshakes, and
//! guest-initiated connections to `<uds>_<port>`.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const IO_LIMIT: Duration = Duration::from_secs(30);

fn connect(uds: &Path, handshake: &[u8]) -> (UnixStream, String) {
    let mut s = UnixStream::connect(uds).expect("connect vsock socket");
    s.set_read_timeout(Some(IO_LIMIT)).unwrap();
    s.write_all(handshake).unwrap();
    // Read the reply line byte by byte (data may follow it).
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            // Closed with unread handshake bytes: a reset, still "closed".
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading handshake reply: {e}"),
        }
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

fn assert_closed(uds: &Path, handshake: &[u8]) {
    let (mut s, reply) = connect(uds, handshake);
    assert_eq!(
        reply,
        "",
        "handshake {:?} got {reply:?}",
        String::from_utf8_lossy(handshake)
    );
    let mut b = [0u8; 1];
    let n = match s.read(&mut b) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("reading a refused connection: {e}"),
    };
    assert_eq!(n, 0, "connection not closed");
}

fn echo(uds: &Path, data: &[u8]) {
    let (s, reply) = connect(uds, b"CONNECT 1024\n");
    assert!(
        reply.starts_with("OK ") && reply.ends_with('\n'),
        "reply {reply:?}"
    );
    let port: u32 = reply[3..reply.len() - 1]
        .parse()
        .expect("host port in OK line");
    assert!(port > 0);
    let mut w = s.try_clone().unwrap();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&payload));
    let mut got = vec![0u8; data.len()];
    let mut r = s;
    r.read_exact(&mut got).expect("reading the echo");
    writer.join().unwrap().unwrap();
    assert!(got == data, "echo differs from what was sent");
}

#[test]
fn vsock_host_connect_echoes_1mib_refuses_bad_handshakes_and_guest_reaches_uds_port() {
    if !have_kvm("vsock_host_connect_echoes_1mib_refuses_bad_handshakes_and_guest_reaches_uds_port")
    {
        return;
    }
    let s = Scratch::new("vsock");
    let uds = s.path("v.sock");
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    // The host listens at <uds>_5555 before the VM starts; nothing at _5556.
    let listener = UnixListener::bind(s.path("v.sock_5555")).unwrap();
    let host_side = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(IO_LIMIT)).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        c.write_all(b"hello guest\n").unwrap();
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        line
    });
    let k = guest("linux64");
    let mut child = VmmChild(
        Command::new(VMM)
            .args(["--kernel", k.to_str().unwrap()])
            .args(["--cmdline", "t=vsock hostport=5555 hostport=5556"])
            .args([
                "--vsock-uds",
                uds.to_str().unwrap(),
                "--api-sock",
                api.to_str().unwrap(),
            ])
            .args(["--serial-log", log.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = wait_for_text(&log, "VSOCK-READY", RUN_LIMIT);
    assert!(out.contains("VSOCK cid=3"), "{out}");
    assert_eq!(
        host_side.join().unwrap(),
        "hello from the guest over vsock\n"
    );
    assert!(out.contains("VSOCK host said: hello guest"), "{out}");
    // Port 5556 has no host listener: the guest's request is reset.
    assert!(out.contains("VSOCK connect refused"), "{out}");

    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    echo(&uds, &data);

    // No listener on that guest port: closed; the next connection works.
    assert_closed(&uds, b"CONNECT 4444\n");
    echo(&uds, b"after a refused port");

    // Garbage, overlong and out-of-range handshakes are closed.
    assert_closed(&uds, b"HELLO\n");
    assert_closed(&uds, b"CONNECT abc\n");
    assert_closed(&uds, b"CONNECT 4294967296\n");
    assert_closed(&uds, b"CONNECT -5\n");
    assert_closed(&uds, &[b'C'; 200]);
    assert_closed(&uds, b"CONNECT 1024 and more words\n");
    // A client that hangs up mid-handshake.
    drop(UnixStream::connect(&uds).unwrap());
    echo(&uds, b"still serving");

    // Several connections at once.
    let a = std::thread::spawn({
        let uds = uds.clone();
        move || echo(&uds, &[7u8; 100_000])
    });
    let b = std::thread::spawn({
        let uds = uds.clone();
        move || echo(&uds, &[9u8; 100_000])
    });
    a.join().unwrap();
    b.join().unwrap();

    let mut c = UnixStream::connect(&api).unwrap();
    c.write_all(b"shutdown 30000\n").unwrap();
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    assert!(!uds.exists(), "vsock socket left behind");
    assert!(!api.exists(), "control socket left behind");
    assert!(
        s.path("v.sock_5555").exists(),
        "the host's own listener was removed"
    );
}
