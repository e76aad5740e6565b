//! What Check reports about the guest: kernel release, CPUs, memory, uptime.

/// Guest uptime (CLOCK_BOOTTIME), milliseconds.
pub fn uptime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Online CPUs, from /sys/devices/system/cpu/online (e.g. `0-3`).
pub fn online_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(&s))
        .unwrap_or(1)
}

/// MemTotal from /proc/meminfo, bytes.
pub fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total(&s))
        .unwrap_or(0)
}

/// Counts the CPUs of a kernel cpu list such as `0-3,5,7-8`.
pub fn count_cpu_list(s: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().ok()?;
                let b: u32 = b.parse().ok()?;
                if b < a {
                    return None;
                }
                n = n.checked_add(b - a + 1)?;
            }
            None => {
                let _: u32 = part.parse().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    (n > 0).then_some(n)
}

/// `MemTotal:  245060 kB` -> bytes.
pub fn parse_meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut it = line["MemTotal:".len()..].split_ascii_whitespace();
    let kib: u64 = it.next()?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_ranges_and_singles_are_counted() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-3"), Some(4));
        assert_eq!(count_cpu_list("0-1,4,6-7\n"), Some(5));
    }

    #[test]
    fn malformed_cpu_lists_are_rejected() {
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
    }

    #[test]
    fn meminfo_total_is_converted_to_bytes() {
        let s = "MemTotal:         245060 kB\nMemFree:          200000 kB\n";
        assert_eq!(parse_meminfo_total(s), Some(245060 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }
}
