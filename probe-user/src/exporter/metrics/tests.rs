//! The exposition of a snapshot that has a row in every family.

use super::encode_openmetrics;
use crate::{
    collect::{
        block::BlockStats,
        bpfstats::{Cost, ProgramStats},
    },
    daemon::{Reloads, SelfStats, Snapshot},
    loader::CollectorStatus,
    model::{
        accounts::{InstanceTotals, IoProcessRow, ProcessRow, TcpProcessRow},
        io::{IoCounters, Op},
        latency::Latency,
        tcp::{Role, TcpCounters, TcpDim},
    },
};

fn snapshot() -> Snapshot {
    Snapshot {
        instances: vec![(
            "mariadbd:3307".into(),
            InstanceTotals {
                cpu_ns: 1_500_000_000,
                run_delay_ns: 250_000_000,
                rss_bytes: 4096,
                processes: 1,
            },
        )],
        top: vec![ProcessRow {
            pid: 42,
            comm: "a\"b\\c\nd".into(),
            instance: "x".into(),
            cpu_ns: 2_000_000_000,
            run_delay_ns: 0,
            score: 1.0,
        }],
        io: vec![
            (("mariadbd:3307".into(), ("vda".into(), Op::Write)), {
                let mut c = IoCounters {
                    bytes: 1 << 20,
                    latency: Latency {
                        count: 3,
                        sum_ns: 3_500_000,
                        ..Latency::default()
                    },
                };
                c.latency.buckets[0] = 1;
                c.latency.buckets[11] = 2;
                c
            }),
            (
                ("mariadbd:3307".into(), ("vda".into(), Op::Dirtied)),
                IoCounters {
                    bytes: 8192,
                    ..IoCounters::default()
                },
            ),
        ],
        top_io: vec![IoProcessRow {
            pid: 42,
            comm: "mariadbd".into(),
            instance: "mariadbd:3307".into(),
            counters: vec![
                (
                    ("vda".into(), Op::Read),
                    IoCounters {
                        bytes: 4096,
                        latency: Latency {
                            count: 1,
                            ..Latency::default()
                        },
                    },
                ),
                (
                    ("vda".into(), Op::Dirtied),
                    IoCounters {
                        bytes: 8192,
                        ..IoCounters::default()
                    },
                ),
            ],
            score: 1.0,
        }],
        tcp: vec![
            (
                (
                    "mariadbd:3307".into(),
                    TcpDim {
                        role: Role::Server,
                        port: 3307,
                    },
                ),
                TcpCounters {
                    rx_bytes: 10,
                    tx_bytes: 20,
                    retransmits: 1,
                    accepted: 2,
                    closed: 1,
                },
            ),
            (
                (
                    "mariadbd:3307".into(),
                    TcpDim {
                        role: Role::Client,
                        port: 443,
                    },
                ),
                TcpCounters {
                    tx_bytes: 5,
                    ..TcpCounters::default()
                },
            ),
        ],
        rtt: vec![(("mariadbd:3307".into(), 3307), {
            let mut c = Latency {
                count: 2,
                sum_ns: 60_000,
                ..Latency::default()
            };
            c.buckets[5] = 2;
            c
        })],
        established: vec![(("mariadbd:3307".into(), 3307), 1)],
        top_tcp: vec![TcpProcessRow {
            pid: 42,
            comm: "mariadbd".into(),
            instance: "mariadbd:3307".into(),
            counters: vec![(
                TcpDim {
                    role: Role::Client,
                    port: 0,
                },
                TcpCounters {
                    rx_bytes: 7,
                    ..TcpCounters::default()
                },
            )],
            score: 1.0,
        }],
        runq: vec![("mariadbd:3307".into(), {
            let mut c = Latency {
                count: 4,
                sum_ns: 40_000,
                ..Latency::default()
            };
            c.buckets[4] = 4;
            c
        })],
        other_cpu: vec![("mariadbd:3307".into(), (500_000_000, 0))],
        other_io: vec![(
            ("mariadbd:3307".into(), ("vda".into(), Op::Write)),
            IoCounters {
                bytes: 512,
                latency: Latency {
                    count: 1,
                    ..Latency::default()
                },
            },
        )],
        other_tcp: vec![(
            (
                "mariadbd:3307".into(),
                TcpDim {
                    role: Role::Server,
                    port: 3307,
                },
            ),
            TcpCounters {
                rx_bytes: 3,
                ..TcpCounters::default()
            },
        )],
        meta: vec![(
            "mariadbd:3307".into(),
            crate::daemon::InstanceMeta {
                rule: "listener".into(),
                container: Some("0123456789ab".into()),
                pod_uid: None,
            },
        )],
        folded_instances: 2,
        collectors: vec![(
            CollectorStatus {
                name: "cpu",
                hook: Some("iter/task"),
                notes: vec![],
                off: None,
            },
            true,
        )],
        stats: SelfStats {
            errors: [("tcp", 2)].into(),
            exits_recorded: 7,
            exits_lost: 1,
            block: BlockStats {
                unmatched: 1,
                lost: 2,
                end_missed: 3,
                writeback_charged: 4,
                writeback_kernel: 5,
            },
            block_ends_found: 6,
            tcp_lost: 8,
            runq_lost: 9,
            rule_reloads: Reloads {
                ok: 1,
                failed: 1,
                last_ok: false,
            },
            restored: true,
            state_save_failures: 2,
            programs: vec![
                ProgramStats {
                    program: "probe_sched_switch_btf",
                    missed: Some(3),
                    cost: Some(Cost {
                        runs: 10,
                        run_ns: 5000,
                    }),
                },
                ProgramStats {
                    program: "probe_tcp_recv",
                    missed: None,
                    cost: None,
                },
            ],
            ..SelfStats::default()
        },
        processes: 1,
    }
}

