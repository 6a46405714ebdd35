//! Loading and attaching the table ([`super::table`]): a collector's hooks tried in order of
//! preference (`attach_collector`); each kind of attachment, its link pinned when the daemon
//! pins, all or nothing (a half-attached hook would count beside the fallback tried next); the
//! maps of the collectors that are up (`take_maps`).

use std::{collections::HashMap, fs::File, os::fd::AsFd as _};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, BtfTracePoint, CgroupAttachMode, CgroupSkb,
        FEntry, Iter, Program, ProgramError, RawTracePoint, SockOps,
    },
    Btf, Ebpf,
};
use probe_common::{
    block::{IO_MAP, STARTS_MAP, STATS_MAP as BLOCK_STATS_MAP},
    cpu::{DEAD_MAP, EXIT_STATS_MAP},
    runq::{STATS_MAP as RUNQ_STATS_MAP, THREADS_MAP as RUNQ_THREADS_MAP},
    tcp::{
        LISTEN_MAP, REMOTE_PORTS_MAP, RTT_MAP, STATS_MAP as TCP_STATS_MAP, TRAFFIC_MAP, WALKING_MAP,
    },
};
use tracing::warn;

use super::{
    chain,
    table::{self, Attach, Hook},
    CollectorStatus, HookError, Kernel, LoadOptions, Note, RunqMaps, TcpMaps,
};
use crate::{pins::Pins, sys::IterLink};

/// What attaching a hook gave.
#[derive(Default)]
pub(super) struct Attached {
    /// The programs attached (for BPF run-time statistics).
    pub programs: Vec<&'static str>,
    /// The iterator's link (iterator hooks).
    pub iter: Option<IterLink>,
}

/// Loads and attaches programs of one object.
pub(super) struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    pub btf: &'a Btf,
    /// Links are pinned here, when pinning (see [`crate::pins`]).
    pub pins: Option<&'a mut Pins>,
    /// The cgroup2 root the socket programs attach to, or why it cannot be opened.
    pub cgroup: &'a Result<File, String>,
}

/// cgroup programs attach as BPF links (5.7+), which coexist with other programs on the same
/// cgroup whatever the mode; the kernel rejects any mode flag on a link (EINVAL), so it is 0.
const CGROUP_LINK: CgroupAttachMode = CgroupAttachMode::Single;

