//! Loading and attaching programs, one collector at a time: each hook is tried in order of
//! preference, and [`CollectorStatus`] records which one worked and why the others did not.

use std::os::fd::AsFd as _;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        cgroup_skb::CgroupSkbAttachType, links::FdLink, BtfTracePoint, CgroupAttachMode, CgroupSkb,
        Iter, RawTracePoint, SockOps,
    },
    Btf, Ebpf,
};
use probe_common::{
    block::{
        DIRTY_PROGRAM, IO_DONE_PROGRAM, IO_START_PROGRAM, RQ_BYTES_PROGRAM, RQ_DONE_PROGRAM,
        RQ_MERGE_PROGRAM, RQ_START_PROGRAM,
    },
    cpu::{SWITCH_BTF_PROGRAM, SWITCH_RAW_PROGRAM},
    tcp::{
        LISTEN_MAP, RECV_PROGRAM, REMOTE_PORTS_MAP, RETRANSMIT_PROGRAM, RETRANSMIT_SYNACK_PROGRAM,
        RTT_MAP, SEND_PROGRAM, SKB_EGRESS_PROGRAM, SKB_INGRESS_PROGRAM, SOCKOPS_PROGRAM,
        STATE_PROGRAM, STATS_MAP as TCP_STATS_MAP, TRAFFIC_MAP,
    },
};

use super::{chain, hooks, CollectorStatus, LoadOptions, TcpMaps};
use crate::{pins::Pins, sys::IterLink};

/// Loads and attaches programs, recording in a [`CollectorStatus`] which hook worked and why
/// the others did not.
pub(super) struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    pub btf: &'a Btf,
    pub skip: &'a [String],
    /// Links are pinned here, when pinning (see [`crate::pins`]).
    pub pins: Option<&'a mut Pins>,
}

impl Attacher<'_> {
    /// Runs `attach` for `hook` unless the user asked to skip it; records the outcome.
    pub(super) fn attempt<T>(
        &mut self,
        st: &mut CollectorStatus,
        hook: &'static str,
        attach: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Option<T> {
        if self.skip.iter().any(|h| h == hook) {
            st.notes.push(format!("{hook}: skipped (--hooks.skip)"));
            return None;
        }
        match attach(self) {
            Ok(v) => {
                st.hook = Some(hook);
                Some(v)
            }
            Err(e) => {
                st.notes.push(format!("{hook}: {e}"));
                None
            }
        }
    }

    /// An iterator program for `target` (e.g. "task") with a re-readable link.
    pub(super) fn iter(
        &mut self,
        st: &mut CollectorStatus,
        hook: &'static str,
        name: &str,
        target: &str,
        needs: &str,
    ) -> Option<IterLink> {
        let r = self.attempt(st, hook, |a| {
            let prog: &mut Iter = program(a.ebpf, name)?;
            prog.load(target, a.btf).map_err(|e| chain(&e))?;
            let fd = prog.fd().map_err(|e| chain(&e))?;
            IterLink::attach(fd.as_fd()).map_err(|e| format!("BPF_LINK_CREATE: {e}"))
        });
        let skipped = self.skip.iter().any(|h| h == hook);
        if r.is_none() && !skipped {
            if let Some(last) = st.notes.last_mut() {
                last.push_str(&format!(" ({needs})"));
            }
        }
        r
    }

    /// The exit hook: BTF tracepoint, else raw tracepoint. Returns the program attached.
    pub(super) fn exit_hook(&mut self, st: &mut CollectorStatus) -> Option<&'static str> {
        let btf_tp = self.attempt(st, hooks::EXIT_BTF, |a| {
            let key = link_key(SWITCH_BTF_PROGRAM, "sched_switch");
            let prog: &mut BtfTracePoint = program(a.ebpf, SWITCH_BTF_PROGRAM)?;
            prog.load("sched_switch", a.btf).map_err(|e| chain(&e))?;
            let id = prog.attach().map_err(|e| chain(&e))?;
            if let Some(p) = a.pins.as_deref_mut() {
                let link = prog.take_link(id).map_err(|e| chain(&e))?;
                p.keep(&key, FdLink::from(link))?;
            }
            Ok(())
        });
        if btf_tp.is_some() {
            return Some(SWITCH_BTF_PROGRAM);
        }
        let raw = self.attempt(st, hooks::EXIT_RAW, |a| {
            a.raw_set(&[(SWITCH_RAW_PROGRAM, "sched_switch")])
        });
        if raw.is_none() {
            st.notes.push(
                "threads and processes that exit between two collections are not counted".into(),
            );
            return None;
        }
        Some(SWITCH_RAW_PROGRAM)
    }

    /// Block IO: block_io_start/done where the kernel has them (6.5+), else the block_rq_*
    /// tracepoints. Completion programs are attached before the start program, so no start
    /// is recorded without a program to end it. Returns the programs attached.
    pub(super) fn block(&mut self, st: &mut CollectorStatus) -> Option<Vec<&'static str>> {
        const MAIN: &[(&str, &str)] = &[
            (IO_DONE_PROGRAM, "block_io_done"),
            (RQ_BYTES_PROGRAM, "block_rq_complete"),
            (IO_START_PROGRAM, "block_io_start"),
        ];
        const FALLBACK: &[(&str, &str)] = &[
            (RQ_DONE_PROGRAM, "block_rq_complete"),
            (RQ_START_PROGRAM, "block_rq_insert"),
            (RQ_START_PROGRAM, "block_rq_issue"),
        ];
        let mut progs = if self
            .attempt(st, hooks::BLOCK_IO, |a| a.raw_set(MAIN))
            .is_some()
        {
            vec![IO_DONE_PROGRAM, RQ_BYTES_PROGRAM, IO_START_PROGRAM]
        } else {
            self.attempt(st, hooks::BLOCK_RQ, |a| a.raw_set(FALLBACK))?;
            vec![RQ_DONE_PROGRAM, RQ_START_PROGRAM]
        };
        // block_rq_merge (5.9+) lets a merged-away request's start go at once: otherwise it
        // would age out of the LRU map, and on the main hooks count as an end not seen.
        match self.raw_set(&[(RQ_MERGE_PROGRAM, "block_rq_merge")]) {
            Ok(()) => progs.push(RQ_MERGE_PROGRAM),
            Err(e) => st.notes.push(format!("raw_tp/block_rq_merge: {e}")),
        }
        if progs[0] == IO_DONE_PROGRAM {
            return Some(progs);
        }
        st.notes.push(
            "fallback (block_io_start/done need Linux 6.5+): requests that kblockd workers start \
             are charged to them"
                .into(),
        );
        Some(progs)
    }

    /// Dirtied bytes: writeback_dirty_folio, else writeback_dirty_page (same arguments).
    pub(super) fn dirty(&mut self, st: &mut CollectorStatus) -> Option<&'static str> {
        for (hook, tp) in [
            (hooks::DIRTY_FOLIO, "writeback_dirty_folio"),
            (hooks::DIRTY_PAGE, "writeback_dirty_page"),
        ] {
            if self
                .attempt(st, hook, |a| a.raw_set(&[(DIRTY_PROGRAM, tp)]))
                .is_some()
            {
                return Some(DIRTY_PROGRAM);
            }
        }
        st.notes
            .push("buffered writes are charged to the kernel threads that write them back".into());
        None
    }
}

