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
    Btf, Ebpf, EbpfLoader,
};
use probe_common::{
    block::{IoKey, IoStart, IoTotals, IO_MAP},
    config::{
        Offsets, ACTIVE_MAP, GENERATION_GLOBAL, OFFSETS_GLOBAL, SELF_NETNS_GLOBAL,
        SELF_PORT_GLOBAL, SELF_TGID_GLOBAL,
    },
    cpu::{DeadKey, DeadTotals, DEAD_MAP},
    runq::{
        ThreadRunq, ENABLED_GLOBAL as RUNQ_ENABLED_GLOBAL, LOADED_AT_GLOBAL,
        THREADS_MAP as RUNQ_THREADS_MAP,
    },
    tcp::{
        RttTotals, TcpKey, TcpTotals, RTT_IN_WALK_GLOBAL, SOCKETS_MAP, TRAFFIC_MAP, WALKING_MAP,
    },
};
use tracing::{info, warn};

mod attach;
mod handover;
mod status;
pub mod table;

use attach::{attach_collector, set_remote_ports, take_maps, Attacher};
use handover::{clear_unread, forget_sockets, read_active, set_active};
pub use status::{hooks, names, CollectorStatus, HookError, Note};

/// The `probe serve` flag that turns the run-queue latency histograms on.
pub const RUNQ_HISTOGRAMS_FLAG: &str = "--runq.histograms";

use crate::{
    btf::{self, KernelBtf},
    pins::{self, MapShape, Pins},
    sys::{self, IterLink, MountOutcome},
};

/// The kernel programs, built by build.rs for bpfel-unknown-none.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// Everything loaded into the kernel. Dropping it detaches every program, except those whose
/// links are pinned (`probe serve`: they count on until the next daemon takes over).
pub struct Kernel {
    pub ebpf: Option<Ebpf>,
    pub task_iter: Option<IterLink>,
    pub listen_iter: Option<IterLink>,
    /// Moves what TCP sockets carried since the last collection to the totals map (the walk over
    /// every process's sockets; run before reading it).
    pub tcp_walk_iter: Option<IterLink>,
    pub dead_tasks: Option<BpfHashMap<MapData, DeadKey, DeadTotals>>,
    pub exit_stats: Option<PerCpuArray<MapData, u64>>,
    /// Block IO and dirtied bytes per (process, device, op), and the block programs' counters.
    pub block_io: Option<BpfHashMap<MapData, IoKey, IoTotals>>,
    pub block_stats: Option<PerCpuArray<MapData, u64>>,
    /// Requests in flight (request address -> start), to find the ones whose end was missed.
    pub block_starts: Option<BpfHashMap<MapData, u64, IoStart>>,
    /// TCP maps, when any TCP collector is up.
    pub tcp: Option<TcpMaps>,
    /// Run-queue latency per process, and the run-queue programs' counters.
    pub runq: Option<RunqMaps>,
    /// Names of the programs that are attached (for BPF run-time statistics).
    pub attached: Vec<&'static str>,
    pub statuses: Vec<CollectorStatus>,
    /// Log records of the kernel programs; `serve` drains them (see [`spawn_log_drain`]).
    pub logger: Option<KernelLogger>,
    /// Notes about the environment (mounts, BTF fields, statistics) for `probe check`.
    pub environment: Vec<String>,
    /// Where maps and links are pinned (`probe serve`), if they are.
    pub pins: Option<Pins>,
    /// Keeps BPF_ENABLE_STATS on while the daemon runs (`--bpf.stats`).
    _stats: Option<OwnedFd>,
}

/// The TCP programs' maps the daemon reads (and, for listening ports, writes).
pub struct TcpMaps {
    pub traffic: BpfHashMap<MapData, TcpKey, TcpTotals>,
    pub listen: BpfHashMap<MapData, u16, u64>,
    pub rtt: BpfHashMap<MapData, u16, RttTotals>,
    pub stats: PerCpuArray<MapData, u64>,
}

/// The run-queue latency program's maps.
pub struct RunqMaps {
    pub threads: BpfHashMap<MapData, u32, ThreadRunq>,
    pub stats: PerCpuArray<MapData, u64>,
}