#[test]
fn label_values_are_escaped() {
    let text = encode_openmetrics(snapshot()).expect("encode");
    assert!(
        text.contains(r#"probe_process_cpu_seconds_total{service_instance="x",pid="42",comm="a\"b\\c\nd"} 2.0"#),
        "{text}"
    );
}

#[test]
fn counters_and_units_follow_the_naming_rules() {
    let text = encode_openmetrics(snapshot()).expect("encode");
    for line in [
        "# TYPE probe_cpu_seconds counter",
        "# UNIT probe_cpu_seconds seconds",
        r#"probe_cpu_seconds_total{service_instance="mariadbd:3307"} 1.5"#,
        r#"probe_cpu_runqueue_wait_seconds_total{service_instance="mariadbd:3307"} 0.25"#,
        r#"probe_memory_rss_bytes{service_instance="mariadbd:3307"} 4096"#,
        r#"probe_collector_up{collector="cpu"} 1"#,
        r#"probe_collector_hook_info{collector="cpu",hook="iter/task"} 1"#,
        r#"probe_block_bytes_total{service_instance="mariadbd:3307",device="vda",op="write"} 1048576"#,
        r#"probe_block_ops_total{service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
        "# TYPE probe_block_latency_seconds histogram",
        r#"probe_block_latency_seconds_sum{service_instance="mariadbd:3307",device="vda",op="write"} 0.0035"#,
        r#"probe_block_latency_seconds_count{service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
        r#"probe_block_latency_seconds_bucket{le="0.000001",service_instance="mariadbd:3307",device="vda",op="write"} 1"#,
        r#"probe_block_latency_seconds_bucket{le="0.001024",service_instance="mariadbd:3307",device="vda",op="write"} 1"#,
        r#"probe_block_latency_seconds_bucket{le="0.002048",service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
        r#"probe_block_latency_seconds_bucket{le="+Inf",service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
        r#"probe_block_dirtied_bytes_total{service_instance="mariadbd:3307",device="vda"} 8192"#,
        r#"probe_process_block_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",device="vda",op="read"} 4096"#,
        r#"probe_process_block_dirtied_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",device="vda"} 8192"#,
        r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="3307",direction="rx"} 10"#,
        r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="3307",direction="tx"} 20"#,
        r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="ephemeral",remote_port="443",direction="tx"} 5"#,
        r#"probe_tcp_connections_total{service_instance="mariadbd:3307",port="3307"} 2"#,
        r#"probe_tcp_connections_closed_total{service_instance="mariadbd:3307",port="3307"} 1"#,
        r#"probe_tcp_established{service_instance="mariadbd:3307",port="3307"} 1"#,
        r#"probe_tcp_retransmits_total{service_instance="mariadbd:3307",port="3307"} 1"#,
        r#"probe_tcp_rtt_seconds_bucket{le="0.000032",service_instance="mariadbd:3307",port="3307"} 2"#,
        r#"probe_tcp_rtt_seconds_sum{service_instance="mariadbd:3307",port="3307"} 0.00006"#,
        r#"probe_process_tcp_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",port="ephemeral",direction="rx"} 7"#,
        r#"probe_runqueue_latency_seconds_bucket{le="0.000016",service_instance="mariadbd:3307"} 4"#,
        r#"probe_runqueue_latency_seconds_sum{service_instance="mariadbd:3307"} 0.00004"#,
        r#"probe_runqueue_latency_seconds_count{service_instance="mariadbd:3307"} 4"#,
        r#"probe_instance_info{service_instance="mariadbd:3307",rule="listener",container="0123456789ab",pod_uid=""} 1"#,
        r#"probe_process_cpu_seconds_total{service_instance="mariadbd:3307",pid="other",comm="other"} 0.5"#,
        r#"probe_process_block_bytes_total{service_instance="mariadbd:3307",pid="other",comm="other",device="vda",op="write"} 512"#,
        r#"probe_process_tcp_bytes_total{service_instance="mariadbd:3307",pid="other",comm="other",port="3307",direction="rx"} 3"#,
        "probe_instances_folded 2",
        r#"probe_config_reloads_total{file="rules",result="failure"} 1"#,
        r#"probe_config_reloads_total{file="web",result="success"} 0"#,
        r#"probe_config_last_reload_successful{file="web"} 1"#,
        r#"probe_config_last_reload_successful{file="rules"} 0"#,
        r#"probe_collector_errors_total{collector="tcp"} 2"#,
        r#"probe_block_events_total{result="end_missed"} 9"#,
        r#"probe_block_writeback_requests_total{charged_to="kernel"} 5"#,
        r#"probe_bpf_program_missed_runs_total{program="probe_sched_switch_btf"} 3"#,
        r#"probe_bpf_program_runs_total{program="probe_sched_switch_btf"} 10"#,
        r#"probe_bpf_program_run_seconds_total{program="probe_sched_switch_btf"} 0.000005"#,
        r#"probe_exited_threads_total{result="lost"} 1"#,
        r#"probe_tcp_events_total{result="lost"} 8"#,
        r#"probe_runqueue_events_total{result="lost"} 9"#,
        "probe_state_restored 1",
        "probe_state_save_failures_total 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains(r#"program="probe_tcp_recv""#),
        "a program the kernel says nothing about has no rows:\n{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

/// The README lists every family literally (HELP and TYPE as the classic format prints
/// them); this keeps it true.
#[test]
fn readme_lists_every_metric() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let classic = crate::exporter::classic::from_openmetrics(
        &encode_openmetrics(snapshot()).expect("encode"),
    );
    for line in classic
        .lines()
        .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
    {
        assert!(
            readme.lines().any(|r| r == line),
            "README.md does not list:\n{line}"
        );
    }
}
