//! Loads the embedded kernel object and attaches each collector on its own.
//!
//! A hook that fails to load disables only its collector: the failure is logged, kept in
//! [`CollectorStatus`] (shown by `probe check` and as `probe_collector_up`), and the rest go on.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, Iter, RawTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use probe_common::{
    config::{Offsets, OFFSETS_GLOBAL, SELF_TGID_GLOBAL},
    cpu::{
        DeadKey, DeadTotals, DEAD_MAP, EXIT_BTF_PROGRAM, EXIT_RAW_PROGRAM, EXIT_STATS_MAP,
        TASK_ITER_PROGRAM,
    },
    ports::LISTEN_ITER_PROGRAM,
};
use tracing::{info, warn};

use crate::{
    btf::{self, KernelBtf},
    sys::{self, IterLink, MountOutcome},
};

/// The kernel programs, built by build.rs for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

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
}

/// What one collector runs on, on this kernel.
#[derive(Clone, Debug)]
pub struct CollectorStatus {
    pub name: &'static str,
    /// The hook in use (`iter/task`, `tp_btf/sched_switch`, `procfs`, ...), if any works.
    pub hook: Option<&'static str>,
    /// Why other hooks were not used, or why the collector is down.
    pub notes: Vec<String>,
}

impl CollectorStatus {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            hook: None,
            notes: Vec::new(),
        }
    }
    pub fn up(&self) -> bool {
        self.hook.is_some()
    }
}

/// Everything loaded into the kernel. Dropping it detaches every program.
pub struct Kernel {
    pub ebpf: Option<Ebpf>,
    pub task_iter: Option<IterLink>,
    pub listen_iter: Option<IterLink>,
    pub dead_tasks: Option<BpfHashMap<MapData, DeadKey, DeadTotals>>,
    pub exit_stats: Option<PerCpuArray<MapData, u64>>,
    /// Names of the programs that are attached (for BPF run-time statistics).
    pub attached: Vec<&'static str>,
    pub statuses: Vec<CollectorStatus>,
    /// Log records of the kernel programs; `serve` drains them (see [`spawn_log_drain`]).
    pub logger: Option<KernelLogger>,
    /// Notes about the environment (mounts, BTF fields, statistics) for `probe check`.
    pub environment: Vec<String>,
    /// Keeps BPF_ENABLE_STATS on while the daemon runs.
    _stats: Option<OwnedFd>,
}

impl Kernel {
    pub fn status(&self, name: &str) -> Option<&CollectorStatus> {
        self.statuses.iter().find(|s| s.name == name)
    }
}

/// Sizes of kernel maps that depend on the host.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the dead-thread map: processes that may lose threads between collections.
    pub dead_map_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dead_map_entries: probe_common::cpu::DEAD_MAP_ENTRIES,
        }
    }
}

