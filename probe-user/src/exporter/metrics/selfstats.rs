//! The daemon's own families: what the kernel programs could not count, collectors and their
//! hooks, BPF program statistics, reloads, saved state, build.

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::{
    clamp, counter, family, gauge,
    labels::{Build, Collector, CollectorHook, File, FileOutcome, Outcome, Program},
    secs, single, Desc,
};
use crate::{collect::bpfstats::ProgramStats, daemon::Snapshot};

const RUNQ_EVENTS: Desc = (
    "probe_runqueue_events",
    None,
    "Switch-outs whose run-queue wait was not counted: result=lost: the thread had no entry and the run-queue thread map was full (--runq.map-size).",
);
const TCP_EVENTS: Desc = (
    "probe_tcp_events",
    None,
    "TCP events not counted: result=lost: a TCP map was full (raise --tcp.map-size, or --tcp.socket-map-size above the connections open at once).",
);
const UP: Desc = (
    "probe_collector_up",
    None,
    "1 if the collector's hook is attached and its last read succeeded.",
);
const HOOK: Desc = (
    "probe_collector_hook_info",
    None,
    "The hook each working collector uses on this kernel.",
);
const ERRORS: Desc = (
    "probe_collector_errors",
    None,
    "Failed reads per collector since the daemon started.",
);
const RUNS: Desc = (
    "probe_bpf_program_runs",
    None,
    "Times each kernel program ran while the kernel kept BPF statistics (--bpf.stats).",
);
const MISSED: Desc = (
    "probe_bpf_program_missed_runs",
    None,
    "Runs of each kernel program the kernel skipped because the program was already running on that CPU (an interrupt fired the same hook while it ran); the events of those runs are missing from every other counter. Linux 5.12+.",
);
const RUN_TIME: Desc = ("probe_bpf_program_run", Some(Unit::Seconds), "Time spent in each kernel program while the kernel kept BPF statistics (--bpf.stats); divided by runs, the cost per event.");
const EXITS: Desc = ("probe_exited_threads", None, "Exiting threads whose final CPU totals the exit hook recorded; result=lost: the dead-thread map was full.");
const PROCESSES: Desc = ("probe_processes", None, "Live processes tracked.");
const INSTANCES: Desc = ("probe_instances", None, "Service instances exported.");
const FOLDED: Desc = ("probe_instances_folded", None, "Instance names counted in service_instance=\"other\" because the number of instances reached its cap (max in [instances]).");
const RELOADS: Desc = (
    "probe_config_reloads",
    None,
    "Reloads on SIGHUP of the rule file (file=rules) and the web config (file=web): result=success, or failure (the previous one stays).",
);
const RELOAD_OK: Desc = (
    "probe_config_last_reload_successful",
    None,
    "1 if the last reload of the file (file=rules or web) succeeded, or none failed yet.",
);
const COLLECT: Desc = (
    "probe_collect_duration",
    Some(Unit::Seconds),
    "Time the collection behind this scrape took (kernel reads, /proc, aggregation).",
);
const COLLECTIONS: Desc = (
    "probe_collections",
    None,
    "Collections since the daemon started (scrapes and timer).",
);
const RESTORED: Desc = ("probe_state_restored", None, "1 if this daemon carries on from the accounts a previous one saved (--state.file) with the maps it pinned (--bpf.pin-path): its counters continue, no reset.");
const STATE_SAVE_FAILURES: Desc = ("probe_state_save_failures", None, "Saves of the accounts (--state.file, at every collection) that failed: a restart after one counts from the last good save.");
const HISTORY_RECORDING: Desc = ("probe_history_recording", None, "1 if the last history frame was written (--history.dir); 0 after a write failed (full or read-only disk: see the log; tried again every 10 s).");
const HISTORY_FRAMES: Desc = (
    "probe_history_frames_written",
    None,
    "History frames written, one per collection.",
);
const HISTORY_DROPPED: Desc = (
    "probe_history_frames_dropped",
    None,
    "History frames not written: recording was stopped by an error, or the writer was behind.",
);
const HISTORY_ERRORS: Desc = (
    "probe_history_write_errors",
    None,
    "History writes that failed (each is logged once until recording works again).",
);
const HISTORY_BYTES: Desc = (
    "probe_history_size",
    Some(Unit::Bytes),
    "Bytes the history store uses (bounded by --history.max-size).",
);
const HISTORY_OLDEST: Desc = (
    "probe_history_oldest_frame_timestamp",
    Some(Unit::Seconds),
    "Unix time of the oldest history frame kept (--history.retention).",
);
const BUILD: Desc = (
    "probe_build_info",
    None,
    "Version of the probe daemon; the value is always 1.",
);