fn kernel(e: &(dyn std::error::Error + 'static)) -> HookError {
    HookError::Kernel(chain(e))
}

impl Attacher<'_> {
    /// Attaches `hook`'s programs (not its extras), after setting the map it turns on (reset
    /// if they fail). [`Attach::Within`] and [`Attach::Procfs`] have none: the caller decides
    /// those.
    pub(super) fn attach(&mut self, hook: &Hook) -> Result<Attached, HookError> {
        if let Some(map) = hook.turns_on {
            set_flag(self.ebpf, map, 1).map_err(HookError::Kernel)?;
        }
        let attached = self.attach_programs(hook);
        if let (Some(map), Err(_)) = (hook.turns_on, &attached) {
            if let Err(e) = set_flag(self.ebpf, map, 0) {
                warn!("{map} stays set after {} failed: {e}", hook.name);
            }
        }
        attached
    }

    fn attach_programs(&mut self, hook: &Hook) -> Result<Attached, HookError> {
        let mut out = Attached::default();
        match hook.attach {
            Attach::Iter { program, target } => {
                out.iter = Some(self.iterator(program, target, None)?);
                out.programs.push(program);
            }
            Attach::Btf(set) | Attach::Raw(set) | Attach::FEntry(set) => {
                match hook.attach {
                    Attach::Btf(_) => self.tracepoints::<BtfTracePoint>(set)?,
                    Attach::Raw(_) => self.tracepoints::<RawTracePoint>(set)?,
                    _ => self.tracepoints::<FEntry>(set)?,
                }
                for &(program, _) in set {
                    if !out.programs.contains(&program) {
                        out.programs.push(program);
                    }
                }
            }
            Attach::CgroupSkb { ingress, egress } => {
                let cg = self
                    .cgroup
                    .as_ref()
                    .map_err(|e| HookError::Cgroup(e.clone()))?;
                for (program, dir) in [
                    (ingress, CgroupSkbAttachType::Ingress),
                    (egress, CgroupSkbAttachType::Egress),
                ] {
                    let prog: &mut CgroupSkb = find(self.ebpf, program)?;
                    prog.load().map_err(|e| kernel(&e))?;
                    let id = prog.attach(cg, dir, CGROUP_LINK).map_err(|e| kernel(&e))?;
                    if let Some(p) = self.pins.as_deref_mut() {
                        let link = prog.take_link(id).map_err(|e| kernel(&e))?;
                        let link = FdLink::try_from(link).map_err(|e| kernel(&e))?;
                        p.keep(&link_key(program, "cgroup"), link)
                            .map_err(HookError::Pin)?;
                    }
                    out.programs.push(program);
                }
            }
            Attach::SockOps { program } => {
                let cg = self
                    .cgroup
                    .as_ref()
                    .map_err(|e| HookError::Cgroup(e.clone()))?;
                let prog: &mut SockOps = find(self.ebpf, program)?;
                prog.load().map_err(|e| kernel(&e))?;
                let id = prog.attach(cg, CGROUP_LINK).map_err(|e| kernel(&e))?;
                if let Some(p) = self.pins.as_deref_mut() {
                    let link = prog.take_link(id).map_err(|e| kernel(&e))?;
                    let link = FdLink::try_from(link).map_err(|e| kernel(&e))?;
                    p.keep(&link_key(program, "cgroup"), link)
                        .map_err(HookError::Pin)?;
                }
                out.programs.push(program);
            }
            Attach::Within { .. } | Attach::Procfs => {}
        }
        Ok(out)
    }

    /// Loads an iterator program over `target` (over map `map`'s elements for a map iterator)
    /// and creates its link (re-readable).
    pub(super) fn iterator(
        &mut self,
        program: &'static str,
        target: &str,
        map: Option<&'static str>,
    ) -> Result<IterLink, HookError> {
        let prog: &mut Iter = find(self.ebpf, program)?;
        prog.load(target, self.btf).map_err(|e| match &e {
            // The map iterator refused before the verifier looked at it: the kernel does not
            // allow this iterator type (this project's 6.18 test host refuses even an empty
            // one), not a rejection of the program's code. For other programs EPERM means
            // missing privileges, and the error says so as it is.
            ProgramError::LoadError { io_error, .. }
                if map.is_some() && io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                HookError::Kernel(format!(
                    "this kernel does not allow iter/{target} programs (EPERM at load, before \
                     verification)"
                ))
            }
            _ => kernel(&e),
        })?;
        let prog_fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|e| kernel(&e))?;
        // Only socket-storage maps are walked (the one iterator over a map).
        let map_fd = match map {
            None => None,
            Some(name) => match self.ebpf.map(name) {
                Some(aya::maps::Map::SkStorage(data)) => Some(data.fd().as_fd()),
                _ => return Err(HookError::Kernel(format!("no socket-storage map {name}"))),
            },
        };
        IterLink::attach(prog_fd.as_fd(), map_fd)
            .map_err(|e| HookError::Kernel(format!("BPF_LINK_CREATE: {e}")))
    }

    /// Loads (once) and attaches tracepoint programs of one kind (`T`: raw or BTF-typed) to
    /// tracepoints, all or nothing: if one fails, the ones attached by this call are detached
    /// again. When pinning, the links are pinned (this daemon's generation, beside a previous
    /// daemon's until the handover).
    pub(super) fn tracepoints<T: Tracepoint>(
        &mut self,
        set: &[(&'static str, &'static str)],
    ) -> Result<(), HookError>
    where
        for<'p> &'p mut T: TryFrom<&'p mut Program, Error = ProgramError>,
    {
        let btf = self.btf;
        let mut done: Vec<(&str, &str, T::Id)> = Vec::new();
        let mut result = Ok(());
        for &(name, tp) in set {
            let attached = find::<T>(self.ebpf, name).and_then(|prog| {
                prog.load_once(tp, btf).map_err(|e| kernel(&e))?;
                prog.attach_to(tp)
                    .map_err(|e| HookError::Kernel(format!("{tp}: {}", chain(&e))))
            });
            match attached {
                Ok(id) => done.push((name, tp, id)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            for (name, _, id) in done {
                if let Ok(prog) = find::<T>(self.ebpf, name) {
                    let _ = prog.detach_id(id);
                }
            }
            return result;
        }
        let Some(p) = self.pins.as_deref_mut() else {
            return Ok(());
        };
        // All or nothing here too: a link left attached after a failure would count beside the
        // fallback the caller tries next.
        let mut pinned = Vec::new();
        let mut failed = None;
        for (name, tp, id) in done {
            if failed.is_some() {
                if let Ok(prog) = find::<T>(self.ebpf, name) {
                    let _ = prog.detach_id(id);
                }
                continue;
            }
            let key = link_key(name, tp);
            let kept = find::<T>(self.ebpf, name).and_then(|prog| {
                let link = prog.fd_link(id).map_err(|e| kernel(&e))?;
                p.keep(&key, link).map_err(HookError::Pin)
            });
            match kept {
                Ok(()) => pinned.push(key),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => {
                for key in pinned {
                    p.unkeep(&key);
                }
                Err(e)
            }
        }
    }
}

/// The two kinds of tracepoint program, as [`Attacher::tracepoints`] drives them.
pub(super) trait Tracepoint {
    type Id;
    /// Loads the program unless it is loaded (a raw tracepoint program is loaded once for every
    /// tracepoint it attaches to; a BTF-typed one is verified against its tracepoint's types).
    fn load_once(&mut self, tracepoint: &str, btf: &Btf) -> Result<(), ProgramError>;
    fn attach_to(&mut self, tracepoint: &str) -> Result<Self::Id, ProgramError>;
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError>;
    fn fd_link(&mut self, id: Self::Id) -> Result<FdLink, ProgramError>;
}

impl Tracepoint for RawTracePoint {
    type Id = aya::programs::raw_trace_point::RawTracePointLinkId;
    fn load_once(&mut self, _: &str, _: &Btf) -> Result<(), ProgramError> {
        if self.fd().is_err() {
            self.load()?;
        }
        Ok(())
    }
    fn attach_to(&mut self, tracepoint: &str) -> Result<Self::Id, ProgramError> {
        self.attach(tracepoint)
    }
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError> {
        self.detach(id)
    }
    fn fd_link(&mut self, id: Self::Id) -> Result<FdLink, ProgramError> {
        Ok(FdLink::from(self.take_link(id)?))
    }
}

/// An fentry program: "tracepoint" is the kernel function it is verified against and attached
/// to.
impl Tracepoint for FEntry {
    type Id = aya::programs::fentry::FEntryLinkId;
    fn load_once(&mut self, function: &str, btf: &Btf) -> Result<(), ProgramError> {
        if self.fd().is_err() {
            self.load(function, btf)?;
        }
        Ok(())
    }
    fn attach_to(&mut self, _: &str) -> Result<Self::Id, ProgramError> {
        self.attach()
    }
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError> {
        self.detach(id)
    }
    fn fd_link(&mut self, id: Self::Id) -> Result<FdLink, ProgramError> {
        Ok(FdLink::from(self.take_link(id)?))
    }
}

impl Tracepoint for BtfTracePoint {
    type Id = aya::programs::tp_btf::BtfTracePointLinkId;
    fn load_once(&mut self, tracepoint: &str, btf: &Btf) -> Result<(), ProgramError> {
        if self.fd().is_err() {
            self.load(tracepoint, btf)?;
        }
        Ok(())
    }
    fn attach_to(&mut self, _: &str) -> Result<Self::Id, ProgramError> {
        self.attach()
    }
    fn detach_id(&mut self, id: Self::Id) -> Result<(), ProgramError> {
        self.detach(id)
    }
    fn fd_link(&mut self, id: Self::Id) -> Result<FdLink, ProgramError> {
        Ok(FdLink::from(self.take_link(id)?))
    }
}

/// Writes the user's well-known remote ports into the kernel map (before any program runs).
pub(super) fn set_remote_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), String> {
    let map = ebpf
        .map_mut(REMOTE_PORTS_MAP)
        .ok_or_else(|| format!("map {REMOTE_PORTS_MAP} missing from the object"))?;
    let mut map: BpfHashMap<&mut MapData, u16, u8> =
        BpfHashMap::try_from(map).map_err(|e| chain(&e))?;
    for &p in ports {
        map.insert(p, 1, 0)
            .map_err(|e| format!("port {p}: {}", chain(&e)))?;
    }
    Ok(())
}

/// Tells the state program that the walk over sockets counts TCP bytes (after it attached).
pub(super) fn set_walking(ebpf: &mut Ebpf) -> Result<(), String> {
    set_flag(ebpf, WALKING_MAP, 1)
}

/// Sets the one entry of the u32 array map `name`.
fn set_flag(ebpf: &mut Ebpf, name: &str, value: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| format!("map {name} missing from the object"))?;
    let mut map: aya::maps::Array<&mut MapData, u32> =
        aya::maps::Array::try_from(map).map_err(|e| chain(&e))?;
    map.set(0, value, 0).map_err(|e| chain(&e))
}