/// Loads and attaches everything that works here. Never fails as a whole: a kernel on which
/// nothing loads gives a [`Kernel`] whose collectors are all down, with the reasons.
pub fn load(opts: &LoadOptions) -> Kernel {
    let mut env = Vec::new();
    for (fstype, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        match sys::ensure_mounted(fstype, Path::new(target)) {
            Ok(MountOutcome::Mounted) => {
                info!(fstype, target, "mounted (it was not mounted)");
                env.push(format!("mounted {fstype} at {target}"));
            }
            Ok(MountOutcome::AlreadyMounted) => {}
            // None of the hooks in use needs them mounted; say so and go on.
            Err(e) => {
                info!(fstype, target, error = %e, "not mounted and cannot mount (not needed by the hooks in use)");
                env.push(format!(
                    "{fstype} is not mounted at {target} and cannot be mounted: {e}"
                ));
            }
        }
    }

    let mut cpu = CollectorStatus::new(names::CPU);
    let mut cpu_exit = CollectorStatus::new(names::CPU_EXIT);
    let mut ports = CollectorStatus::new(names::PORTS);
    let mut kernel = Kernel {
        ebpf: None,
        task_iter: None,
        listen_iter: None,
        dead_tasks: None,
        exit_stats: None,
        attached: Vec::new(),
        statuses: Vec::new(),
        logger: None,
        environment: Vec::new(),
        _stats: None,
    };

    let prepared = prepare(opts, &mut env);
    match prepared {
        Ok((mut ebpf, aya_btf)) => {
            // Must exist before programs load: they reference its map.
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => kernel.logger = Some(logger),
                Err(e) => tracing::debug!(error = %e, "no kernel log map"),
            }
            attach_task_iter(&mut ebpf, &aya_btf, &mut cpu, &mut kernel);
            attach_exit_hook(&mut ebpf, &aya_btf, &mut cpu_exit, &mut kernel);
            attach_listen_iter(&mut ebpf, &aya_btf, &mut ports, &mut kernel);
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => kernel._stats = Some(fd),
                // Without CAP_SYS_ADMIN; the host may have turned statistics on for everyone.
                Err(_) if sysctl_bpf_stats_enabled() => {}
                Err(e) => env.push(format!(
                    "BPF run-time statistics unavailable ({e}): needs CAP_SYS_ADMIN or sysctl kernel.bpf_stats_enabled=1"
                )),
            }
            kernel.ebpf = Some(ebpf);
        }
        Err(reason) => {
            for s in [&mut cpu, &mut cpu_exit, &mut ports] {
                s.notes.push(reason.clone());
            }
        }
    }
    if ports.hook.is_none() {
        ports.hook = Some("procfs");
        ports
            .notes
            .push("using /proc/net/tcp{,6} and /proc/<pid>/fd instead (slower)".into());
    }
    let mut table = CollectorStatus::new(names::PROCESS_TABLE);
    match std::fs::read_dir("/proc") {
        Ok(_) => table.hook = Some("procfs"),
        Err(e) => table.notes.push(format!("/proc is not readable: {e}")),
    }
    for s in [&cpu, &cpu_exit, &ports, &table] {
        if s.up() {
            info!(collector = s.name, hook = s.hook, notes = ?s.notes, "collector up");
        } else {
            warn!(collector = s.name, reasons = ?s.notes, "collector down");
        }
    }
    kernel.statuses = vec![cpu, cpu_exit, ports, table];
    kernel.environment = env;
    release_freed_memory();
    kernel
}

/// Parsing the kernel's BTF (twice: aya for loading, btf-rs for offsets) peaks at tens of MiB,
/// all freed by now; glibc keeps freed heap mapped unless asked. Give it back, so the daemon's
/// resident size reflects what it uses.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn sysctl_bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// Reads BTF, resolves offsets and loads the object (maps created, no program loaded yet).
fn prepare(opts: &LoadOptions, env: &mut Vec<String>) -> Result<(Ebpf, Btf), String> {
    let kbtf = KernelBtf::from_file(Path::new(btf::VMLINUX_BTF)).map_err(|e| e.to_string())?;
    let resolved = btf::resolve(&kbtf);
    for m in &resolved.missing {
        warn!(field = %m, "kernel struct field not found; what needs it is degraded");
        env.push(format!("BTF field not found: {m}"));
    }
    let aya_btf = Btf::from_sys_fs().map_err(|e| format!("cannot parse kernel BTF: {e}"))?;
    let offsets: Offsets = resolved.offsets;
    let self_tgid: u32 = std::process::id();
    let ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(SELF_TGID_GLOBAL, &self_tgid, true)
        .map_max_entries(DEAD_MAP, opts.dead_map_entries)
        .load(OBJECT)
        .map_err(|e| format!("cannot load the kernel object: {}", chain(&e)))?;
    Ok((ebpf, aya_btf))
}

/// The kernel programs' aya-log records.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Forwards the kernel programs' aya-log records into the daemon's log until the runtime stops.
pub fn spawn_log_drain(mut logger: KernelLogger) {
    tokio::spawn(async move {
        let Ok(owned) = logger.as_fd().try_clone_to_owned() else {
            return;
        };
        // SAFETY: `owned` is an OwnedFd moved into the AsyncFd, so it stays open for as long as
        // it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        };
        let Ok(fd) = registered else { return };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            logger.flush();
            guard.clear_ready();
        }
    });
}

