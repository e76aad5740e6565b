//! OCI `linux.seccomp`: the profile is checked and reduced to a [`Plan`] in
//! the agent (names resolved to x86_64 numbers), and compiled to one
//! classic-BPF program with `seccompiler` in the helper, which installs it
//! at runc's point: before the uid/capability change when the process has
//! no `noNewPrivileges` (installing then needs CAP_SYS_ADMIN), otherwise
//! right before execve.
//!
//! One program, in this order:
//! 1. the architecture check: anything but x86_64 (i386 `int 0x80`, or an
//!    x32 syscall number on x86_64) is killed, as libseccomp's bad-arch
//!    action does for an arch without rules; see [`Plan`] for x86/x32;
//! 2. runc's ENOSYS stub: a syscall number above every number the profile
//!    names gets ENOSYS instead of the default action (newer syscalls, so
//!    that libcs fall back), unless the default allows;
//! 3. one `seccompiler` segment per distinct rule action, most restrictive
//!    first (the kernel's precedence of actions), each "match -> action,
//!    no match -> next segment";
//! 4. the default action.
//!
//! One program, not one filter per action stacked: every filter installed
//! would already apply to the `seccomp(2)` installing the next one.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};

/// The kernel's limit on one classic-BPF program (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const FILTER_FLAG_TSYNC: u32 = 1;
const FILTER_FLAG_LOG: u32 = 2;
const FILTER_FLAG_SPEC_ALLOW: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: action {0} is not supported by the Ampoule agent")]
    UnsupportedAction(String),
    #[error("seccomp: listenerPath (SCMP_ACT_NOTIFY) is not supported by the Ampoule agent")]
    Listener,
    #[error("seccomp: syscall {name:?}: argument index {index} is out of range (0-5)")]
    ArgIndex { name: String, index: usize },
    #[error("seccomp: building the BPF program: {0}")]
    Build(String),
    #[error(
        "seccomp: the BPF program has {0} instructions, over the kernel's limit of {MAX_INSNS}"
    )]
    TooLarge(usize),
    #[error("seccomp: installing the filter: {0}")]
    Install(std::io::Error),
}

/// An action of the profile, as the kernel knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    // Declared in the kernel's order of precedence, most restrictive first:
    // segments are emitted in this order.
    KillProcess,
    KillThread,
    Trap,
    Errno(u32),
    Trace(u32),
    Log,
    Allow,
}

impl Action {
    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(e) => SeccompAction::Errno(e),
            Action::Trace(e) => SeccompAction::Trace(e),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }

    fn ret(self) -> u32 {
        self.to_seccompiler().into()
    }

    /// Whether the default action lets unknown syscalls run (no ENOSYS stub).
    fn permits(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }
}

/// A comparison of one argument (64 bits, as libseccomp compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// (arg & mask) == value
    MaskedEq {
        mask: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

/// One syscall rule: the action when every condition holds (no
/// condition: always).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub nr: i64,
    pub action: Action,
    pub conds: Vec<Cond>,
}

/// A checked profile, ready to compile. x86 and x32 in `architectures` are
/// accepted but their syscalls are killed rather than filtered by their own
/// numbers (see the module doc); other architectures can never run on an
/// x86_64 guest and are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub default_action: Action,
    pub rules: Vec<Rule>,
    /// The highest syscall number the profile names (runc's ENOSYS stub).
    pub max_nr: Option<i64>,
    /// SECCOMP_FILTER_FLAG_* bits.
    pub flags: u32,
    /// Names unknown on x86_64, skipped as runc does.
    pub skipped: Vec<String>,
}

fn action(
    a: LinuxSeccompAction,
    errno_ret: Option<u32>,
    default_errno: Option<u32>,
) -> Result<Action, SeccompError> {
    let eperm = libc::EPERM as u32;
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            Action::Errno(errno_ret.or(default_errno).unwrap_or(eperm))
        }
        // libseccomp's SCMP_ACT_KILL is KILL_THREAD.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        // Without a tracer the kernel fails the syscall with ENOSYS.
        LinuxSeccompAction::ScmpActTrace => {
            Action::Trace(errno_ret.or(default_errno).unwrap_or(eperm))
        }
        LinuxSeccompAction::ScmpActLog => Action::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction("SCMP_ACT_NOTIFY".into()))
        }
    })
}

