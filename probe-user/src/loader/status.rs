//! What each collector runs on: collector and hook names as users see them, and why a hook
//! was not used (a small enum `probe check` prints and tests match on).

/// Collector names, as they appear in `probe_collector_up{collector="..."}`.
pub mod names {
    /// Per-task CPU and run-queue totals, read by the task iterator on each collection.
    pub const CPU: &str = "cpu";
    /// Final totals of exiting threads (so processes that die between reads are counted).
    pub const CPU_EXIT: &str = "cpu_exit";
    /// Listening TCP ports per process (the zero-config instance rule).
    pub const PORTS: &str = "ports";
    /// cmdline, exe and cgroup path per process, from /proc.
    pub const PROCESS_TABLE: &str = "process_table";
    /// Block IO per process, device and operation (block-layer tracepoints).
    pub const BLOCK: &str = "block";
    /// Page-cache bytes dirtied per process (the writer of buffered writes).
    pub const BLOCK_DIRTY: &str = "block_dirty";
    /// TCP payload bytes per port and process.
    pub const TCP: &str = "tcp";
    /// TCP connections accepted and closed per listening port; listeners as they appear.
    pub const TCP_STATE: &str = "tcp_state";
    /// Retransmitted TCP segments.
    pub const TCP_RETRANSMIT: &str = "tcp_retransmit";
    /// RTT of connections to listening ports.
    pub const TCP_RTT: &str = "tcp_rtt";
    /// Run-queue latency histograms per thread (the scheduler's sched_info, at switch-out).
    pub const RUNQ: &str = "runq";
}

/// What one collector runs on, on this kernel.
#[derive(Clone, Debug)]
pub struct CollectorStatus {
    pub name: &'static str,
    /// The hook in use (`iter/task`, `tp_btf/sched_switch`, `procfs`, ...), if any works.
    pub hook: Option<&'static str>,
    /// Why other hooks were not used, or why the collector is down.
    pub notes: Vec<Note>,
    /// Not turned on: the flag that would. An off collector is not down (no
    /// probe_collector_up series, `off` in `probe check`).
    pub off: Option<&'static str>,
}

/// Why a hook was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookError {
    /// `--hooks.skip` names it.
    Skipped,
    /// The program is not in the embedded object (a build problem).
    MissingProgram(&'static str),
    /// The kernel refused to load or attach it: the verifier's or the syscall's reason.
    Kernel(String),
    /// The cgroup2 root the socket programs attach to cannot be opened.
    Cgroup(String),
    /// Its link could not be pinned (`--bpf.pin-path`).
    Pin(String),
    /// A part of another collector's program, which is not attached.
    Within(&'static str),
    /// /proc cannot be read.
    Proc(String),
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Skipped => write!(f, "skipped (--hooks.skip)"),
            Self::MissingProgram(p) => write!(f, "program {p} missing from the object"),
            Self::Kernel(e) | Self::Cgroup(e) | Self::Pin(e) => f.write_str(e),
            Self::Proc(e) => write!(f, "/proc is not readable: {e}"),
            Self::Within(c) => write!(f, "needs the program of {c}, which is not attached"),
        }
    }
}

/// One line of a collector's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A hook that was not used, why, and what it needs.
    Hook {
        hook: &'static str,
        error: HookError,
        needs: Option<&'static str>,
    },
    /// The object did not load: no hook was tried.
    Load(String),
    /// What the hook in use loses, why the collector is down, a map missing.
    Text(String),
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hook {
                hook,
                error: error @ HookError::Skipped,
                ..
            }
            | Self::Hook {
                hook,
                error,
                needs: None,
            } => write!(f, "{hook}: {error}"),
            Self::Hook {
                hook,
                error,
                needs: Some(needs),
            } => write!(f, "{hook}: {error} ({needs})"),
            Self::Load(s) | Self::Text(s) => f.write_str(s),
        }
    }
}

