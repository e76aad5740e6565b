//! virtio-blk: reads of a known pattern, writes reaching the host file,
//! read-only drives refusing writes, and a slot filled at run time through
//! the control socket (config-change interrupt), and both interrupts
//! delivered to the guest.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * mul + add) % 256) as u8).collect()
}

#[test]
fn virtio_blk_reads_writes_refuses_ro_writes_and_fills_a_slot_at_run_time() {
    if !have_kvm("virtio_blk_reads_writes_refuses_ro_writes_and_fills_a_slot_at_run_time") {
        return;
    }
    let s = Scratch::new("blk");
    let d0 = s.path("rw.img");
    let d1 = s.path("ro.img");
    let d2 = s.path("layer.img");
    let p0 = pattern(64 * 1024, 7, 3);
    let p1 = vec![1u8; 4096];
    let p2 = pattern(8192, 13, 0);
    std::fs::write(&d0, &p0).unwrap();
    std::fs::write(&d1, &p1).unwrap();
    std::fs::write(&d2, &p2).unwrap();
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    let k = guest("linux64");
    let mut child = VmmChild(
        Command::new(VMM)
            .args(["--kernel", k.to_str().unwrap(), "--cmdline", "t=blk"])
            .args(["--drive", &format!("path={},id=rw", d0.display())])
            .args(["--drive", &format!("path={},ro,id=ro", d1.display())])
            .args(["--drive-slot", "id=layer1"])
            .args([
                "--api-sock",
                api.to_str().unwrap(),
                "--serial-log",
                log.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_path(&api, RUN_LIMIT);
    wait_for_text(&log, "SLOT-WAIT", RUN_LIMIT);

    let mut c = UnixStream::connect(&api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut call = |line: &str| -> serde_json::Value {
        c.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let st = call("status");
    assert_eq!(st["drives"][2]["id"], "layer1", "{st}");
    assert!(st["drives"][2]["path"].is_null(), "{st}");
    let bad = call(&format!("fill-slot nosuch {}", d2.display()));
    assert_eq!(bad["ok"], false, "{bad}");
    let bad = call("fill-slot layer1 /nonexistent/file");
    assert_eq!(bad["ok"], false, "{bad}");
    let ok = call(&format!("fill-slot layer1 {} ro", d2.display()));
    assert_eq!(ok["ok"], true, "{ok}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");

    let out = std::fs::read_to_string(&log).unwrap();
    let want0 = format!("BLK0 cap=128 read=0 fnv={:#x} intr=1", fnv1a(&p0[..4096]));
    assert!(out.contains(&want0), "want {want0}\n{out}");
    assert!(out.contains("BLK0 write=0\n"), "{out}");
    assert!(out.contains("BLK0 read-past-end=1\n"), "{out}");
    assert!(out.contains("BLK1 ro_feature=1 write=1\n"), "{out}");
    assert!(out.contains("BLK2 cap=0\n"), "{out}");
    let want2 = format!(
        "BLK2 config_change=1 gen_changed=1 cap=16 read=0 fnv={:#x}",
        fnv1a(&p2[..1024])
    );
    assert!(out.contains(&want2), "want {want2}\n{out}");
    // The guest's write reached the writable file, and only that file.
    let after0 = std::fs::read(&d0).unwrap();
    let wrote: Vec<u8> = (0..512).map(|i| b"AMPOULE-WROTE-THIS "[i % 19]).collect();
    assert_eq!(&after0[512..1024], &wrote[..]);
    assert_eq!(&after0[..512], &p0[..512]);
    assert_eq!(&after0[1024..], &p0[1024..]);
    assert_eq!(std::fs::read(&d1).unwrap(), p1);
    assert_eq!(std::fs::read(&d2).unwrap(), p2);
    assert!(!api.exists());
}

#[test]
fn virtio_used_ring_and_config_change_interrupts_reach_the_guest_through_the_ioapic() {
    if !have_kvm("virtio_used_ring_and_config_change_interrupts_reach_the_guest_through_the_ioapic")
    {
        return;
    }
    let s = Scratch::new("irq");
    let d0 = s.path("a.img");
    let d1 = s.path("b.img");
    std::fs::write(&d0, pattern(4096, 3, 1)).unwrap();
    std::fs::write(&d1, pattern(8192, 5, 2)).unwrap();
    let api = s.path("api.sock");
    let log = s.path("serial.log");
    let k = guest("pvh");
    let mut child = VmmChild(
        Command::new(VMM)
            .args(["--kernel", k.to_str().unwrap(), "--cmdline", "t=irq"])
            .args(["--drive", &format!("path={}", d0.display())])
            .args(["--drive-slot", "id=later"])
            .args([
                "--api-sock",
                api.to_str().unwrap(),
                "--serial-log",
                log.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = wait_for_text(&log, "IRQ-WAIT", RUN_LIMIT);
    assert!(out.contains("IRQ used-ring read=0 delivered=1"), "{out}");
    let mut c = UnixStream::connect(&api).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(format!("fill-slot later {}\n", d1.display()).as_bytes())
        .unwrap();
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let status = child.wait(RUN_LIMIT);
    assert!(status.success(), "{status:?}");
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("IRQ config-change delivered=1 status=2 cap=16"),
        "{out}"
    );
}
