//! Every collector in one table: its hooks in order of preference (the first that loads and
//! attaches is used), what each fallback costs, and the maps the daemon reads from it and why.
//! [`super::load_pinned`] walks it in this order; adding a collector is adding an entry here
//! and a reader in `collect/`.

use probe_common::{
    block::{
        DIRTY_PROGRAM, IO_DONE_PROGRAM, IO_MAP, IO_START_PROGRAM, RQ_BYTES_PROGRAM,
        RQ_DONE_PROGRAM, RQ_MERGE_PROGRAM, RQ_START_PROGRAM, STARTS_MAP, STATS_MAP as BLOCK_STATS,
    },
    cpu::{
        DEAD_MAP, EXIT_AT_SWITCH_MAP, EXIT_STATS_MAP, RELEASE_FUNCTION, RELEASE_PROGRAM,
        SWITCH_BTF_PROGRAM, SWITCH_RAW_PROGRAM, TASK_ITER_PROGRAM,
    },
    ports::LISTEN_ITER_PROGRAM,
    runq::{STATS_MAP as RUNQ_STATS, THREADS_MAP as RUNQ_THREADS},
    tcp::{
        FORGET_PROGRAM, LISTEN_MAP, RETRANSMIT_PROGRAM, RETRANSMIT_SYNACK_PROGRAM, RTT_MAP,
        SKB_EGRESS_PROGRAM, SKB_INGRESS_PROGRAM, SOCKOPS_PROGRAM, STATE_PROGRAM,
        STATS_MAP as TCP_STATS, TRAFFIC_MAP, WALK_PROGRAM,
    },
};

use super::{hooks, names, RUNQ_HISTOGRAMS_FLAG};

