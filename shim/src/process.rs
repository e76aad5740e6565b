//! Exit statuses as containerd expects them, from the agent's answers or
//! from the VM's death.

use ampoule_runtime::pod::guest::ProcessExit;

/// Exit status of every process of a pod whose VM died under it.
pub const VM_DIED_EXIT_STATUS: u32 = 255;

/// The status containerd reports for a process the agent saw end: the exit
/// code, or 128 + the signal for a death by signal (as a shell shows it).
pub fn exit_status(resp: &ProcessExit) -> u32 {
    if resp.signal > 0 {
        return 128 + resp.signal as u32;
    }
    match resp.exit_status {
        s @ 0..=255 => s as u32,
        _ => VM_DIED_EXIT_STATUS,
    }
}

/// Status of the processes of a pod whose VM ended: killed by a signal
/// shows as 128 + signal, anything else as 255.
pub fn vm_death_status(vm_signal: Option<i32>) -> u32 {
    match vm_signal {
        Some(s) if s > 0 && s < 128 => 128 + s as u32,
        _ => VM_DIED_EXIT_STATUS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(code: i32, signal: i32) -> ProcessExit {
        ProcessExit {
            exit_status: code,
            signal,
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(exit_status(&resp(0, 0)), 0);
        assert_eq!(exit_status(&resp(7, 0)), 7);
        assert_eq!(exit_status(&resp(255, 0)), 255);
    }

    #[test]
    fn signals_become_128_plus() {
        assert_eq!(exit_status(&resp(137, 9)), 137);
        assert_eq!(exit_status(&resp(0, 15)), 143);
    }

    #[test]
    fn nonsense_from_the_guest_is_255() {
        assert_eq!(exit_status(&resp(-1, 0)), 255);
        assert_eq!(exit_status(&resp(4096, 0)), 255);
    }

    #[test]
    fn vm_death() {
        assert_eq!(vm_death_status(Some(9)), 137);
        assert_eq!(vm_death_status(None), 255);
        assert_eq!(vm_death_status(Some(0)), 255);
    }
}