/// Loads an iterator program for `target` (e.g. "task") and creates a re-readable link.
fn attach_iter(ebpf: &mut Ebpf, btf: &Btf, name: &str, target: &str) -> Result<IterLink, String> {
    let prog: &mut Iter = program(ebpf, name)?;
    prog.load(target, btf).map_err(|e| chain(&e))?;
    let fd = prog.fd().map_err(|e| chain(&e))?;
    IterLink::attach(fd.as_fd()).map_err(|e| format!("BPF_LINK_CREATE: {e}"))
}

fn attach_task_iter(ebpf: &mut Ebpf, btf: &Btf, st: &mut CollectorStatus, k: &mut Kernel) {
    match attach_iter(ebpf, btf, TASK_ITER_PROGRAM, "task") {
        Ok(link) => {
            st.hook = Some("iter/task");
            k.task_iter = Some(link);
            k.attached.push(TASK_ITER_PROGRAM);
        }
        Err(e) => st
            .notes
            .push(format!("iter/task: {e} (needs Linux 5.8+ with BTF)")),
    }
}

fn attach_exit_hook(ebpf: &mut Ebpf, btf: &Btf, st: &mut CollectorStatus, k: &mut Kernel) {
    let btf_tp = (|| -> Result<(), String> {
        let prog: &mut BtfTracePoint = program(ebpf, EXIT_BTF_PROGRAM)?;
        prog.load("sched_switch", btf).map_err(|e| chain(&e))?;
        prog.attach().map_err(|e| chain(&e))?;
        Ok(())
    })();
    match btf_tp {
        Ok(()) => {
            st.hook = Some("tp_btf/sched_switch");
            k.attached.push(EXIT_BTF_PROGRAM);
        }
        Err(e) => {
            st.notes.push(format!("tp_btf/sched_switch: {e}"));
            let raw = (|| -> Result<(), String> {
                let prog: &mut RawTracePoint = program(ebpf, EXIT_RAW_PROGRAM)?;
                prog.load().map_err(|e| chain(&e))?;
                prog.attach("sched_switch").map_err(|e| chain(&e))?;
                Ok(())
            })();
            match raw {
                Ok(()) => {
                    st.hook = Some("raw_tp/sched_switch");
                    k.attached.push(EXIT_RAW_PROGRAM);
                }
                Err(e) => st.notes.push(format!(
                    "raw_tp/sched_switch: {e}; threads and processes that exit between two collections are not counted"
                )),
            }
        }
    }
    if st.up() {
        k.dead_tasks = ebpf
            .take_map(DEAD_MAP)
            .and_then(|m| BpfHashMap::try_from(m).ok());
        k.exit_stats = ebpf
            .take_map(EXIT_STATS_MAP)
            .and_then(|m| PerCpuArray::try_from(m).ok());
        if k.dead_tasks.is_none() {
            st.hook = None;
            st.notes
                .push(format!("map {DEAD_MAP} missing from the object"));
        }
    }
}

fn attach_listen_iter(ebpf: &mut Ebpf, btf: &Btf, st: &mut CollectorStatus, k: &mut Kernel) {
    match attach_iter(ebpf, btf, LISTEN_ITER_PROGRAM, "task_file") {
        Ok(link) => {
            st.hook = Some("iter/task_file");
            k.listen_iter = Some(link);
            k.attached.push(LISTEN_ITER_PROGRAM);
        }
        Err(e) => st.notes.push(format!(
            "iter/task_file: {e} (needs Linux 5.11+ for bpf_sock_from_file)"
        )),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    prog.try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))
}

/// An error with its causes, on one line (the verifier log, when there is one, is in them).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    // Verifier logs are long; the first and last lines say what matters.
    if s.len() > 2000 {
        let head: String = s.chars().take(1000).collect();
        let tail: String = s
            .chars()
            .rev()
            .take(800)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        s = format!("{head} [...] {tail}");
    }
    s
}