/// How a hook's programs are attached.
#[derive(Debug)]
pub enum Attach {
    /// An iterator program over `target` ("task", "task_file"), its link re-readable.
    Iter {
        program: &'static str,
        target: &'static str,
    },
    /// BTF-typed tracepoints (`tp_btf`), (program, tracepoint), all or none; each program is
    /// verified against its one tracepoint's argument types.
    Btf(&'static [(&'static str, &'static str)]),
    /// Raw tracepoints, (program, tracepoint), all or none; a program named twice is loaded
    /// once and attached to both.
    Raw(&'static [(&'static str, &'static str)]),
    /// fentry programs, (program, kernel function), all or none: BPF trampolines, which some
    /// kernels do not allow (lockdown, some hosts' policies).
    FEntry(&'static [(&'static str, &'static str)]),
    /// cgroup_skb programs (ingress, egress) on the cgroup2 root.
    CgroupSkb {
        ingress: &'static str,
        egress: &'static str,
    },
    /// A sock_ops program on the cgroup2 root.
    SockOps { program: &'static str },
    /// A part of the program another collector attached, when that collector is on one of the
    /// hooks `on`; else the hooks `otherwise` are tried, in order.
    Within {
        collector: &'static str,
        on: &'static [&'static str],
        otherwise: &'static [Hook],
    },
    /// Read by the daemon from /proc, no kernel program.
    Procfs,
}

#[derive(Debug)]
pub struct Hook {
    /// As `probe check` and `--hooks.skip` spell it ([`hooks`]).
    pub name: &'static str,
    pub attach: Attach,
    /// Added to its failure: what the hook needs.
    pub needs: Option<&'static str>,
    /// Said when this hook is the one in use: what the fallback loses.
    pub used: Option<&'static str>,
    /// Raw tracepoints attached beside it when they can be; their failure is only a note.
    pub extras: &'static [(&'static str, &'static str)],
    /// An iterator attached beside it when it can be (and is not skipped by its name); its
    /// failure is only a note.
    pub iter_extra: Option<IterExtra>,
    /// A one-entry array map set to 1 before the hook's programs attach (and back to 0 if they
    /// fail): turns on the part of a shared program that this hook is for.
    pub turns_on: Option<&'static str>,
}

/// An iterator beside a hook: the daemon runs it at every collection.
#[derive(Debug)]
pub struct IterExtra {
    /// As `--hooks.skip` spells it ([`hooks`]).
    pub name: &'static str,
    pub program: &'static str,
    pub target: &'static str,
    /// The map a map iterator walks.
    pub map: Option<&'static str>,
    /// Said when it is not attached: what that costs.
    pub without: &'static str,
}

/// What the TCP programs that read sockets by BTF type need.
const TP_BTF_NEEDS: &str = "needs BTF-typed tracepoints (tp_btf, Linux 5.5+)";

/// What the programs that move a socket's counts need.
const CMPXCHG_NEEDS: &str = "needs Linux 5.12+ (BPF compare-and-exchange)";

const fn hook(name: &'static str, attach: Attach) -> Hook {
    Hook {
        name,
        attach,
        needs: None,
        used: None,
        extras: &[],
        iter_extra: None,
        turns_on: None,
    }
}

/// A map the daemon reads from a collector's programs.
#[derive(Debug)]
pub struct MapUse {
    pub name: &'static str,
    /// Without it the collector is down (else it only loses what `why` says).
    pub required: bool,
    pub why: &'static str,
}

#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// In order of preference.
    pub hooks: &'static [Hook],
    /// Said when no hook works: what is not counted.
    pub down: Option<&'static str>,
    /// Off unless this flag of `probe serve` turns it on (it costs more than it tells most
    /// users): then no hook is tried and it is not a collector that is down.
    pub opt_in: Option<&'static str>,
    pub maps: &'static [MapUse],
}

/// The sched_switch program, BTF-typed or raw: the exit hook's fallback, and the run-queue
/// histograms.
const SWITCH_BTF: Hook = hook(
    hooks::EXIT_BTF,
    Attach::Btf(&[(SWITCH_BTF_PROGRAM, "sched_switch")]),
);
const SWITCH_RAW: Hook = hook(
    hooks::EXIT_RAW,
    Attach::Raw(&[(SWITCH_RAW_PROGRAM, "sched_switch")]),
);

/// Said when the exit hook is on sched_switch.
const EXIT_AT_SWITCH_COST: &str =
    "fallback: a program at every context switch (45-115 ns each; see the README's benchmarks)";

const PROCFS_CPU: Hook = Hook {
    used: Some("reading /proc/<pid>/task/*/schedstat instead (slower)"),
    ..hook(hooks::PROCFS, Attach::Procfs)
};

/// Every collector, in the order they are loaded and listed (`probe check`,
/// probe_collector_up): the exit hook before the run queue, which rides on its program when
/// that is the sched_switch one.
pub const COLLECTORS: &[Spec] = &[
    Spec {
        name: names::CPU,
        hooks: &[
            Hook {
                needs: Some("needs Linux 5.8+ with BTF"),
                ..hook(
                    hooks::TASK_ITER,
                    Attach::Iter {
                        program: TASK_ITER_PROGRAM,
                        target: "task",
                    },
                )
            },
            PROCFS_CPU,
        ],
        down: None,
        opt_in: None,
        maps: &[],
    },
    // Tried and not used: the sched_process_free tracepoint (once per thread, no trampolines).
    // It fires from the RCU callback that frees the task, which on the 6.18 test host came up
    // to a minute after the exit for 1-4 of 1,000 short-lived processes: their totals arrived
    // after the daemon had forgotten the process (perf saw the same late frees).
    Spec {
        name: names::CPU_EXIT,
        hooks: &[
            Hook {
                needs: Some(
                    "needs BPF trampolines (fentry: Linux 5.5+ on x86-64, 6.0+ on arm64; some \
                     hosts forbid them) and the kernel function cgroup_release",
                ),
                ..hook(
                    hooks::EXIT_FENTRY,
                    Attach::FEntry(&[(RELEASE_PROGRAM, RELEASE_FUNCTION)]),
                )
            },
            Hook {
                used: Some(EXIT_AT_SWITCH_COST),
                turns_on: Some(EXIT_AT_SWITCH_MAP),
                ..SWITCH_BTF
            },
            Hook {
                used: Some(EXIT_AT_SWITCH_COST),
                turns_on: Some(EXIT_AT_SWITCH_MAP),
                ..SWITCH_RAW
            },
        ],
        down: Some("threads and processes that exit between two collections are not counted"),
        opt_in: None,
        maps: &[
            MapUse {
                name: DEAD_MAP,
                required: true,
                why: "the final totals of threads that exited since the last collection",
            },
            MapUse {
                name: EXIT_STATS_MAP,
                required: false,
                why: "exits not recorded because the dead-thread map was full",
            },
        ],
    },
    Spec {
        name: names::PORTS,
        hooks: &[
            Hook {
                needs: Some("needs Linux 5.11+ for bpf_sock_from_file"),
                ..hook(
                    hooks::TASK_FILE_ITER,
                    Attach::Iter {
                        program: LISTEN_ITER_PROGRAM,
                        target: "task_file",
                    },
                )
            },
            Hook {
                used: Some("using /proc/net/tcp{,6} and /proc/<pid>/fd instead (slower)"),
                ..hook(hooks::PROCFS, Attach::Procfs)
            },
        ],
        down: None,
        opt_in: None,
        maps: &[],
    },
    Spec {
        name: names::BLOCK,
        hooks: &[
            Hook {
                // Completion programs before the start program: no start is recorded without
                // a program to end it. block_rq_merge (5.9+) lets a merged-away request's
                // start go at once (else it ages out of the LRU map as an end not seen).
                extras: &[(RQ_MERGE_PROGRAM, "block_rq_merge")],
                ..hook(
                    hooks::BLOCK_IO,
                    Attach::Raw(&[
                        (IO_DONE_PROGRAM, "block_io_done"),
                        (RQ_BYTES_PROGRAM, "block_rq_complete"),
                        (IO_START_PROGRAM, "block_io_start"),
                    ]),
                )
            },
            Hook {
                used: Some(
                    "fallback (block_io_start/done need Linux 6.5+): requests that kblockd \
                     workers start are charged to them",
                ),
                extras: &[(RQ_MERGE_PROGRAM, "block_rq_merge")],
                ..hook(
                    hooks::BLOCK_RQ,
                    Attach::Raw(&[
                        (RQ_DONE_PROGRAM, "block_rq_complete"),
                        (RQ_START_PROGRAM, "block_rq_insert"),
                        (RQ_START_PROGRAM, "block_rq_issue"),
                    ]),
                )
            },
        ],
        down: None,
        opt_in: None,
        maps: BLOCK_MAPS,
    },
    Spec {
        name: names::BLOCK_DIRTY,
        hooks: &[
            hook(
                hooks::DIRTY_FOLIO,
                Attach::Raw(&[(DIRTY_PROGRAM, "writeback_dirty_folio")]),
            ),
            hook(
                hooks::DIRTY_PAGE,
                Attach::Raw(&[(DIRTY_PROGRAM, "writeback_dirty_page")]),
            ),
        ],
        down: Some("buffered writes are charged to the kernel threads that write them back"),
        opt_in: None,
        maps: BLOCK_MAPS,
    },
    Spec {
        name: names::TCP,
        hooks: &[
            Hook {
                needs: Some(
                    "needs Linux 5.12+ (bpf_sock_from_file in iterators, BPF compare-and-exchange)",
                ),
                ..hook(
                    hooks::TCP_WALK,
                    Attach::Iter {
                        program: WALK_PROGRAM,
                        target: "task_file",
                    },
                )
            },
            Hook {
                used: Some(
                    "fallback (the walk over sockets needs Linux 5.12+): bytes per port only, \
                     charged to the port's listener or to \"other\"",
                ),
                ..hook(
                    hooks::TCP_CGROUP_SKB,
                    Attach::CgroupSkb {
                        ingress: SKB_INGRESS_PROGRAM,
                        egress: SKB_EGRESS_PROGRAM,
                    },
                )
            },
        ],
        down: None,
        opt_in: None,
        maps: TCP_MAPS,
    },
    Spec {
        name: names::TCP_STATE,
        hooks: &[Hook {
            needs: Some(CMPXCHG_NEEDS),
            ..hook(
                hooks::TCP_STATE,
                // Each connection's start, FIN and final counters, and its entry deleted when
                // the socket goes: the two together or not at all.
                Attach::Btf(&[
                    (STATE_PROGRAM, "inet_sock_set_state"),
                    (FORGET_PROGRAM, "tcp_destroy_sock"),
                ]),
            )
        }],
        down: Some(
            "no connection counts; listeners count as server ports only once the daemon sees \
             them; bytes of connections that close between two collections are not counted, \
             those of connections that start between two collections only from the second",
        ),
        opt_in: None,
        maps: TCP_MAPS,
    },
    Spec {
        name: names::TCP_RETRANSMIT,
        hooks: &[Hook {
            extras: &[(RETRANSMIT_SYNACK_PROGRAM, "tcp_retransmit_synack")],
            needs: Some(TP_BTF_NEEDS),
            ..hook(
                hooks::TCP_RETRANSMIT,
                Attach::Btf(&[(RETRANSMIT_PROGRAM, "tcp_retransmit_skb")]),
            )
        }],
        down: None,
        opt_in: None,
        maps: TCP_MAPS,
    },
    Spec {
        name: names::TCP_RTT,
        hooks: &[
            // A part of the TCP walk: each server connection's smoothed RTT, once per
            // collection in which it carried data; nothing per packet.
            hook(
                hooks::RTT_WALK,
                Attach::Within {
                    collector: names::TCP,
                    on: &[hooks::TCP_WALK],
                    otherwise: &[],
                },
            ),
            Hook {
                used: Some(
                    "fallback: a program at every RTT measurement of accepted connections; those \
                     accepted before probe started have no RTT samples",
                ),
                ..hook(
                    hooks::TCP_SOCKOPS,
                    Attach::SockOps {
                        program: SOCKOPS_PROGRAM,
                    },
                )
            },
        ],
        down: None,
        opt_in: None,
        maps: TCP_MAPS,
    },
    Spec {
        name: names::RUNQ,
        hooks: &[hook(
            hooks::RUNQ,
            Attach::Within {
                collector: names::CPU_EXIT,
                on: &[hooks::EXIT_BTF, hooks::EXIT_RAW],
                otherwise: &[SWITCH_BTF, SWITCH_RAW],
            },
        )],
        down: None,
        opt_in: Some(RUNQ_HISTOGRAMS_FLAG),
        maps: &[
            MapUse {
                name: RUNQ_THREADS,
                required: true,
                why: "each thread's run-queue waits since the last collection",
            },
            MapUse {
                name: RUNQ_STATS,
                required: true,
                why: "waits not counted because the thread map was full",
            },
        ],
    },
    Spec {
        name: names::PROCESS_TABLE,
        hooks: &[hook(hooks::PROCFS, Attach::Procfs)],
        down: None,
        opt_in: None,
        maps: &[],
    },
];

const BLOCK_MAPS: &[MapUse] = &[
    MapUse {
        name: IO_MAP,
        required: true,
        why: "bytes, operations and latency per (process, disk, op), and dirtied bytes",
    },
    MapUse {
        name: BLOCK_STATS,
        required: false,
        why: "IO not counted because a map was full, completions without a start",
    },
    MapUse {
        name: STARTS_MAP,
        required: false,
        why: "requests in flight, to find those whose completion the kernel did not report",
    },
];

/// Read by every TCP collector: the daemon reads them together.
const TCP_MAPS: &[MapUse] = &[
    MapUse {
        name: TRAFFIC_MAP,
        required: true,
        why: "payload bytes, connections and retransmits per (process, port, role)",
    },
    MapUse {
        name: LISTEN_MAP,
        required: true,
        why: "the listening ports the programs key by; the daemon removes closed ones",
    },
    MapUse {
        name: RTT_MAP,
        required: true,
        why: "RTT histograms per listening port",
    },
    MapUse {
        name: TCP_STATS,
        required: true,
        why: "TCP events not counted because a map was full",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_can_be_skipped_by_name_and_appears_once_per_collector() {
        for spec in COLLECTORS {
            for (i, h) in spec.hooks.iter().enumerate() {
                assert!(
                    h.name == hooks::PROCFS || hooks::ALL.contains(&h.name),
                    "{}: {} is not in hooks::ALL",
                    spec.name,
                    h.name
                );
                assert!(
                    spec.hooks[..i].iter().all(|o| o.name != h.name),
                    "{}: {} twice",
                    spec.name,
                    h.name
                );
            }
        }
        for name in hooks::ALL {
            assert!(
                COLLECTORS.iter().any(|s| s
                    .hooks
                    .iter()
                    .any(|h| h.name == *name
                        || h.iter_extra.as_ref().is_some_and(|x| x.name == *name))),
                "{name} is in no collector's hooks"
            );
        }
    }

    #[test]
    fn every_btf_tracepoint_program_has_one_tracepoint() {
        // A tp_btf program is verified against one tracepoint's types: named twice, the second
        // attachment would reuse the first.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for spec in COLLECTORS {
            for h in spec.hooks {
                if let Attach::Btf(set) = h.attach {
                    for &(program, tracepoint) in set {
                        if let Some((_, other)) = seen.iter().find(|(p, _)| *p == program) {
                            assert_eq!(*other, tracepoint, "{program} on two tracepoints");
                        }
                        seen.push((program, tracepoint));
                    }
                }
            }
        }
        assert!(seen.len() >= 4, "{seen:?}");
    }

    #[test]
    fn a_collector_another_one_rides_on_is_loaded_first() {
        for (i, spec) in COLLECTORS.iter().enumerate() {
            for h in spec.hooks {
                if let Attach::Within { collector, .. } = h.attach {
                    assert!(
                        COLLECTORS[..i].iter().any(|s| s.name == collector),
                        "{} rides on {collector}, loaded after it",
                        spec.name
                    );
                }
            }
        }
    }
}