/// The x86_64 number of a syscall name, from the `syscalls` crate's table
/// (generated from the kernel's syscall_64.tbl).
pub fn syscall_nr(name: &str) -> Option<i64> {
    name.parse::<syscalls::x86_64::Sysno>()
        .ok()
        .map(|s| i64::from(s.id()))
}

/// Checks an OCI profile and turns it into a plan.
pub fn plan(s: &LinuxSeccomp) -> Result<Plan, SeccompError> {
    if s.listener_path().is_some() {
        return Err(SeccompError::Listener);
    }
    // x86_64 (native) is always filtered, as libseccomp always adds the
    // native arch; x86 and x32 are killed (see Plan); other architectures
    // never run on an x86_64 guest. Unknown names fail parsing config.json.
    let mut flags = 0;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FILTER_FLAG_SPEC_ALLOW,
            // Only meaningful with a notify listener, which is refused.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    let default_errno = s.default_errno_ret();
    let default_action = action(s.default_action(), default_errno, None)?;
    let mut rules = Vec::new();
    let mut skipped = Vec::new();
    let mut max_nr = None;
    for call in s.syscalls().iter().flatten() {
        let act = action(call.action(), call.errno_ret(), None)?;
        for name in call.names() {
            let Some(nr) = syscall_nr(name) else {
                skipped.push(name.clone());
                continue;
            };
            max_nr = max_nr.max(Some(nr));
            let mut conds = Vec::new();
            for a in call.args().iter().flatten() {
                let index = u8::try_from(a.index())
                    .ok()
                    .filter(|i| *i <= 5)
                    .ok_or_else(|| SeccompError::ArgIndex {
                        name: name.clone(),
                        index: a.index(),
                    })?;
                let (op, value) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => (Op::Eq, a.value()),
                    LinuxSeccompOperator::ScmpCmpNe => (Op::Ne, a.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (Op::Lt, a.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (Op::Le, a.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (Op::Gt, a.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (Op::Ge, a.value()),
                    // libseccomp: (arg & value) == valueTwo. The spec's
                    // Go types omit a valueTwo of 0 (omitempty), so an
                    // absent one is 0: engines' `clone` rule
                    // (no namespace flag set) arrives that way.
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        (Op::MaskedEq { mask: a.value() }, a.value_two().unwrap_or(0))
                    }
                };
                conds.push(Cond { index, op, value });
            }
            // As runc: the same action as the default needs no rule.
            if act == default_action {
                continue;
            }
            // As runc: several conditions on one argument index become
            // alternatives (one rule each); otherwise they all must hold.
            let mut seen = [0u8; 6];
            for c in &conds {
                seen[usize::from(c.index)] += 1;
            }
            if seen.iter().any(|n| *n > 1) {
                for c in conds {
                    rules.push(Rule {
                        nr,
                        action: act,
                        conds: vec![c],
                    });
                }
            } else {
                rules.push(Rule {
                    nr,
                    action: act,
                    conds,
                });
            }
        }
    }
    Ok(Plan {
        default_action,
        rules,
        max_nr,
        flags,
        skipped,
    })
}

/// A condition that can never hold (a masked compare with bits outside the
/// mask), which libseccomp never matches but seccompiler would, as it
/// masks the value too.
fn impossible(c: &Cond) -> bool {
    matches!(c.op, Op::MaskedEq { mask } if c.value & !mask != 0)
}

fn condition(c: &Cond) -> Result<SeccompCondition, SeccompError> {
    let op = match c.op {
        Op::Eq => SeccompCmpOp::Eq,
        Op::Ne => SeccompCmpOp::Ne,
        Op::Lt => SeccompCmpOp::Lt,
        Op::Le => SeccompCmpOp::Le,
        Op::Gt => SeccompCmpOp::Gt,
        Op::Ge => SeccompCmpOp::Ge,
        Op::MaskedEq { mask } => SeccompCmpOp::MaskedEq(mask),
    };
    SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, c.value)
        .map_err(|e| SeccompError::Build(e.to_string()))
}

/// seccompiler's rules for one action: syscall -> alternatives (an empty
/// list: unconditional).
fn rules_for(plan: &Plan, act: Action) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for r in plan.rules.iter().filter(|r| r.action == act) {
        if r.conds.iter().any(impossible) {
            continue;
        }
        let entry = map.entry(r.nr).or_insert_with(|| Some(Vec::new()));
        if r.conds.is_empty() {
            // Unconditional wins over any conditional alternative.
            *entry = None;
            continue;
        }
        if let Some(list) = entry {
            let conds = r
                .conds
                .iter()
                .map(condition)
                .collect::<Result<Vec<_>, _>>()?;
            list.push(SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))?);
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

/// The BPF program of a plan.
pub fn compile(plan: &Plan) -> Result<Vec<libc::sock_filter>, SeccompError> {
    use seccompiler::sock_filter as SF;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // struct seccomp_data: nr at 0, arch at 4.
    let kill = Action::KillProcess.ret();
    let mut prog = vec![
        stmt(LD_ABS_W, 4),
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET, kill),
        stmt(LD_ABS_W, 0),
        jump(JGE, X32_SYSCALL_BIT, 0, 1),
        stmt(RET, kill),
    ];
    if let (Some(max), false) = (plan.max_nr, plan.default_action.permits()) {
        let max = u32::try_from(max).map_err(|_| SeccompError::Build("syscall number".into()))?;
        prog.push(jump(JGT, max, 0, 1));
        prog.push(stmt(RET, Action::Errno(libc::ENOSYS as u32).ret()));
    }
    let mut actions: Vec<Action> = plan.rules.iter().map(|r| r.action).collect();
    actions.sort();
    actions.dedup();
    for act in actions {
        let rules = rules_for(plan, act)?;
        if rules.is_empty() {
            continue;
        }
        // "No match" returns a sentinel that is neither this action nor
        // the arch check's kill; it becomes a jump to the next segment.
        let sentinel = if matches!(act, Action::Trap) {
            Action::Log
        } else {
            Action::Trap
        };
        let filter = SeccompFilter::new(
            rules,
            sentinel.to_seccompiler(),
            act.to_seccompiler(),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(e.to_string()))?;
        let seg: Vec<SF> = seccompiler::BpfProgram::try_from(filter)
            .map_err(|e| SeccompError::Build(e.to_string()))?;
        let len = seg.len();
        for (i, ins) in seg.into_iter().enumerate() {
            if ins.code == RET && ins.k == sentinel.ret() {
                let skip = u32::try_from(len - i - 1).map_err(|_| SeccompError::TooLarge(len))?;
                prog.push(stmt(JA, skip));
            } else {
                prog.push(jump(ins.code, ins.k, ins.jt, ins.jf));
            }
        }
    }
    prog.push(stmt(RET, plan.default_action.ret()));
    if prog.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge(prog.len()));
    }
    Ok(prog)
}