/// cgroup programs attach as BPF links (5.7+), which coexist with other programs on the same
/// cgroup whatever the mode; the kernel rejects any mode flag on a link (EINVAL), so it is 0.
const CGROUP_LINK: CgroupAttachMode = CgroupAttachMode::Single;

/// Attaches the TCP collectors (bytes, connection states, retransmits, RTT) and takes their
/// maps. Returns the programs attached and the maps (None if no TCP collector is up).
pub(super) fn attach_tcp(
    a: &mut Attacher<'_>,
    opts: &LoadOptions,
    [bytes, state, retransmit, rtt]: [&mut CollectorStatus; 4],
) -> (Vec<&'static str>, Option<TcpMaps>) {
    let mut progs = Vec::new();
    if let Err(e) = set_remote_ports(a.ebpf, &opts.tcp_remote_ports) {
        for s in [&mut *bytes, &mut *retransmit] {
            s.notes.push(format!("remote ports not set: {e}"));
        }
    }
    let cgroup = crate::sys::cgroup2_root(opts.cgroup_path.as_deref()).and_then(|p| {
        std::fs::File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))
    });
    let sock_length = &[
        (RECV_PROGRAM, "sock_recv_length"),
        (SEND_PROGRAM, "sock_send_length"),
    ];
    if a.attempt(bytes, hooks::TCP_SOCK_LENGTH, |a| a.raw_set(sock_length))
        .is_some()
    {
        progs.extend([RECV_PROGRAM, SEND_PROGRAM]);
    } else if a
        .attempt(bytes, hooks::TCP_CGROUP_SKB, |a| {
            let cg = cgroup.as_ref().map_err(Clone::clone)?;
            for (name, dir) in [
                (SKB_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
                (SKB_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
            ] {
                let key = link_key(name, "cgroup");
                let prog: &mut CgroupSkb = program(a.ebpf, name)?;
                prog.load().map_err(|e| chain(&e))?;
                let id = prog.attach(cg, dir, CGROUP_LINK).map_err(|e| chain(&e))?;
                if let Some(p) = a.pins.as_deref_mut() {
                    let link = prog.take_link(id).map_err(|e| chain(&e))?;
                    p.keep(&key, FdLink::try_from(link).map_err(|e| chain(&e))?)?;
                }
            }
            Ok(())
        })
        .is_some()
    {
        progs.extend([SKB_INGRESS_PROGRAM, SKB_EGRESS_PROGRAM]);
        bytes.notes.push(
            "fallback (sock_send_length needs Linux 6.3+): bytes per port only, charged to the \
             port's listener or to \"other\""
                .into(),
        );
    }
    if a.attempt(state, hooks::TCP_STATE, |a| {
        a.raw_set(&[(STATE_PROGRAM, "inet_sock_set_state")])
    })
    .is_some()
    {
        progs.push(STATE_PROGRAM);
    } else {
        state.notes.push(
            "no connection counts; listeners count as server ports only once the daemon sees them"
                .into(),
        );
    }
    if a.attempt(retransmit, hooks::TCP_RETRANSMIT, |a| {
        a.raw_set(&[(RETRANSMIT_PROGRAM, "tcp_retransmit_skb")])
    })
    .is_some()
    {
        progs.push(RETRANSMIT_PROGRAM);
        match a.raw_set(&[(RETRANSMIT_SYNACK_PROGRAM, "tcp_retransmit_synack")]) {
            Ok(()) => progs.push(RETRANSMIT_SYNACK_PROGRAM),
            Err(e) => retransmit
                .notes
                .push(format!("raw_tp/tcp_retransmit_synack: {e}")),
        }
    }
    if a.attempt(rtt, hooks::TCP_SOCKOPS, |a| {
        let cg = cgroup.as_ref().map_err(Clone::clone)?;
        let key = link_key(SOCKOPS_PROGRAM, "cgroup");
        let prog: &mut SockOps = program(a.ebpf, SOCKOPS_PROGRAM)?;
        prog.load().map_err(|e| chain(&e))?;
        let id = prog.attach(cg, CGROUP_LINK).map_err(|e| chain(&e))?;
        if let Some(p) = a.pins.as_deref_mut() {
            let link = prog.take_link(id).map_err(|e| chain(&e))?;
            p.keep(&key, FdLink::try_from(link).map_err(|e| chain(&e))?)?;
        }
        Ok(())
    })
    .is_some()
    {
        progs.push(SOCKOPS_PROGRAM);
        rtt.notes
            .push("connections accepted before probe started have no RTT samples".into());
    }
    if ![&*bytes, &*state, &*retransmit, &*rtt]
        .iter()
        .any(|s| s.up())
    {
        return (progs, None);
    }
    let ebpf = &mut *a.ebpf;
    let maps = (|| {
        Some(TcpMaps {
            traffic: BpfHashMap::try_from(ebpf.take_map(TRAFFIC_MAP)?).ok()?,
            listen: BpfHashMap::try_from(ebpf.take_map(LISTEN_MAP)?).ok()?,
            rtt: BpfHashMap::try_from(ebpf.take_map(RTT_MAP)?).ok()?,
            stats: PerCpuArray::try_from(ebpf.take_map(TCP_STATS_MAP)?).ok()?,
        })
    })();
    if maps.is_none() {
        for s in [bytes, state, retransmit, rtt] {
            s.hook = None;
            s.notes.push("TCP maps missing from the object".into());
        }
    }
    (progs, maps)
}

/// Writes the user's well-known remote ports into the kernel map (before any program runs).
fn set_remote_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), String> {
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

/// The name a link is pinned under: `program@target`.
pub(super) fn link_key(program: &str, target: &str) -> String {
    format!("{program}@{target}")
}

impl Attacher<'_> {
    /// Loads (once) and attaches raw tracepoint programs to tracepoints, all or nothing: if one
    /// fails, the ones attached by this call are detached again. When pinning, the links are
    /// pinned (this daemon's generation, beside a previous daemon's until the handover).
    pub(super) fn raw_set(&mut self, set: &[(&str, &str)]) -> Result<(), String> {
        let mut done: Vec<(
            &str,
            &str,
            aya::programs::raw_trace_point::RawTracePointLinkId,
        )> = Vec::new();
        let mut result = Ok(());
        for &(name, tp) in set {
            let attached = program::<RawTracePoint>(self.ebpf, name).and_then(|prog| {
                if prog.fd().is_err() {
                    prog.load().map_err(|e| chain(&e))?;
                }
                prog.attach(tp).map_err(|e| format!("{tp}: {}", chain(&e)))
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
                if let Ok(prog) = program::<RawTracePoint>(self.ebpf, name) {
                    let _ = prog.detach(id);
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
                if let Ok(prog) = program::<RawTracePoint>(self.ebpf, name) {
                    let _ = prog.detach(id);
                }
                continue;
            }
            let key = link_key(name, tp);
            let kept = program::<RawTracePoint>(self.ebpf, name).and_then(|prog| {
                let link = prog.take_link(id).map_err(|e| chain(&e))?;
                p.keep(&key, FdLink::from(link))
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

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    prog.try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))
}