impl Kernel {
    pub fn status(&self, name: &str) -> Option<&CollectorStatus> {
        self.statuses.iter().find(|s| s.name == name)
    }

    /// Moves what TCP sockets carried since the last collection to the totals map (the iterator
    /// `probe_tcp_walk`); nothing to do without it.
    pub fn walk_tcp(&self) -> std::io::Result<()> {
        match &self.tcp_walk_iter {
            Some(it) => it.read_all(&mut Vec::new()),
            None => Ok(()),
        }
    }

    /// Whether the kernel keeps BPF run-time statistics now: turned on by this daemon
    /// (`--bpf.stats`) or host-wide (sysctl kernel.bpf_stats_enabled).
    pub fn bpf_stats_on(&self) -> bool {
        self._stats.is_some() || sysctl_bpf_stats_enabled()
    }
}

/// Sizes of kernel maps that depend on the host.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the dead-thread map: processes that may lose threads between collections.
    pub dead_map_entries: u32,
    /// Capacity of the block IO map: (process, device, op) combinations at once.
    pub block_map_entries: u32,
    /// Capacity of the run-queue thread map: threads at once.
    pub runq_map_entries: u32,
    /// Capacity of the TCP map: (process, port, role) combinations at once.
    pub tcp_map_entries: u32,
    /// Capacity of the TCP socket map: connections open at once.
    pub tcp_socket_map_entries: u32,
    /// Remote ports kept as `remote_port` values on outgoing connections (else folded).
    pub tcp_remote_ports: Vec<u16>,
    /// Hooks not to use even if they work (see [`hooks::ALL`]): the collector falls back.
    pub skip_hooks: Vec<String>,
    /// Keep run-queue latency histograms ([`RUNQ_HISTOGRAMS_FLAG`]): work at every context
    /// switch, so off unless asked for.
    pub runq_histograms: bool,
    /// Turn on the kernel's BPF run-time statistics while loaded (host-wide: every BPF program
    /// then reads the clock twice per run).
    pub bpf_stats: bool,
    /// The host's cgroup filesystem, if given (`--path.cgroup`); else found.
    pub cgroup_path: Option<std::path::PathBuf>,
    /// The port the daemon serves HTTP on (0: none): connections accepted there are its own,
    /// not counted.
    pub self_port: u16,
}

impl LoadOptions {
    /// Whether the run-queue histograms are kept: asked for and not skipped.
    pub fn runq_on(&self) -> bool {
        self.runq_histograms && !self.skip_hooks.iter().any(|h| h == hooks::RUNQ)
    }

    /// Size of the run-queue thread map. Preallocated: ~5 MiB of kernel memory at the default
    /// size, for nothing when off. The pin layout is named after it, so turning the histograms
    /// on or off starts on maps of the right size.
    pub fn runq_threads_entries(&self) -> u32 {
        if self.runq_on() {
            self.runq_map_entries
        } else {
            1
        }
    }

    /// The exit hook tried first: the release hook unless it is skipped. (Whether the kernel
    /// allows it is not known before loading; on one kernel it does not change.)
    pub fn first_exit_hook(&self) -> &'static str {
        if self.skip_hooks.iter().any(|h| h == hooks::EXIT_FENTRY) {
            hooks::EXIT_BTF
        } else {
            hooks::EXIT_FENTRY
        }
    }

    /// Whether the TCP walk takes the RTT samples (else sock_ops does, where it loads).
    pub fn rtt_in_walk(&self) -> bool {
        !self.skip_hooks.iter().any(|h| h == hooks::RTT_WALK)
    }

    /// Whether the flag `flag` (a [`table::Spec::opt_in`]) was given.
    fn opted_in(&self, flag: &str) -> bool {
        flag == RUNQ_HISTOGRAMS_FLAG && self.runq_histograms
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dead_map_entries: probe_common::cpu::DEAD_MAP_ENTRIES,
            block_map_entries: probe_common::block::IO_MAP_ENTRIES,
            runq_map_entries: probe_common::runq::THREADS_MAP_ENTRIES,
            tcp_map_entries: probe_common::tcp::TRAFFIC_MAP_ENTRIES,
            tcp_socket_map_entries: probe_common::tcp::SOCKETS_MAP_ENTRIES,
            tcp_remote_ports: Vec::new(),
            skip_hooks: Vec::new(),
            runq_histograms: false,
            bpf_stats: false,
            cgroup_path: None,
            self_port: 0,
        }
    }
}

