//! What the agent implements of the OCI runtime spec, as tables both sides
//! read: the agent builds containers from them (capability numbers) or
//! checks its code against them in its tests (namespaces, seccomp, mount
//! options), and the host's `ampoule features` reports them.

/// Capability names in number order (`CAP_CHOWN` = 0 ...): every capability
/// a container process may be given.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `linux.namespaces[].type` values the agent creates or joins (the time
/// namespace is refused).
pub const NAMESPACES: [&str; 7] = ["mount", "pid", "network", "ipc", "uts", "cgroup", "user"];

/// Seccomp actions the agent's filter compiler accepts (`SCMP_ACT_NOTIFY`
/// needs a listener, which it refuses).
pub const SECCOMP_ACTIONS: [&str; 8] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
];

/// Seccomp argument comparisons, all on the full 64 bits.
pub const SECCOMP_OPERATORS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// Seccomp architectures of an x86_64 guest: x86_64 syscalls are filtered
/// by the profile; x86 and x32 syscalls are accepted in a profile and
/// killed by the filter.
pub const SECCOMP_ARCHS: [&str; 3] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];

/// Seccomp filter flags the agent passes to the kernel.
pub const SECCOMP_FLAGS: [&str; 3] = [
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

/// Mount options the agent turns into mount flags or propagation. Anything
/// else in `mounts[].options` is passed to the filesystem as data, except
/// runc's `tmpcopyup`, `nosymfollow`, `idmap` and `ridmap`, which are not
/// implemented (ignored) and so not listed.
pub const MOUNT_OPTIONS: [&str; 33] = [
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "bind",
    "rbind",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// OCI hooks the agent runs in the guest, in the container's namespaces
/// (`agent/src/container/hooks.rs` names its hook kinds from this list):
/// their path must exist in the container's root filesystem. The other
/// four (`prestart`, `createRuntime`, `poststart`, `poststop`) run on the
/// host, in the `ampoule` CLI (`runtime/src/oci_hooks.rs`).
pub const GUEST_HOOKS: [&str; 2] = ["createContainer", "startContainer"];