/// The name a link is pinned under: `program@target`.
pub(super) fn link_key(program: &str, target: &str) -> String {
    format!("{program}@{target}")
}

fn find<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, HookError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(HookError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|e: aya::programs::ProgramError| kernel(&e))
}

/// Tries `spec`'s hooks in order of preference and returns its status and what the hook in
/// use attached. Without `a` (the object did not load) only /proc hooks are tried.
pub(super) fn attach_collector(
    mut a: Option<&mut Attacher<'_>>,
    spec: &table::Spec,
    earlier: &[CollectorStatus],
    opts: &LoadOptions,
) -> (CollectorStatus, Attached) {
    let mut st = CollectorStatus::new(spec.name);
    if let Some(flag) = spec.opt_in.filter(|&f| !opts.opted_in(f)) {
        st.off = Some(flag);
        return (st, Attached::default());
    }
    for hook in spec.hooks {
        let tried = if opts.skip_hooks.iter().any(|h| h == hook.name) {
            Err(HookError::Skipped)
        } else {
            match (&hook.attach, a.as_deref_mut()) {
                (Attach::Procfs, _) => std::fs::read_dir("/proc")
                    .map(|_| Attached::default())
                    .map_err(|e| HookError::Proc(e.to_string())),
                (
                    Attach::Within {
                        collector,
                        on,
                        otherwise,
                    },
                    _,
                ) => {
                    let theirs = earlier
                        .iter()
                        .find(|s| s.name == *collector)
                        .and_then(|s| s.hook);
                    if let Some(theirs) = theirs.filter(|h| on.contains(h)) {
                        st.hook = Some(theirs);
                        return (st, Attached::default());
                    }
                    if theirs.is_none() {
                        st.notes.push(Note::Hook {
                            hook: hook.name,
                            needs: None,
                            error: HookError::Within(collector),
                        });
                    }
                    // Its program is not attached: attach it here.
                    let mut own = None;
                    if let Some(a) = a.as_deref_mut() {
                        for h in *otherwise {
                            let tried = if opts.skip_hooks.iter().any(|s| s == h.name) {
                                Err(HookError::Skipped)
                            } else {
                                a.attach(h)
                            };
                            match tried {
                                Ok(attached) => {
                                    own = Some((h.name, attached));
                                    break;
                                }
                                Err(error) => st.notes.push(Note::Hook {
                                    hook: h.name,
                                    needs: h.needs.filter(|_| error != HookError::Skipped),
                                    error,
                                }),
                            }
                        }
                    }
                    match own {
                        Some((name, attached)) => {
                            st.hook = Some(name);
                            st.notes.clear();
                            return (st, attached);
                        }
                        None => continue,
                    }
                }
                // The object did not load: said once, by the caller.
                (_, None) => continue,
                (_, Some(a)) => a.attach(hook),
            }
        };
        match tried {
            Ok(mut attached) => {
                st.hook = Some(hook.name);
                if let Some(a) = a.as_deref_mut() {
                    for &(program, tracepoint) in hook.extras {
                        match a.tracepoints::<RawTracePoint>(&[(program, tracepoint)]) {
                            Ok(()) => attached.programs.push(program),
                            Err(e) => st
                                .notes
                                .push(Note::Text(format!("raw_tp/{tracepoint}: {e}"))),
                        }
                    }
                }
                if let (Some(x), Some(a)) = (&hook.iter_extra, a.as_deref_mut()) {
                    let done = if opts.skip_hooks.iter().any(|h| h == x.name) {
                        Err(HookError::Skipped)
                    } else {
                        a.iterator(x.program, x.target, x.map)
                    };
                    match done {
                        Ok(link) => {
                            attached.iter = Some(link);
                            attached.programs.push(x.program);
                        }
                        Err(e) => st
                            .notes
                            .push(Note::Text(format!("{}: {e}; {}", x.name, x.without))),
                    }
                }
                st.notes.extend(hook.used.map(Note::from));
                return (st, attached);
            }
            Err(error) => st.notes.push(Note::Hook {
                hook: hook.name,
                needs: hook.needs.filter(|_| error != HookError::Skipped),
                error,
            }),
        }
    }
    st.notes.extend(spec.down.map(Note::from));
    (st, Attached::default())
}