/// The shapes of the maps [`pins::PINNED_MAPS`] as this object and these options create them.
pub fn pinned_shapes(opts: &LoadOptions) -> Result<Vec<MapShape>, String> {
    let obj = aya_obj::Object::parse(OBJECT)
        .map_err(|e| format!("cannot parse the kernel object: {e}"))?;
    pins::PINNED_MAPS
        .iter()
        .map(|&name| {
            let m = obj
                .maps
                .get(name)
                .ok_or_else(|| format!("map {name} missing from the object"))?;
            let max_entries = match name {
                DEAD_MAP => opts.dead_map_entries,
                IO_MAP => opts.block_map_entries,
                RUNQ_THREADS_MAP => opts.runq_threads_entries(),
                TRAFFIC_MAP => opts.tcp_map_entries,
                SOCKETS_MAP => opts.tcp_socket_map_entries,
                _ => m.max_entries(),
            };
            Ok(MapShape {
                // The dead-thread map is fed by one exit hook; a daemon that would feed it
                // from the other must not take over what the last one recorded (a zombie leader
                // recorded at its final switch would be recorded again when reaped, or the
                // reverse lost): the hook it will try first is a part of the layout's name.
                name: if name == DEAD_MAP {
                    format!("{name} from {}", opts.first_exit_hook())
                } else {
                    name.to_string()
                },
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries,
                flags: m.map_flags(),
            })
        })
        .collect()
}

/// Loads and attaches everything that works here. Never fails as a whole: a kernel on which
/// nothing loads gives a [`Kernel`] whose collectors are all down, with the reasons.
pub fn load(opts: &LoadOptions) -> Kernel {
    load_pinned(opts, None)
}