impl From<&str> for Note {
    fn from(s: &str) -> Self {
        Self::Text(s.to_string())
    }
}

impl CollectorStatus {
    pub(super) fn new(name: &'static str) -> Self {
        Self {
            name,
            hook: None,
            notes: Vec::new(),
            off: None,
        }
    }
    pub fn up(&self) -> bool {
        self.hook.is_some()
    }
}

/// Hook names, as `probe check`, `probe_collector_hook_info` and `--hooks.skip` spell them.
pub mod hooks {
    pub const TASK_ITER: &str = "iter/task";
    /// The exit hook where the kernel allows BPF trampolines: once per thread released.
    pub const EXIT_FENTRY: &str = "fentry/cgroup_release";
    /// The sched_switch program: the exit hook where trampolines are not allowed, and the
    /// run-queue histograms.
    pub const EXIT_BTF: &str = "tp_btf/sched_switch";
    pub const EXIT_RAW: &str = "raw_tp/sched_switch";
    pub const TASK_FILE_ITER: &str = "iter/task_file";
    /// Block IO, Linux 6.5+: block_io_start / block_io_done (+ block_rq_complete for bytes).
    pub const BLOCK_IO: &str = "raw_tp/block_io_start";
    /// Block IO fallback: block_rq_insert + block_rq_issue / block_rq_complete.
    pub const BLOCK_RQ: &str = "raw_tp/block_rq_issue";
    /// Dirtied page-cache bytes: writeback_dirty_folio (5.18+), writeback_dirty_page before.
    pub const DIRTY_FOLIO: &str = "raw_tp/writeback_dirty_folio";
    pub const DIRTY_PAGE: &str = "raw_tp/writeback_dirty_page";
    /// TCP bytes per process: at each collection, the counters of every TCP socket a process
    /// holds (iter/task_file, Linux 5.12+).
    pub const TCP_WALK: &str = "iter/task_file/tcp";
    /// TCP bytes fallback, per port only: cgroup_skb ingress/egress on the cgroup2 root.
    pub const TCP_CGROUP_SKB: &str = "cgroup_skb";
    pub const TCP_STATE: &str = "tp_btf/inet_sock_set_state";
    pub const TCP_RETRANSMIT: &str = "tp_btf/tcp_retransmit_skb";
    /// Not a hook of its own: the RTT part of the TCP walk (skipping it puts RTT on sock_ops).
    pub const RTT_WALK: &str = "rtt_walk";
    /// RTT fallback: callbacks of accepted connections, sock_ops on the cgroup2 root.
    pub const TCP_SOCKOPS: &str = "sock_ops";
    /// Not a hook of its own: the run-queue part of the sched_switch program (skipping it
    /// leaves the exit hook alone).
    pub const RUNQ: &str = "runq";
    pub const PROCFS: &str = "procfs";
    /// Names earlier releases used (old, new): `--hooks.skip` still takes them. TCP bytes were
    /// counted at every send and receive (sock_send_length, raw_tp then tp_btf) before they
    /// were read from the sockets' counters at each collection.
    pub const RENAMED: &[(&str, &str)] = &[
        ("raw_tp/sock_send_length", TCP_WALK),
        ("tp_btf/sock_send_length", TCP_WALK),
        ("raw_tp/inet_sock_set_state", TCP_STATE),
        ("raw_tp/tcp_retransmit_skb", TCP_RETRANSMIT),
    ];

    /// Every hook `--hooks.skip` accepts.
    pub const ALL: &[&str] = &[
        TASK_ITER,
        EXIT_FENTRY,
        EXIT_BTF,
        EXIT_RAW,
        TASK_FILE_ITER,
        BLOCK_IO,
        BLOCK_RQ,
        DIRTY_FOLIO,
        DIRTY_PAGE,
        TCP_WALK,
        TCP_CGROUP_SKB,
        TCP_STATE,
        TCP_RETRANSMIT,
        RTT_WALK,
        TCP_SOCKOPS,
        RUNQ,
    ];
}