/// Takes the maps the daemon reads, of every collector that is up; a collector whose required
/// map is missing goes down.
pub(super) fn take_maps(ebpf: &mut Ebpf, kernel: &mut Kernel, statuses: &mut [CollectorStatus]) {
    let attached_hooks: Vec<Option<&str>> = statuses.iter().map(|s| s.hook).collect();
    let mut maps: HashMap<&'static str, aya::maps::Map> = HashMap::new();
    for (spec, st) in table::COLLECTORS.iter().zip(statuses.iter()) {
        if !st.up() {
            continue;
        }
        for m in spec.maps {
            if !maps.contains_key(m.name) {
                if let Some(map) = ebpf.take_map(m.name) {
                    maps.insert(m.name, map);
                }
            }
        }
    }
    for (spec, st) in table::COLLECTORS.iter().zip(statuses.iter_mut()) {
        if let Some(m) = spec
            .maps
            .iter()
            .find(|m| st.up() && m.required && !maps.contains_key(m.name))
        {
            st.hook = None;
            st.notes.push(Note::Text(format!(
                "map {} missing from the object",
                m.name
            )));
        }
    }
    // A collector that is a part of another one's program goes down with it.
    for (i, spec) in table::COLLECTORS.iter().enumerate() {
        let within = spec.hooks.iter().find_map(|h| match h.attach {
            Attach::Within { collector, .. } => Some((h.name, collector)),
            _ => None,
        });
        let Some((hook, collector)) = within else {
            continue;
        };
        let Some(theirs) = table::COLLECTORS.iter().position(|s| s.name == collector) else {
            continue;
        };
        // It rode on theirs if it is on the hook they attached (else it has its own program).
        let rode = statuses[i].hook.is_some() && statuses[i].hook == attached_hooks[theirs];
        if rode && !statuses[theirs].up() {
            statuses[i].hook = None;
            statuses[i].notes.push(Note::Hook {
                hook,
                error: HookError::Within(collector),
                needs: None,
            });
        }
    }
    // Only the maps of collectors still up are read.
    maps.retain(|name, _| {
        table::COLLECTORS
            .iter()
            .zip(statuses.iter())
            .any(|(spec, st)| st.up() && spec.maps.iter().any(|m| m.name == *name))
    });
    fn typed<T: TryFrom<aya::maps::Map>>(
        maps: &mut HashMap<&'static str, aya::maps::Map>,
        name: &str,
    ) -> Option<T> {
        T::try_from(maps.remove(name)?).ok()
    }
    kernel.dead_tasks = typed(&mut maps, DEAD_MAP);
    kernel.exit_stats = typed(&mut maps, EXIT_STATS_MAP);
    kernel.block_io = typed(&mut maps, IO_MAP);
    kernel.block_stats = typed(&mut maps, BLOCK_STATS_MAP);
    kernel.block_starts = typed(&mut maps, STARTS_MAP);
    kernel.runq = (|| {
        Some(RunqMaps {
            threads: typed(&mut maps, RUNQ_THREADS_MAP)?,
            stats: typed(&mut maps, RUNQ_STATS_MAP)?,
        })
    })();
    kernel.tcp = (|| {
        Some(TcpMaps {
            traffic: typed(&mut maps, TRAFFIC_MAP)?,
            listen: typed(&mut maps, LISTEN_MAP)?,
            rtt: typed(&mut maps, RTT_MAP)?,
            stats: typed(&mut maps, TCP_STATS_MAP)?,
        })
    })();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{hooks, names};

    /// The table walked without a kernel object (it did not load): only /proc hooks work, a
    /// collector riding on another that is down says so, skipped hooks say so. The run-queue
    /// histograms are asked for.
    fn walk(skip: &[&str]) -> Vec<CollectorStatus> {
        walk_with(LoadOptions {
            skip_hooks: skip.iter().map(|s| s.to_string()).collect(),
            runq_histograms: true,
            ..LoadOptions::default()
        })
    }

    fn walk_with(opts: LoadOptions) -> Vec<CollectorStatus> {
        let mut statuses = Vec::new();
        for spec in table::COLLECTORS {
            let (st, attached) = attach_collector(None, spec, &statuses, &opts);
            assert!(attached.programs.is_empty() && attached.iter.is_none());
            statuses.push(st);
        }
        statuses
    }

    fn status<'a>(all: &'a [CollectorStatus], name: &str) -> &'a CollectorStatus {
        all.iter().find(|s| s.name == name).expect("listed")
    }

    #[test]
    fn without_the_object_only_proc_hooks_work_and_each_down_collector_says_what_is_lost() {
        let all = walk(&[]);
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                names::CPU,
                names::CPU_EXIT,
                names::PORTS,
                names::BLOCK,
                names::BLOCK_DIRTY,
                names::TCP,
                names::TCP_STATE,
                names::TCP_RETRANSMIT,
                names::TCP_RTT,
                names::RUNQ,
                names::PROCESS_TABLE
            ]
        );
        for up in [names::CPU, names::PORTS, names::PROCESS_TABLE] {
            assert_eq!(status(&all, up).hook, Some(hooks::PROCFS), "{up}");
        }
        let cpu = status(&all, names::CPU);
        assert_eq!(
            cpu.notes,
            [Note::from(
                "reading /proc/<pid>/task/*/schedstat instead (slower)"
            )]
        );
        let exit = status(&all, names::CPU_EXIT);
        assert!(!exit.up());
        assert_eq!(
            exit.notes,
            [Note::from(
                "threads and processes that exit between two collections are not counted"
            )]
        );
        let runq = status(&all, names::RUNQ);
        assert!(!runq.up());
        assert_eq!(
            runq.notes,
            [Note::Hook {
                hook: hooks::RUNQ,
                error: HookError::Within(names::CPU_EXIT),
                needs: None
            }]
        );
        assert_eq!(
            runq.notes[0].to_string(),
            "runq: needs the program of cpu_exit, which is not attached"
        );
    }

    /// The table entry of `collector`, and the statuses of earlier collectors as a `Within`
    /// hook sees them: `rides_on` up on `hook`.
    fn riding(
        collector: &str,
        rides_on: &'static str,
    ) -> (
        &'static table::Spec,
        impl Fn(&'static str) -> Vec<CollectorStatus>,
    ) {
        let spec = table::COLLECTORS
            .iter()
            .find(|s| s.name == collector)
            .expect("collector in the table");
        let on = move |hook| {
            let mut st = CollectorStatus::new(rides_on);
            st.hook = Some(hook);
            vec![st]
        };
        (spec, on)
    }

    #[test]
    fn the_run_queue_rides_on_the_exit_hook_only_when_that_is_the_switch_program() {
        let opts = LoadOptions {
            runq_histograms: true,
            ..LoadOptions::default()
        };
        let (runq, exit_on) = riding(names::RUNQ, names::CPU_EXIT);
        for switch in [hooks::EXIT_BTF, hooks::EXIT_RAW] {
            let (st, attached) = attach_collector(None, runq, &exit_on(switch), &opts);
            assert_eq!(st.hook, Some(switch));
            assert!(attached.programs.is_empty(), "rides: attaches nothing");
        }
        // On the release hook there is no switch program to ride on: runq must attach its own
        // (here, without an object, it cannot).
        let (st, _) = attach_collector(None, runq, &exit_on(hooks::EXIT_FENTRY), &opts);
        assert_eq!(st.hook, None);
    }

    #[test]
    fn rtt_rides_on_the_tcp_walk_unless_skipped_or_the_walk_is_not_in_use() {
        let (rtt, tcp_on) = riding(names::TCP_RTT, names::TCP);
        let opts = LoadOptions::default();
        assert!(opts.rtt_in_walk());
        let (st, attached) = attach_collector(None, rtt, &tcp_on(hooks::TCP_WALK), &opts);
        assert_eq!(st.hook, Some(hooks::TCP_WALK));
        assert!(attached.programs.is_empty(), "rides: attaches nothing");
        // On the per-port fallback there is no walk: sock_ops it is (here, without an object,
        // it cannot attach).
        let (st, _) = attach_collector(None, rtt, &tcp_on(hooks::TCP_CGROUP_SKB), &opts);
        assert_eq!(st.hook, None);
        // Skipped, the walk takes no samples and RTT goes to sock_ops even with the walk on.
        let skip = LoadOptions {
            skip_hooks: vec![hooks::RTT_WALK.to_string()],
            ..LoadOptions::default()
        };
        assert!(!skip.rtt_in_walk());
        let (st, _) = attach_collector(None, rtt, &tcp_on(hooks::TCP_WALK), &skip);
        assert_eq!(st.hook, None);
    }

    #[test]
    fn an_opt_in_collector_is_off_without_its_flag_and_tries_no_hook() {
        let all = walk_with(LoadOptions::default());
        let runq = status(&all, names::RUNQ);
        assert_eq!(runq.off, Some("--runq.histograms"));
        assert!(!runq.up() && runq.notes.is_empty());
        assert!(all
            .iter()
            .filter(|s| s.name != names::RUNQ)
            .all(|s| s.off.is_none()));
        // Asked for, it is a collector like the others (down here: no object).
        let asked = walk(&[]);
        assert_eq!(status(&asked, names::RUNQ).off, None);
    }

    #[test]
    fn a_skipped_hook_is_said_without_what_it_needs() {
        let all = walk(&[hooks::TASK_ITER, hooks::RUNQ]);
        let cpu = status(&all, names::CPU);
        assert_eq!(
            cpu.notes[0],
            Note::Hook {
                hook: hooks::TASK_ITER,
                error: HookError::Skipped,
                needs: None
            }
        );
        assert_eq!(
            cpu.notes[0].to_string(),
            "iter/task: skipped (--hooks.skip)"
        );
        let failed = Note::Hook {
            hook: hooks::TASK_ITER,
            error: HookError::Kernel("Invalid argument".into()),
            needs: Some("needs Linux 5.8+ with BTF"),
        };
        assert_eq!(
            failed.to_string(),
            "iter/task: Invalid argument (needs Linux 5.8+ with BTF)"
        );
        assert_eq!(
            status(&all, names::RUNQ).notes[0].to_string(),
            "runq: skipped (--hooks.skip)"
        );
    }
}