/// [`load`], reusing and pinning maps and links under `pins` (see [`crate::pins`]).
pub fn load_pinned(opts: &LoadOptions, mut pins: Option<Pins>) -> Kernel {
    let mut env = Vec::new();
    if let Some(p) = &pins {
        env.extend(p.notes.iter().cloned());
    }
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

    let mut kernel = Kernel {
        ebpf: None,
        task_iter: None,
        listen_iter: None,
        tcp_walk_iter: None,
        dead_tasks: None,
        exit_stats: None,
        block_io: None,
        block_stats: None,
        block_starts: None,
        tcp: None,
        runq: None,
        attached: Vec::new(),
        statuses: Vec::new(),
        logger: None,
        environment: Vec::new(),
        pins: None,
        _stats: None,
    };

    raise_memlock_limit();
    let generation = pins.as_mut().map_or(0, |p| {
        let active = read_active(&p.map_path(ACTIVE_MAP));
        if active.is_none() && p.has_old_links() {
            // The old programs would read a map this daemon cannot write: they would count
            // beside the new ones. Detach them first (a gap rather than double counts).
            warn!("a previous daemon's programs are attached but its {ACTIVE_MAP} map is gone: detaching them before attaching (events until then are lost)");
            env.push(format!("{ACTIVE_MAP} pin missing: previous programs detached first"));
            p.release_old();
        }
        p.choose_generation(active.unwrap_or(0))
    });
    let mut statuses = Vec::new();
    match prepare(opts, pins.as_ref(), generation, &mut env) {
        Ok((mut ebpf, aya_btf)) => {
            // Nobody counts before this daemon: its programs count from their first event.
            if pins.as_ref().is_some_and(|p| !p.has_old_links()) {
                if let Err(e) = set_active(&mut ebpf, generation) {
                    env.push(format!("cannot activate the programs: {e}"));
                }
                forget_sockets(&mut ebpf);
            }
            // Must exist before programs load: they reference its map.
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => kernel.logger = Some(logger),
                Err(e) => tracing::debug!(error = %e, "no kernel log map"),
            }
            let remote_ports = set_remote_ports(&mut ebpf, &opts.tcp_remote_ports);
            let cgroup = crate::sys::cgroup2_root(opts.cgroup_path.as_deref()).and_then(|p| {
                std::fs::File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))
            });
            let mut a = Attacher {
                ebpf: &mut ebpf,
                btf: &aya_btf,
                pins: pins.as_mut(),
                cgroup: &cgroup,
            };
            for spec in table::COLLECTORS {
                let (mut st, attached) = attach_collector(Some(&mut a), spec, &statuses, opts);
                if let (Err(e), names::TCP | names::TCP_RETRANSMIT) = (&remote_ports, spec.name) {
                    st.notes
                        .push(Note::Text(format!("remote ports not set: {e}")));
                }
                match (spec.name, attached.iter) {
                    (names::CPU, Some(link)) => kernel.task_iter = Some(link),
                    (names::PORTS, Some(link)) => kernel.listen_iter = Some(link),
                    (names::TCP, Some(link)) => {
                        if let Err(e) = attach::set_walking(a.ebpf) {
                            st.notes.push(Note::Text(format!(
                                "connections that close between two collections are not \
                                 counted ({WALKING_MAP}: {e})"
                            )));
                        }
                        kernel.tcp_walk_iter = Some(link);
                    }
                    _ => {}
                }
                kernel.attached.extend(attached.programs);
                statuses.push(st);
            }
            take_maps(&mut ebpf, &mut kernel, &mut statuses);
            if kernel.tcp_walk_iter.is_none() {
                forget_sockets(&mut ebpf);
            }
            if let Some(p) = pins.as_mut() {
                // The handover: this daemon's programs count from now on, the previous one's
                // (attached until here, counting) go.
                match set_active(&mut ebpf, p.generation()) {
                    Ok(()) => {
                        p.release_old();
                        clear_unread(&mut ebpf);
                    }
                    Err(e) => {
                        warn!(
                            "cannot hand over from the previous daemon's programs, they stay: {e}"
                        );
                        env.push(format!("handover failed: {e}"));
                    }
                }
            }
            if opts.bpf_stats {
                match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                    Ok(fd) => kernel._stats = Some(fd),
                    // Without CAP_SYS_ADMIN; the host may have turned statistics on for everyone.
                    Err(_) if sysctl_bpf_stats_enabled() => {}
                    Err(e) => env.push(format!(
                        "BPF run-time statistics unavailable ({e}): needs CAP_SYS_ADMIN or sysctl kernel.bpf_stats_enabled=1"
                    )),
                }
            }
            kernel.ebpf = Some(ebpf);
        }
        Err(reason) => {
            // Nothing of this daemon reads the pinned maps: it must not save accounts that
            // claim them (a previous daemon's programs, if any, go on counting for the next).
            pins = None;
            for spec in table::COLLECTORS {
                let (mut st, _) = attach_collector(None, spec, &statuses, opts);
                st.notes.insert(0, Note::Load(reason.clone()));
                statuses.push(st);
            }
        }
    }
    for s in &statuses {
        if let Some(flag) = s.off {
            info!(collector = s.name, "collector off ({flag} turns it on)");
        } else if s.up() {
            info!(collector = s.name, hook = s.hook, notes = ?s.notes.iter().map(ToString::to_string).collect::<Vec<_>>(), "collector up");
        } else {
            warn!(collector = s.name, reasons = ?s.notes.iter().map(ToString::to_string).collect::<Vec<_>>(), "collector down");
        }
    }
    kernel.statuses = statuses;
    kernel.environment = env;
    kernel.pins = pins;
    release_freed_memory();
    kernel
}

/// Parsing the kernel's BTF (twice: aya for loading, btf-rs for offsets) peaks at tens of MiB,
/// all freed by now; glibc keeps freed heap mapped unless asked. Give it back, so the daemon's
/// resident size reflects what it uses. (musl, of the static build, returns it by itself.)
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0)
    };
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK; later ones to the memory
/// cgroup. Raise the limit where allowed (CAP_SYS_RESOURCE) and carry on where not.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK (not needed on 5.11+, which accounts BPF memory to the cgroup)"
        );
    }
}