/// Installs a compiled program in the calling thread (its flags first; on
/// EINVAL, as with a kernel that lacks a flag, without them).
pub fn install(prog: &[libc::sock_filter], flags: u32) -> Result<(), SeccompError> {
    let len = u16::try_from(prog.len()).map_err(|_| SeccompError::TooLarge(prog.len()))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    let call = |flags: u32| {
        // SAFETY: seccomp(2) reads the sock_fprog on this frame and the
        // `len` instructions it points at, which `prog` keeps alive.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                flags as libc::c_uint,
                &fprog as *const libc::sock_fprog,
            )
        };
        if r == 0 {
            Ok(())
        } else if r > 0 {
            // TSYNC: a thread that could not be synchronised.
            Err(std::io::Error::other(format!(
                "thread {r} could not be synchronised"
            )))
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match call(flags) {
        Err(e) if flags != 0 && e.raw_os_error() == Some(libc::EINVAL) => call(0),
        r => r,
    }
    .map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).expect("test profile parses")
    }

    /// Runs the BPF program on one syscall, as the kernel would.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let word = |off: u32| {
            let o = off as usize;
            u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let ins = prog[pc];
            let code = u32::from(ins.code);
            match code & 0x07 {
                libc::BPF_LD => a = word(ins.k),
                libc::BPF_ALU if code & 0xf0 == libc::BPF_AND => a &= ins.k,
                libc::BPF_JMP => {
                    let op = code & 0xf0;
                    if op == libc::BPF_JA {
                        pc += ins.k as usize;
                    } else {
                        let t = match op {
                            libc::BPF_JEQ => a == ins.k,
                            libc::BPF_JGT => a > ins.k,
                            libc::BPF_JGE => a >= ins.k,
                            libc::BPF_JSET => a & ins.k != 0,
                            _ => panic!("unexpected jump {code:#x}"),
                        };
                        pc += usize::from(if t { ins.jt } else { ins.jf });
                    }
                }
                libc::BPF_RET => return ins.k,
                _ => panic!("unexpected instruction {code:#x}"),
            }
            pc += 1;
        }
    }

    fn eval(plan: &Plan, name: &str, args: [u64; 6]) -> u32 {
        let prog = compile(plan).expect("compiles");
        let nr = syscall_nr(name).expect("known syscall") as u32;
        run(&prog, AUDIT_ARCH_X86_64, nr, args)
    }

    const ALLOW: u32 = 0x7fff_0000;
    fn errno(e: i32) -> u32 {
        0x0005_0000 | e as u32
    }

    #[test]
    fn allow_default_with_errno_rule_denies_only_that_syscall() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "mkdir", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "mkdirat", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "getpid", [0; 6]), ALLOW);
        // Above the highest named number: still the (allowing) default.
        assert_eq!(eval(&p, "mseal", [0; 6]), ALLOW);
    }

    #[test]
    fn errno_action_without_errno_ret_is_eperm_and_default_errno_ret_applies_to_default() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}
            ]
        })))
        .expect("plan");
        assert_eq!(p.default_action, Action::Errno(38));
        assert_eq!(eval(&p, "read", [0; 6]), ALLOW);
        assert_eq!(eval(&p, "mkdir", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "getpid", [0; 6]), errno(38));
    }

    #[test]
    fn every_action_maps_to_its_kernel_return_value() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_KILL"},
                {"names": ["rmdir"], "action": "SCMP_ACT_KILL_THREAD"},
                {"names": ["unlink"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["chdir"], "action": "SCMP_ACT_TRAP"},
                {"names": ["fchdir"], "action": "SCMP_ACT_TRACE"},
                {"names": ["getcwd"], "action": "SCMP_ACT_LOG"},
                {"names": ["rename"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "mkdir", [0; 6]), libc::SECCOMP_RET_KILL_THREAD);
        assert_eq!(eval(&p, "rmdir", [0; 6]), libc::SECCOMP_RET_KILL_THREAD);
        assert_eq!(eval(&p, "unlink", [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(eval(&p, "chdir", [0; 6]), libc::SECCOMP_RET_TRAP);
        assert_eq!(
            eval(&p, "fchdir", [0; 6]),
            libc::SECCOMP_RET_TRACE | libc::EPERM as u32
        );
        assert_eq!(eval(&p, "getcwd", [0; 6]), libc::SECCOMP_RET_LOG);
        assert_eq!(eval(&p, "rename", [0; 6]), errno(13));
        assert_eq!(eval(&p, "read", [0; 6]), ALLOW);
    }

    #[test]
    fn args_filter_compares_all_64_bits_with_every_operator() {
        let big = 0x1_0000_0005u64;
        let rule = |op: &str, v: u64| {
            serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": v, "op": op}]})
        };
        for (op, v, yes, no) in [
            ("SCMP_CMP_EQ", big, big, 5),
            ("SCMP_CMP_NE", big, 5, big),
            ("SCMP_CMP_LT", big, 5, big),
            ("SCMP_CMP_LE", big, big, big + 1),
            ("SCMP_CMP_GT", big, big + 1, big),
            ("SCMP_CMP_GE", big, big, 0xffff_ffff),
        ] {
            let p = plan(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(op, v)]
            })))
            .expect("plan");
            assert_eq!(
                eval(&p, "personality", [yes, 0, 0, 0, 0, 0]),
                errno(1),
                "{op} {yes:#x}"
            );
            assert_eq!(
                eval(&p, "personality", [no, 0, 0, 0, 0, 0]),
                ALLOW,
                "{op} {no:#x}"
            );
        }
    }

    #[test]
    fn masked_eq_uses_value_as_mask_and_value_two_as_datum() {
        // Docker's clone rule: allowed unless a namespace flag is set.
        let ns = 0x7E02_0000u64;
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": ns, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
            ]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            eval(
                &p,
                "clone",
                [0x11 | libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]
            ),
            errno(libc::EPERM)
        );
        // A datum with bits outside the mask never matches (libseccomp).
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 0xff, "valueTwo": 0x100, "op": "SCMP_CMP_MASKED_EQ"}]}]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "clone", [0x100, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&p, "clone", [0, 0, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn masked_eq_without_value_two_compares_with_zero_as_the_go_types_omit_it() {
        // containerd's clone rule as it reaches config.json: valueTwo 0 is
        // dropped by `omitempty`.
        let ns = 0x7E02_0000u64;
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": ns, "op": "SCMP_CMP_MASKED_EQ"}]}]
        })))
        .expect("an absent valueTwo is 0, not an error");
        assert_eq!(
            p.rules[0].conds,
            vec![Cond {
                index: 0,
                op: Op::MaskedEq { mask: ns },
                value: 0
            }]
        );
        assert_eq!(eval(&p, "clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            eval(&p, "clone", [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
    }

    const CONTAINERD_DEFAULT: &str = include_str!("testdata/seccomp-containerd-amd64.json");
    const PODMAN_DEFAULT: &str = include_str!("testdata/seccomp-podman-amd64.json");

    fn fixture(json: &str) -> Plan {
        let s: LinuxSeccomp = serde_json::from_str(json).expect("fixture parses");
        plan(&s).expect("fixture plans")
    }

    #[test]
    fn containerds_default_profile_compiles_and_confines_clone_and_clone3() {
        // As written to config.json: no valueTwo anywhere.
        assert!(!CONTAINERD_DEFAULT.contains("valueTwo"));
        let p = fixture(CONTAINERD_DEFAULT);
        let prog = compile(&p).expect("compiles");
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
        // Names of other architectures are skipped, not refused.
        assert!(
            p.skipped.iter().any(|n| n == "socketcall"),
            "{:?}",
            p.skipped
        );
        assert_eq!(eval(&p, "read", [0; 6]), ALLOW);
        assert_eq!(eval(&p, "arch_prctl", [0; 6]), ALLOW);
        let sigchld = libc::SIGCHLD as u64;
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(eval(&p, "clone", [sigchld, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&p, "clone", [thread, 0, 0, 0, 0, 0]), ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            assert_eq!(
                eval(&p, "clone", [sigchld | flag as u64, 0, 0, 0, 0, 0]),
                errno(libc::EPERM),
                "{flag:#x}"
            );
        }
        // ENOSYS, so that libcs fall back to clone.
        assert_eq!(eval(&p, "clone3", [0; 6]), errno(libc::ENOSYS));
        assert_eq!(eval(&p, "mount", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "personality", [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            eval(&p, "personality", [1, 0, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
    }

    #[test]
    fn podmans_default_profile_compiles_with_its_default_errno_and_socket_rules() {
        let p = fixture(PODMAN_DEFAULT);
        let prog = compile(&p).expect("compiles");
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
        assert_eq!(p.default_action, Action::Errno(libc::ENOSYS as u32));
        assert_eq!(eval(&p, "read", [0; 6]), ALLOW);
        assert_eq!(eval(&p, "clone3", [0; 6]), ALLOW);
        // Not named by the profile: its defaultErrnoRet.
        assert_eq!(eval(&p, "add_key", [0; 6]), errno(libc::ENOSYS));
        // Named with errnoRet 1.
        assert_eq!(eval(&p, "ptrace", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "kexec_load", [0; 6]), errno(libc::EPERM));
        // Without CAP_AUDIT_WRITE: netlink audit sockets get EINVAL, every
        // other socket is allowed.
        let (af_netlink, sock_raw, netlink_audit) = (16u64, 3u64, 9u64);
        assert_eq!(
            eval(&p, "socket", [af_netlink, sock_raw, netlink_audit, 0, 0, 0]),
            errno(libc::EINVAL)
        );
        assert_eq!(
            eval(&p, "socket", [af_netlink, sock_raw, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(eval(&p, "socket", [2, 1, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn conditions_on_different_args_all_hold_and_on_one_arg_are_alternatives() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]}
            ]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "socket", [1, 2, 0, 0, 0, 0]), errno(1));
        assert_eq!(eval(&p, "socket", [1, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&p, "socket", [2, 2, 0, 0, 0, 0]), ALLOW);
        assert_eq!(eval(&p, "kill", [0, 9, 0, 0, 0, 0]), errno(1));
        assert_eq!(eval(&p, "kill", [0, 15, 0, 0, 0, 0]), errno(1));
        assert_eq!(eval(&p, "kill", [0, 1, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn unknown_syscall_names_are_skipped_and_the_rest_applies() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_syscall", "mkdir", "socketcall"], "action": "SCMP_ACT_ERRNO"}]
        })))
        .expect("plan");
        // socketcall exists on i386 only.
        assert_eq!(p.skipped, vec!["no_such_syscall", "socketcall"]);
        assert_eq!(eval(&p, "mkdir", [0; 6]), errno(1));
    }

    #[test]
    fn syscalls_newer_than_the_profile_get_enosys_unless_the_default_allows() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "openat2"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .expect("plan");
        assert_eq!(eval(&p, "openat2", [0; 6]), ALLOW);
        assert_eq!(eval(&p, "write", [0; 6]), errno(libc::EPERM));
        assert_eq!(eval(&p, "mseal", [0; 6]), errno(libc::ENOSYS));
    }

    #[test]
    fn other_architectures_and_x32_numbers_are_killed() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        })))
        .expect("plan");
        let prog = compile(&p).expect("compiles");
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(
            run(&prog, AUDIT_ARCH_I386, 39, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        let x32_mkdir = X32_SYSCALL_BIT | 83;
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, x32_mkdir, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn unsupported_profiles_are_rejected_with_a_reason() {
        let notify = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        })));
        assert!(
            matches!(notify, Err(SeccompError::UnsupportedAction(a)) if a == "SCMP_ACT_NOTIFY")
        );
        let listener = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"
        })));
        assert!(matches!(listener, Err(SeccompError::Listener)));
        let index = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        })));
        assert!(matches!(
            index,
            Err(SeccompError::ArgIndex { index: 6, .. })
        ));
        // Unknown operators and architectures fail parsing config.json.
        let op: Result<LinuxSeccomp, _> = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}]
        }));
        assert!(op.is_err());
        let arch: Result<LinuxSeccomp, _> = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]
        }));
        assert!(arch.is_err());
    }

    #[test]
    fn flags_map_to_seccomp_filter_flags() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
        })))
        .expect("plan");
        assert_eq!(p.flags, 7);
    }

    #[test]
    fn a_docker_sized_profile_fits_the_kernel_limit() {
        let names: Vec<String> = syscalls::x86_64::Sysno::iter()
            .map(|s| s.name().to_string())
            .collect();
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
        })))
        .expect("plan");
        let prog = compile(&p).expect("compiles");
        assert!(prog.len() <= MAX_INSNS, "{}", prog.len());
        assert_eq!(eval(&p, "read", [0; 6]), ALLOW);
    }

    #[test]
    fn a_program_over_the_kernel_limit_is_refused_with_its_size() {
        let names: Vec<String> = syscalls::x86_64::Sysno::iter()
            .map(|s| s.name().to_string())
            .collect();
        let with_arg = |action: &str, v: u64| {
            serde_json::json!({"names": names, "action": action,
                "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]})
        };
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [with_arg("SCMP_ACT_ERRNO", 1), with_arg("SCMP_ACT_LOG", 2)]
        })))
        .expect("plan");
        let e = compile(&p);
        assert!(
            matches!(e, Err(SeccompError::TooLarge(n)) if n > MAX_INSNS),
            "{e:?}"
        );
    }

    #[test]
    fn the_kernel_accepts_the_program_and_applies_it() {
        let p = plan(&profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]
        })))
        .expect("plan");
        let prog = compile(&p).expect("compiles");
        // SAFETY: the child only makes raw syscalls and _exits, which is
        // safe after fork in a multi-threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: prctl, syscall and _exit with integer arguments.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let code = if install(&prog, p.flags).is_err() {
                    1
                } else if libc::syscall(libc::SYS_getppid) != -1 {
                    2
                } else if *libc::__errno_location() != 42 {
                    3
                } else if libc::syscall(libc::SYS_getpid) <= 0 {
                    4
                } else {
                    0
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing to a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn the_shared_seccomp_tables_are_what_plan_accepts() {
        use ampoule_agent_api::features::{
            SECCOMP_ACTIONS, SECCOMP_ARCHS, SECCOMP_FLAGS, SECCOMP_OPERATORS,
        };
        for act in SECCOMP_ACTIONS.iter().chain(&["SCMP_ACT_NOTIFY"]) {
            let p = plan(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": act}]
            })));
            assert_eq!(p.is_ok(), SECCOMP_ACTIONS.contains(act), "{act}");
        }
        for op in SECCOMP_OPERATORS {
            let p = plan(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": SECCOMP_ARCHS,
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 1, "value": 7, "valueTwo": 7, "op": op}]}]
            })))
            .expect(op);
            assert_eq!(p.rules.len(), 1, "{op}");
        }
        for flag in SECCOMP_FLAGS {
            let p = plan(&profile(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]
            })))
            .expect(flag);
            assert_ne!(p.flags, 0, "{flag} reaches the kernel");
        }
    }
}
