//! The guest's cgroup v2 figures of a container, as containerd's
//! `io.containerd.cgroups.v2.Metrics` (what `ctr task metrics` decodes).

use ampoule_runtime::pod::guest::Stats;
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

/// Type URL containerd's typeurl registry resolves for cgroup v2 metrics.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Builds the Metrics message from the agent's answer.
pub fn metrics(s: &Stats) -> Metrics {
    let mut mem = MemoryStat {
        usage: s.memory_usage,
        usage_limit: s.memory_limit,
        swap_usage: s.memory_swap_usage,
        swap_limit: s.memory_swap_limit,
        ..Default::default()
    };
    for (k, v) in &s.memory_stat {
        let v = *v;
        match k.as_str() {
            "anon" => mem.anon = v,
            "file" => mem.file = v,
            "kernel_stack" => mem.kernel_stack = v,
            "slab" => mem.slab = v,
            "sock" => mem.sock = v,
            "shmem" => mem.shmem = v,
            "file_mapped" => mem.file_mapped = v,
            "file_dirty" => mem.file_dirty = v,
            "file_writeback" => mem.file_writeback = v,
            "anon_thp" => mem.anon_thp = v,
            "inactive_anon" => mem.inactive_anon = v,
            "active_anon" => mem.active_anon = v,
            "inactive_file" => mem.inactive_file = v,
            "active_file" => mem.active_file = v,
            "unevictable" => mem.unevictable = v,
            "slab_reclaimable" => mem.slab_reclaimable = v,
            "slab_unreclaimable" => mem.slab_unreclaimable = v,
            "pgfault" => mem.pgfault = v,
            "pgmajfault" => mem.pgmajfault = v,
            "workingset_refault" => mem.workingset_refault = v,
            "workingset_activate" => mem.workingset_activate = v,
            "workingset_nodereclaim" => mem.workingset_nodereclaim = v,
            "pgrefill" => mem.pgrefill = v,
            "pgscan" => mem.pgscan = v,
            "pgsteal" => mem.pgsteal = v,
            "pgactivate" => mem.pgactivate = v,
            "pgdeactivate" => mem.pgdeactivate = v,
            "pglazyfree" => mem.pglazyfree = v,
            "pglazyfreed" => mem.pglazyfreed = v,
            "thp_fault_alloc" => mem.thp_fault_alloc = v,
            "thp_collapse_alloc" => mem.thp_collapse_alloc = v,
            _ => {}
        }
    }
    Metrics {
        pids: Some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            nr_periods: s.cpu_nr_periods,
            nr_throttled: s.cpu_nr_throttled,
            throttled_usec: s.cpu_throttled_usec,
            ..Default::default()
        })
        .into(),
        memory: Some(mem).into(),
        memory_events: Some(MemoryEvents {
            oom: s.oom_events,
            oom_kill: s.oom_kill_events,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The Metrics as the Any of a StatsResponse.
pub fn metrics_any(s: &Stats) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics(s).write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_land_in_their_fields() {
        let mut s = Stats {
            cpu_usage_usec: 10,
            cpu_user_usec: 6,
            cpu_system_usec: 4,
            memory_usage: 1 << 20,
            memory_limit: 1 << 30,
            pids_current: 3,
            pids_limit: 100,
            oom_kill_events: 1,
            ..Default::default()
        };
        s.memory_stat.insert("anon".into(), 4096);
        s.memory_stat.insert("unknown_key".into(), 1);
        let m = metrics(&s);
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.cpu.user_usec, 6);
        assert_eq!(m.memory.usage, 1 << 20);
        assert_eq!(m.memory.usage_limit, 1 << 30);
        assert_eq!(m.memory.anon, 4096);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory_events.oom_kill, 1);
        let any = metrics_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