fn sysctl_bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// Reads BTF, resolves offsets and loads the object (maps created, no program loaded yet).
fn prepare(
    opts: &LoadOptions,
    pins: Option<&Pins>,
    generation: u32,
    env: &mut Vec<String>,
) -> Result<(Ebpf, Btf), String> {
    let kbtf = KernelBtf::from_file(Path::new(btf::VMLINUX_BTF)).map_err(|e| e.to_string())?;
    let resolved = btf::resolve(&kbtf);
    for m in &resolved.missing {
        warn!(field = %m, "kernel struct field not found; what needs it is degraded");
        env.push(format!("BTF field not found: {m}"));
    }
    let aya_btf = Btf::from_sys_fs().map_err(|e| format!("cannot parse kernel BTF: {e}"))?;
    let mut offsets: Offsets = resolved.offsets;
    offsets.page_size = u32::try_from(procfs::page_size()).unwrap_or(4096);
    let self_tgid: u32 = std::process::id();
    // (Namespace inode numbers fit in 32 bits: ns_common.inum is an unsigned int.)
    let self_netns = std::fs::metadata("/proc/self/ns/net")
        .map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m) as u32);
    let mut loader = EbpfLoader::new();
    let pin_paths: Vec<(&str, std::path::PathBuf)> = pins
        .map(|p| {
            pins::PINNED_MAPS
                .iter()
                .map(|&m| (m, p.map_path(m)))
                .collect()
        })
        .unwrap_or_default();
    for (name, path) in &pin_paths {
        // aya opens the pinned map if there is one (a previous daemon's), else creates and
        // pins it. The layout directory guarantees the shapes match.
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .btf(Some(&aya_btf))
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(SELF_TGID_GLOBAL, &self_tgid, true)
        .override_global(SELF_PORT_GLOBAL, &u32::from(opts.self_port), true)
        .override_global(SELF_NETNS_GLOBAL, &self_netns, true)
        .override_global(GENERATION_GLOBAL, &generation, true)
        .override_global(LOADED_AT_GLOBAL, &boottime_ns(), true)
        .override_global(RUNQ_ENABLED_GLOBAL, &u32::from(opts.runq_on()), true)
        .override_global(RTT_IN_WALK_GLOBAL, &u32::from(opts.rtt_in_walk()), true)
        .map_max_entries(DEAD_MAP, opts.dead_map_entries)
        .map_max_entries(IO_MAP, opts.block_map_entries)
        .map_max_entries(RUNQ_THREADS_MAP, opts.runq_threads_entries())
        .map_max_entries(TRAFFIC_MAP, opts.tcp_map_entries)
        .map_max_entries(SOCKETS_MAP, opts.tcp_socket_map_entries)
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

/// An error with its causes, on one line. A verifier rejection is boiled down to its error, the
/// instruction and the source line (the whole log goes to the debug log).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    }) = e.downcast_ref::<aya::programs::ProgramError>()
    {
        let log = verifier_log.to_string();
        if log.trim().is_empty() {
            // Refused before the verifier ran (no log): not about the program's code.
            return format!("the kernel refused to load it ({io_error}), before verification");
        }
        tracing::debug!(error = %io_error, "verifier log:\n{log}");
        return format!(
            "the verifier refused it ({io_error}): {} (whole log: --log.level debug)",
            crate::verifier::summary(&log)
        );
    }
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// CLOCK_BOOTTIME now, in ns (the clock of task_struct.start_boottime).
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(opts: &LoadOptions) -> String {
        pins::layout_name(&pinned_shapes(opts).expect("the embedded object parses"))
    }

    #[test]
    fn the_pin_layout_changes_with_the_exit_hook_and_the_run_queue_map() {
        let defaults = LoadOptions::default();
        let skip = |hooks: &[&str]| LoadOptions {
            skip_hooks: hooks.iter().map(ToString::to_string).collect(),
            ..LoadOptions::default()
        };
        // The release hook skipped: its dead-thread map would be fed at the switch instead.
        assert_ne!(layout(&defaults), layout(&skip(&[hooks::EXIT_FENTRY])));
        // Which switch program feeds it does not matter (the same moment, the same totals).
        assert_eq!(
            layout(&skip(&[hooks::EXIT_FENTRY])),
            layout(&skip(&[hooks::EXIT_FENTRY, hooks::EXIT_BTF]))
        );
        assert_eq!(layout(&defaults), layout(&skip(&[hooks::TCP_SOCKOPS])));
        let histograms = LoadOptions {
            runq_histograms: true,
            ..LoadOptions::default()
        };
        assert_ne!(layout(&defaults), layout(&histograms));
    }
}