pub(super) fn encode(s: &Snapshot, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let lost = |n: u64| [(Outcome { result: "lost" }, ConstCounter::new(n))];
    family(e, RUNQ_EVENTS, lost(s.stats.runq_lost))?;
    family(e, TCP_EVENTS, lost(s.stats.tcp_lost))?;
    family(
        e,
        UP,
        s.collectors
            .iter()
            .map(|(c, up)| (Collector { collector: c.name }, gauge(i64::from(*up)))),
    )?;
    let hooks = s.collectors.iter().filter_map(|(c, _)| {
        let labels = CollectorHook {
            collector: c.name,
            hook: c.hook?,
        };
        Some((labels, gauge(1)))
    });
    family(e, HOOK, hooks)?;
    family(
        e,
        ERRORS,
        s.stats
            .errors
            .iter()
            .map(|(c, n)| (Collector { collector: c }, ConstCounter::new(*n))),
    )?;

    let prog = |p: &ProgramStats| Program { program: p.program };
    let programs = || s.stats.programs.iter();
    family(
        e,
        MISSED,
        programs().filter_map(|p| Some((prog(p), ConstCounter::new(p.missed?)))),
    )?;
    // Without statistics the kernel counts nothing: no rows rather than zeros that read as
    // "never ran".
    family(
        e,
        RUNS,
        programs().filter_map(|p| Some((prog(p), ConstCounter::new(p.cost?.runs)))),
    )?;
    family(
        e,
        RUN_TIME,
        programs().filter_map(|p| Some((prog(p), counter(secs(p.cost?.run_ns))))),
    )?;
    family(
        e,
        EXITS,
        [
            ("recorded", s.stats.exits_recorded),
            ("lost", s.stats.exits_lost),
        ]
        .map(|(result, n)| (Outcome { result }, ConstCounter::new(n))),
    )?;

    single(e, PROCESSES, gauge(clamp(s.processes as u64)))?;
    single(e, INSTANCES, gauge(clamp(s.instances.len() as u64)))?;
    single(e, FOLDED, gauge(clamp(s.folded_instances as u64)))?;
    let files = [
        ("rules", s.stats.rule_reloads),
        ("web", s.stats.web_reloads),
    ];
    family(
        e,
        RELOADS,
        files.into_iter().flat_map(|(file, r)| {
            [("success", r.ok), ("failure", r.failed)]
                .map(|(result, n)| (FileOutcome { file, result }, ConstCounter::new(n)))
        }),
    )?;
    family(
        e,
        RELOAD_OK,
        files.map(|(file, r)| (File { file }, gauge(i64::from(r.last_successful())))),
    )?;
    single(
        e,
        COLLECT,
        ConstGauge::new(s.stats.last_collect.as_secs_f64()),
    )?;
    single(e, COLLECTIONS, ConstCounter::new(s.stats.collections))?;
    single(e, RESTORED, gauge(i64::from(s.stats.restored)))?;
    single(
        e,
        STATE_SAVE_FAILURES,
        ConstCounter::new(s.stats.state_save_failures),
    )?;
    if let Some(h) = &s.stats.history {
        single(e, HISTORY_RECORDING, gauge(i64::from(h.recording)))?;
        single(e, HISTORY_FRAMES, ConstCounter::new(h.frames_written))?;
        single(e, HISTORY_DROPPED, ConstCounter::new(h.frames_dropped))?;
        single(e, HISTORY_ERRORS, ConstCounter::new(h.write_errors))?;
        single(e, HISTORY_BYTES, gauge(clamp(h.bytes)))?;
        if let Some(t) = h.oldest_ms {
            single(e, HISTORY_OLDEST, ConstGauge::new(t as f64 / 1e3))?;
        }
    }
    family(
        e,
        BUILD,
        [(
            Build {
                version: env!("CARGO_PKG_VERSION"),
            },
            gauge(1),
        )],
    )
}
