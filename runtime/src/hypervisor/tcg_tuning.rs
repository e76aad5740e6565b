//! Kernel parameters that shorten a guest's boot under QEMU's TCG.
//!
//! Measured on Linux 6.1 under TCG (see the guest image's notes): the kernel
//! spends most of its boot calibrating clocks that software emulation makes
//! slow to calibrate. The host knows the answers, so it hands them over:
//!
//! - `tsc_early_khz=<host TSC kHz>` (measured once per process): under TCG the guest's TSC runs at the
//!   host's rate; this skips TSC and delay-loop calibration (~110 ms).
//! - `tsc=reliable`: the clocksource watchdog otherwise marks the TSC
//!   unstable under load and falls back to a 10 ms jiffies clock.
//! - `no_timer_check`: skips the timer-interrupt check (~50 ms).
//! - `noreplace-smp`: no patching of SMP alternatives for a single CPU
//!   (~45-80 ms; nothing to patch with several).
//! - `noapictimer` with one vCPU only: LAPIC timer calibration and its check
//!   take ~240 ms; one vCPU runs fine on the PIT. With several vCPUs each
//!   needs its LAPIC timer, so they keep it.
//!
//! Only for TCG: under KVM the kernel gets its clock from kvmclock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The extra kernel parameters for a TCG guest with `vcpus` vCPUs, given the
/// host's TSC rate (`None` when it could not be measured: the parameters that
/// need it are left out).
pub fn tcg_kernel_params(vcpus: u32, tsc_khz: Option<u64>) -> Vec<String> {
    let mut params = Vec::with_capacity(5);
    if let Some(khz) = tsc_khz {
        params.push(format!("tsc_early_khz={khz}"));
        params.push("tsc=reliable".to_string());
    }
    params.push("no_timer_check".to_string());
    params.push("noreplace-smp".to_string());
    if vcpus == 1 {
        params.push("noapictimer".to_string());
    }
    params
}

/// The host's TSC rate in kHz, measured once per process (5 ms). Nothing is
/// written to disk: a sandbox leaves no file behind.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure_tsc_khz)
}

/// A measured value, if it is a plausible TSC rate (100 MHz to 10 GHz).
fn parse_khz(text: &str) -> Option<u64> {
    let khz: u64 = text.trim().parse().ok()?;
    (100_000..=10_000_000).contains(&khz).then_some(khz)
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter; it has no memory
    // effects and every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks over a 5 ms sleep timed by the monotonic clock.
#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(5));
    let (t1, c1) = (Instant::now(), rdtsc());
    let ns = t1.duration_since(t0).as_nanos() as u64;
    let khz = c1.checked_sub(c0)?.checked_mul(1_000_000)? / ns.max(1);
    parse_khz(&khz.to_string())
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vcpu_gets_noapictimer_and_several_keep_their_lapic_timers() {
        let one = tcg_kernel_params(1, Some(2_596_150));
        assert_eq!(
            one,
            [
                "tsc_early_khz=2596150",
                "tsc=reliable",
                "no_timer_check",
                "noreplace-smp",
                "noapictimer"
            ]
        );
        let two = tcg_kernel_params(2, Some(2_596_150));
        assert!(!two.iter().any(|p| p == "noapictimer"));
        assert!(two.iter().any(|p| p == "tsc_early_khz=2596150"));
    }

    #[test]
    fn unknown_tsc_rate_leaves_out_the_tsc_parameters() {
        let p = tcg_kernel_params(1, None);
        assert!(!p.iter().any(|p| p.starts_with("tsc")));
        assert!(p.iter().any(|p| p == "no_timer_check"));
    }

    #[test]
    fn implausible_rates_are_rejected() {
        assert_eq!(parse_khz("2596150\n"), Some(2_596_150));
        assert_eq!(parse_khz("12"), None);
        assert_eq!(parse_khz("garbage"), None);
        assert_eq!(parse_khz("99999999999"), None);
    }

    #[test]
    fn measured_rate_is_plausible_and_stable_within_a_process() {
        let first = host_tsc_khz();
        assert!(first.is_some(), "x86_64 hosts have a TSC");
        assert_eq!(host_tsc_khz(), first);
    }
}
