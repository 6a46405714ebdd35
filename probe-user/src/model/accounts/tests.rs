//! Tests of the accounts. Over 500 lines: one scenario per test, each building its own
//! readings.

use super::*;
use crate::model::{io::Op, process::Identity};

const A: ProcessKey = ProcessKey {
    tgid: 10,
    start_ns: 1,
};
const B: ProcessKey = ProcessKey {
    tgid: 20,
    start_ns: 2,
};

fn live(cpu: u64, delay: u64) -> ProcessSample {
    ProcessSample {
        cpu_ns: cpu,
        run_delay_ns: delay,
        rss_pages: 2,
        threads: 1,
        identity: Identity::default(),
    }
}

fn dead(cpu: u64, delay: u64) -> DeadSample {
    DeadSample {
        cpu_ns: cpu,
        run_delay_ns: delay,
        threads: 1,
        identity: Identity::default(),
    }
}

struct Harness {
    acc: Accounts,
    names: HashMap<ProcessKey, &'static str>,
    now: f64,
}

impl Harness {
    fn new() -> Self {
        Self {
            acc: Accounts::new(30.0),
            names: HashMap::from([(A, "a:1"), (B, "b:2")]),
            now: 0.0,
        }
    }
    fn round(
        &mut self,
        l: &[(ProcessKey, ProcessSample)],
        d: &[(ProcessKey, DeadSample)],
    ) -> Vec<ProcessKey> {
        self.round_io(l, d, &[])
    }
    fn round_io(
        &mut self,
        l: &[(ProcessKey, ProcessSample)],
        d: &[(ProcessKey, DeadSample)],
        io: &[(ProcessKey, Op, u64)],
    ) -> Vec<ProcessKey> {
        self.round_all(l, d, io, None)
    }
    /// A round with TCP rx bytes per process on server port 3306.
    fn round_tcp(
        &mut self,
        l: &[(ProcessKey, ProcessSample)],
        tcp: &[(ProcessKey, u64)],
    ) -> Vec<ProcessKey> {
        let map: HashMap<ProcessKey, ProcessTcp> = tcp
            .iter()
            .map(|(k, rx)| (*k, HashMap::from([(SERVER_3306, rx_bytes(*rx))])))
            .collect();
        self.round_all(l, &[], &[], Some(&map))
    }
    fn round_all(
        &mut self,
        l: &[(ProcessKey, ProcessSample)],
        d: &[(ProcessKey, DeadSample)],
        io: &[(ProcessKey, Op, u64)],
        tcp: Option<&HashMap<ProcessKey, ProcessTcp>>,
    ) -> Vec<ProcessKey> {
        let live: HashMap<_, _> = l.iter().cloned().collect();
        let dead: HashMap<_, _> = d.iter().cloned().collect();
        let mut io_map: HashMap<ProcessKey, ProcessIo> = HashMap::new();
        for (k, op, bytes) in io {
            let c = IoCounters {
                bytes: *bytes,
                latency: Latency {
                    count: bytes / 4096,
                    ..Latency::default()
                },
            };
            io_map
                .entry(*k)
                .or_default()
                .insert((Arc::from("vda"), *op), c);
        }
        let names = self.names.clone();
        // As the daemon: who a process is, is known only while it is live or in the dead map.
        let mut resolve = |k: &ProcessKey| {
            let known = live.contains_key(k) || dead.contains_key(k);
            let name = names.get(k).copied().filter(|_| known);
            name.unwrap_or("other").to_string()
        };
        self.acc.apply(
            &Round {
                live: &live,
                dead: &dead,
                io: Some(&io_map),
                tcp,
                runq: None,
                elapsed_secs: 1.0,
                now_secs: self.now,
                page_size: 4096,
            },
            &mut resolve,
        )
    }
    fn cpu(&self, inst: &str) -> u64 {
        self.acc.instances().get(inst).map_or(0, |t| t.cpu_ns)
    }
    fn inst(&self, inst: &str) -> &InstanceTotals {
        &self.acc.instances()[inst]
    }
    fn io(&self, inst: &str, op: Op) -> u64 {
        self.acc
            .io()
            .get(&(Arc::from(inst), (Arc::from("vda"), op)))
            .map_or(0, |c| c.bytes)
    }
}

fn limits(top_k: usize, max_instances: usize, expire_after_secs: f64) -> Limits {
    Limits {
        top_k,
        max_instances,
        expire_after_secs,
    }
}

const SERVER_3306: TcpDim = TcpDim {
    role: Role::Server,
    port: 3306,
};

fn rx_bytes(n: u64) -> TcpCounters {
    TcpCounters {
        rx_bytes: n,
        ..TcpCounters::default()
    }
}

fn tcp_rx(h: &Harness, inst: &str) -> u64 {
    h.acc
        .tcp()
        .get(&(Arc::from(inst), SERVER_3306))
        .map_or(0, |c| c.rx_bytes)
}

#[test]
fn tcp_bytes_flow_to_the_process_instance_and_rank_processes() {
    let mut h = Harness::new();
    h.round_tcp(&[(A, live(1, 0)), (B, live(1, 0))], &[(A, 100), (B, 0)]);
    h.round_tcp(&[(A, live(1, 0)), (B, live(1, 0))], &[(A, 150), (B, 5000)]);
    assert_eq!((tcp_rx(&h, "a:1"), tcp_rx(&h, "b:2")), (150, 5000));
    let top = h.acc.top_tcp_processes(1);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].pid, B.tgid, "ranked by recent bytes");
    // A exits; its entry stays readable until the daemon deletes it; late bytes still count.
    h.round_tcp(&[(B, live(1, 0))], &[(A, 170), (B, 5000)]);
    assert_eq!(tcp_rx(&h, "a:1"), 170);
    assert!(h.acc.top_tcp_processes(5).iter().all(|r| r.pid != A.tgid));
}

#[test]
fn per_port_totals_go_to_the_ports_listener_or_other() {
    let mut acc = Accounts::new(30.0);
    let conns = |accepted| TcpCounters {
        accepted,
        ..TcpCounters::default()
    };
    let client = TcpDim {
        role: Role::Client,
        port: 0,
    };
    let owners = HashMap::from([(3306, Arc::<str>::from("mariadbd:3306"))]);
    let traffic = HashMap::from([(SERVER_3306, conns(4)), (client, rx_bytes(9))]);
    let est = HashMap::from([(3306, 2), (40000, 1)]);
    acc.apply_ports(&PortRound {
        traffic: Some(&traffic),
        rtt: None,
        established: Some(&est),
        owners: &owners,
        listening: &HashSet::new(),
    });
    let traffic = HashMap::from([(SERVER_3306, conns(10)), (client, rx_bytes(9))]);
    // The listener went away: its port's increase goes to `other`.
    acc.apply_ports(&PortRound {
        traffic: Some(&traffic),
        rtt: None,
        established: None,
        owners: &HashMap::new(),
        listening: &HashSet::new(),
    });
    let get = |i: &str, d: TcpDim| acc.tcp().get(&(Arc::from(i), d)).cloned();
    assert_eq!(get("mariadbd:3306", SERVER_3306), Some(conns(4)));
    assert_eq!(get(OTHER, SERVER_3306), Some(conns(6)));
    assert_eq!(get(OTHER, client), Some(rx_bytes(9)));
    // Established: listening ports only, the last reading kept when one fails.
    assert_eq!(
        acc.established().iter().collect::<Vec<_>>(),
        vec![(&(Arc::from("mariadbd:3306"), 3306), &2)]
    );
}

#[test]
fn others_series_of_a_port_nobody_listens_on_expire_once_idle() {
    let mut acc = Accounts::new(30.0);
    acc.set_limits(limits(5, 10, 30.0));
    let conns = |closed| TcpCounters {
        closed,
        ..TcpCounters::default()
    };
    let server = |port| TcpDim {
        role: Role::Server,
        port,
    };
    let client = TcpDim {
        role: Role::Client,
        port: 0,
    };
    let nobody = HashMap::new();
    let round = |acc: &mut Accounts, now: f64, closed_4000: u64, closed_5000: u64| {
        let traffic = HashMap::from([
            (server(4000), conns(closed_4000)),
            (server(5000), conns(closed_5000)),
            (client, rx_bytes(now as u64)),
        ]);
        let rtt = HashMap::from([(
            4000,
            Latency {
                count: closed_4000,
                ..Latency::default()
            },
        )]);
        acc.apply_ports(&PortRound {
            traffic: Some(&traffic),
            rtt: Some(&rtt),
            established: None,
            owners: &nobody,
            listening: &HashSet::new(),
        });
        acc.end_round(now);
    };
    let has = |acc: &Accounts, d: TcpDim| acc.tcp().contains_key(&(Arc::from(OTHER), d));
    // Late closes on ports 4000 and 5000; 5000 keeps getting them, 4000 stops at 10 s.
    round(&mut acc, 0.0, 3, 1);
    round(&mut acc, 10.0, 5, 2);
    for (now, closed_5000) in [(20.0, 3), (30.0, 4)] {
        round(&mut acc, now, 5, closed_5000);
    }
    assert!(has(&acc, server(4000)), "idle for 20 s of 30: stays");
    round(&mut acc, 40.0, 5, 5);
    assert!(!has(&acc, server(4000)), "idle for 30 s: expired");
    assert!(
        !acc.rtt().contains_key(&(Arc::from(OTHER), 4000)),
        "its RTT series too"
    );
    assert!(has(&acc, server(5000)), "still moving: stays");
    assert!(
        has(&acc, client),
        "client series are not per listening port: kept"
    );
    // Traffic comes back to 4000: counted from zero, as a reset.
    round(&mut acc, 50.0, 9, 6);
    assert_eq!(acc.tcp()[&(Arc::from(OTHER), server(4000))], conns(4));
}

#[test]
fn a_child_that_sends_before_it_is_seen_is_charged_to_its_instance_not_other() {
    let mut h = Harness::new();
    let tcp = |rx| {
        Some(HashMap::from([(
            A,
            HashMap::from([(SERVER_3306, rx_bytes(rx))]),
        )]))
    };
    h.round_all(&[], &[], &[], None);
    // Neither live at the task read nor in the dead-thread map (it exited between the two
    // reads): nothing says whose it is yet.
    h.round_all(&[], &[], &[], tcp(100).as_ref());
    assert_eq!(tcp_rx(&h, "other"), 0, "not charged to other");
    // It died before the next collection: the dead-thread map names it.
    h.round_all(&[], &[(A, dead(7, 0))], &[], tcp(150).as_ref());
    assert_eq!((tcp_rx(&h, "a:1"), h.cpu("a:1")), (150, 7));
    assert_eq!(h.cpu(OTHER), 0);
    // One the next collection cannot name either goes to `other`, a round late...
    let tcp_b = |rx| {
        Some(HashMap::from([(
            B,
            HashMap::from([(SERVER_3306, rx_bytes(rx))]),
        )]))
    };
    h.round_all(&[], &[], &[], tcp_b(5).as_ref());
    assert_eq!(tcp_rx(&h, "other"), 0);
    h.round_all(&[], &[], &[], tcp_b(9).as_ref());
    assert_eq!(tcp_rx(&h, "other"), 9, "counted in full");
    // ... and if its dead-thread sample comes after all, it is named from then on.
    h.round_all(&[], &[(B, dead(3, 0))], &[], tcp_b(12).as_ref());
    assert_eq!((h.cpu("b:2"), h.cpu(OTHER)), (3, 0));
    assert_eq!((tcp_rx(&h, "b:2"), tcp_rx(&h, "other")), (3, 9));
}

#[test]
fn on_the_first_round_every_entry_is_charged_at_once() {
    let mut h = Harness::new();
    let tcp = HashMap::from([(A, HashMap::from([(SERVER_3306, rx_bytes(100))]))]);
    h.round_all(&[], &[], &[], Some(&tcp));
    assert_eq!(
        tcp_rx(&h, "other"),
        100,
        "the baseline of a daemon that starts afresh: not a burst a round later"
    );
}

#[test]
fn a_port_other_listens_on_or_has_a_live_process_on_never_expires() {
    let mut acc = Accounts::new(30.0);
    acc.set_limits(limits(5, 10, 30.0));
    let closed = |closed| TcpCounters {
        closed,
        ..TcpCounters::default()
    };
    let owned = HashMap::from([(3306, Arc::<str>::from(OTHER))]);
    let traffic = HashMap::from([(SERVER_3306, closed(5))]);
    let nobody = HashMap::new();
    let heard = HashSet::from([3306]);
    let unheard = HashSet::new();
    let round = |acc: &mut Accounts,
                 owners: &HashMap<u16, Arc<str>>,
                 listening: &HashSet<u16>,
                 now: f64| {
        acc.apply_ports(&PortRound {
            traffic: Some(&traffic),
            rtt: None,
            established: None,
            owners,
            listening,
        });
        acc.end_round(now);
    };
    for now in [0.0, 40.0, 80.0] {
        round(&mut acc, &owned, &heard, now);
    }
    let key = (Arc::<str>::from(OTHER), SERVER_3306);
    assert!(
        acc.tcp().contains_key(&key),
        "listened on (by `other`): stays"
    );
    round(&mut acc, &nobody, &heard, 120.0);
    assert!(
        acc.tcp().contains_key(&key),
        "listened on by a socket without a known owner: stays"
    );
    round(&mut acc, &nobody, &unheard, 160.0);
    assert!(
        !acc.tcp().contains_key(&key),
        "nobody listens, idle: expired"
    );

    // A live process of `other` with bytes on the port keeps it.
    let mut h = Harness::new();
    h.acc.set_limits(limits(5, 10, 30.0));
    h.names.clear();
    for (t, rx) in [(0.0, 10), (10.0, 20), (20.0, 20), (40.0, 20), (80.0, 20)] {
        h.now = t;
        h.round_tcp(&[(A, live(1, 0))], &[(A, rx)]);
        h.acc.apply_ports(&PortRound {
            traffic: None,
            rtt: None,
            established: None,
            owners: &HashMap::new(),
            listening: &HashSet::new(),
        });
        h.acc.end_round(t);
    }
    assert_eq!(
        tcp_rx(&h, OTHER),
        20,
        "its process row would not add up without it"
    );
    // A exits; its entry stays as it was: the port expires with its unlisted-process rows.
    let key = (Arc::<str>::from(OTHER), SERVER_3306);
    assert!(
        h.acc.other_tcp().contains_key(&key),
        "A is not listed (no name)"
    );
    for t in [90.0, 100.0, 130.0] {
        h.now = t;
        h.round_tcp(&[], &[(A, 20)]);
        h.acc.apply_ports(&PortRound {
            traffic: None,
            rtt: None,
            established: None,
            owners: &HashMap::new(),
            listening: &HashSet::new(),
        });
        h.acc.end_round(t);
    }
    assert!(!h.acc.tcp().contains_key(&key), "expired once A is gone");
    assert!(
        !h.acc.other_tcp().contains_key(&key),
        "and its `other` rows"
    );
}

#[test]
fn io_increases_flow_into_the_current_instance() {
    let mut h = Harness::new();
    h.round_io(&[(A, live(1, 0))], &[], &[(A, Op::Write, 4096)]);
    h.round_io(
        &[(A, live(1, 0))],
        &[],
        &[(A, Op::Write, 12288), (A, Op::Read, 8192)],
    );
    assert_eq!(
        (h.io("a:1", Op::Write), h.io("a:1", Op::Read)),
        (12288, 8192)
    );
    h.names.insert(A, "a:2");
    h.round_io(
        &[(A, live(1, 0))],
        &[],
        &[(A, Op::Write, 16384), (A, Op::Read, 8192)],
    );
    assert_eq!(
        (h.io("a:1", Op::Write), h.io("a:2", Op::Write)),
        (12288, 4096)
    );
    let top = h.acc.top_io_processes(5);
    assert_eq!(top.len(), 1);
    let written: u64 = top[0]
        .counters
        .iter()
        .filter(|((_, op), _)| *op == Op::Write)
        .map(|(_, c)| c.bytes)
        .sum();
    assert_eq!(
        written, 16384,
        "per-process IO is the process's whole total"
    );
}

#[test]
fn writeback_after_exit_still_reaches_the_writers_instance() {
    let mut h = Harness::new();
    h.round_io(&[(A, live(1, 0))], &[], &[(A, Op::Dirtied, 1 << 20)]);
    // A exits; its dirty pages are written back over the next rounds and charged to it.
    h.round_io(
        &[],
        &[(A, dead(1, 0))],
        &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 4096)],
    );
    h.round_io(
        &[],
        &[],
        &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 1 << 20)],
    );
    h.round_io(
        &[],
        &[],
        &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 1 << 20)],
    );
    assert_eq!(h.io("a:1", Op::Write), 1 << 20);
    assert_eq!(h.io("other", Op::Write), 0);
    assert!(
        h.acc.top_io_processes(5).is_empty(),
        "exited processes are not listed"
    );
    // Once the daemon deleted its entries, the process is forgotten.
    h.round_io(&[], &[], &[]);
    h.round_io(&[], &[], &[]);
    assert_eq!(h.io("a:1", Op::Write), 1 << 20);
}

#[test]
fn a_deleted_and_recreated_entry_is_counted_in_full() {
    let mut h = Harness::new();
    h.round_io(&[], &[(B, dead(1, 0))], &[(B, Op::Write, 8192)]);
    h.round_io(&[], &[], &[]);
    // The entry was deleted; the kernel charges B again (late writeback) from zero. B is
    // forgotten by then: its entry waits a round for an identity, then counts in full.
    h.round_io(&[], &[], &[(B, Op::Write, 4096)]);
    assert_eq!(h.io("b:2", Op::Write) + h.io("other", Op::Write), 8192);
    h.round_io(&[], &[], &[(B, Op::Write, 4096)]);
    assert_eq!(h.io("b:2", Op::Write) + h.io("other", Op::Write), 12288);
}

#[test]
fn live_process_totals_flow_into_its_instance() {
    let mut h = Harness::new();
    h.round(&[(A, live(100, 5))], &[]);
    h.round(&[(A, live(250, 9))], &[]);
    assert_eq!(h.cpu("a:1"), 250);
    assert_eq!(h.inst("a:1").run_delay_ns, 9);
    assert_eq!(h.inst("a:1").rss_bytes, 8192);
}

#[test]
fn exited_threads_count_through_the_dead_map() {
    let mut h = Harness::new();
    h.round(&[(A, live(300, 0))], &[]);
    // Two of three threads exited with 100 each; the survivor is at 150 now.
    h.round(&[(A, live(150, 0))], &[(A, dead(200, 0))]);
    assert_eq!(h.cpu("a:1"), 350);
}

#[test]
fn a_thread_caught_between_the_two_reads_never_makes_the_counter_go_down() {
    let mut h = Harness::new();
    h.round(&[(A, live(300, 0))], &[]);
    // The thread with 100 died after the dead map was read: in neither.
    h.round(&[(A, live(210, 0))], &[]);
    assert_eq!(h.cpu("a:1"), 300);
    // Next time it is in the dead map with its final 105.
    h.round(&[(A, live(220, 0))], &[(A, dead(105, 0))]);
    assert_eq!(h.cpu("a:1"), 325);
}

#[test]
fn a_process_that_exits_is_folded_in_and_forgotten_a_round_later() {
    let mut h = Harness::new();
    h.round(&[(A, live(100, 0))], &[]);
    assert!(h.round(&[], &[(A, dead(120, 0))]).is_empty());
    assert_eq!(h.cpu("a:1"), 120);
    // A late final switch (another thread) still lands in the next round.
    let forget = h.round(&[], &[(A, dead(130, 0))]);
    assert_eq!(forget, vec![A]);
    assert_eq!(h.cpu("a:1"), 130);
    assert!(h.acc.top_processes(10).is_empty());
    assert_eq!(h.round(&[], &[]), vec![]);
    assert_eq!(h.cpu("a:1"), 130);
}

#[test]
fn a_process_seen_only_dead_is_charged_by_its_identity() {
    let mut h = Harness::new();
    h.round(&[], &[(B, dead(5_000_000, 7))]);
    assert_eq!(h.cpu("b:2"), 5_000_000);
    assert_eq!(h.inst("b:2").run_delay_ns, 7);
}

#[test]
fn moving_to_another_instance_keeps_both_counters_monotonic() {
    let mut h = Harness::new();
    h.round(&[(A, live(100, 0))], &[]);
    h.names.insert(A, "a:2");
    h.round(&[(A, live(180, 0))], &[]);
    assert_eq!((h.cpu("a:1"), h.cpu("a:2")), (100, 80));
}

#[test]
fn top_k_ranks_recent_use_not_lifetime() {
    let mut h = Harness::new();
    // First round: A has a long past, B is new; nobody is ranked by history.
    h.round(&[(A, live(1_000_000_000_000, 0)), (B, live(0, 0))], &[]);
    h.round(
        &[(A, live(1_000_000_000_000, 0)), (B, live(2_000_000_000, 0))],
        &[],
    );
    let top = h.acc.top_processes(1);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].pid, B.tgid);
    assert_eq!(h.acc.top_processes(5).len(), 2);
}

#[test]
fn gauges_are_recomputed_each_round() {
    let mut h = Harness::new();
    h.round(&[(A, live(1, 0))], &[]);
    h.round(&[], &[]);
    assert_eq!(h.inst("a:1").rss_bytes, 0);
    assert_eq!(h.inst("a:1").processes, 0);
    assert_eq!(h.inst("a:1").cpu_ns, 1);
}

#[test]
fn instances_beyond_the_cap_are_folded_into_other_and_counted() {
    let mut h = Harness::new();
    h.acc.set_limits(limits(5, 1, 600.0));
    h.round(&[(A, live(100, 0)), (B, live(50, 0))], &[]);
    h.acc.end_round(h.now);
    let names: Vec<&str> = h.acc.instances().keys().map(|k| &**k).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&OTHER));
    assert_eq!(h.acc.folded_instances(), 1);
    assert_eq!(h.cpu("a:1") + h.cpu("b:2") + h.cpu(OTHER), 150);
}

#[test]
fn under_the_cap_the_lowest_process_is_admitted_whatever_the_map_order() {
    // Each harness hashes with new random keys: the order processes are met in must not
    // decide which instance keeps its name (a replay would differ from the live daemon).
    for _ in 0..32 {
        let mut h = Harness::new();
        h.acc.set_limits(limits(5, 1, 600.0));
        h.round(&[(B, live(50, 0)), (A, live(100, 0))], &[]);
        h.acc.end_round(h.now);
        assert_eq!(h.cpu("a:1"), 100, "A (pid 10) is admitted");
        assert_eq!(h.cpu(OTHER), 50);
    }
}

#[test]
fn idle_instances_without_processes_expire_and_busy_ones_stay() {
    let mut h = Harness::new();
    h.acc.set_limits(limits(5, 10, 60.0));
    h.round(&[(A, live(100, 0)), (B, live(50, 0))], &[]);
    h.acc.end_round(h.now);
    // B exits; A keeps running.
    h.now = 10.0;
    h.round(&[(A, live(150, 0))], &[(B, dead(60, 0))]);
    h.acc.end_round(h.now);
    for t in [20.0, 40.0, 60.0] {
        h.now = t;
        h.round(&[(A, live(150, 0))], &[]);
        h.acc.end_round(h.now);
    }
    assert!(
        h.acc.instances().contains_key("b:2"),
        "not idle long enough"
    );
    h.now = 80.0;
    h.round(&[(A, live(150, 0))], &[]);
    h.acc.end_round(h.now);
    assert!(!h.acc.instances().contains_key("b:2"), "expired");
    assert_eq!(h.cpu("a:1"), 150, "idle but alive: stays");
}

#[test]
fn processes_outside_the_top_k_add_up_in_other_rows() {
    let mut h = Harness::new();
    h.names.insert(B, "a:1");
    h.acc.set_limits(limits(1, 10, 600.0));
    h.round(&[(A, live(0, 0)), (B, live(0, 0))], &[]);
    h.acc.end_round(h.now);
    h.round(&[(A, live(1000, 0)), (B, live(10, 0))], &[]);
    h.acc.end_round(h.now);
    // A was listed (a tie, broken by pid): only B's increase is in `other`.
    assert_eq!(h.acc.other_cpu()["a:1"], (10, 0));
    assert_eq!(h.acc.tops().cpu.len(), 1);
    assert_eq!(h.acc.tops().cpu[0].pid, A.tgid);
    // B becomes the busiest: listed from the next round on; A's increase meanwhile is
    // still its own, B's goes to `other` one last time.
    h.round(&[(A, live(1010, 0)), (B, live(5000, 0))], &[]);
    h.acc.end_round(h.now);
    assert_eq!(h.acc.tops().cpu[0].pid, B.tgid);
    assert_eq!(h.acc.other_cpu()["a:1"], (5000, 0));
    h.round(&[(A, live(1500, 0)), (B, live(5100, 0))], &[]);
    h.acc.end_round(h.now);
    assert_eq!(h.acc.other_cpu()["a:1"], (5490, 0));
}

#[test]
fn a_reused_pid_is_not_taken_for_the_listed_process() {
    let mut h = Harness::new();
    h.acc.set_limits(limits(1, 10, 600.0));
    h.round(&[(A, live(0, 0))], &[]);
    h.round(&[(A, live(1000, 0))], &[]);
    h.acc.end_round(h.now);
    assert_eq!(h.acc.tops().cpu[0].pid, A.tgid);
    // A's 1000 went to `other` (not listed yet then). A exits and a new process gets its pid:
    // it is not listed, so its CPU is in `other` too.
    let reused = ProcessKey {
        tgid: A.tgid,
        start_ns: 99,
    };
    h.names.insert(reused, "a:1");
    h.round(&[(reused, live(300, 0))], &[]);
    assert_eq!(h.acc.other_cpu()["a:1"], (1000 + 300, 0));
}

#[test]
fn run_queue_waits_flow_into_the_instance() {
    let mut h = Harness::new();
    let waits = |n: u64| {
        let c = Latency {
            count: n,
            sum_ns: n * 1000,
            ..Latency::default()
        };
        HashMap::from([(A, HashMap::from([(7u32, c)]))])
    };
    let live_a = HashMap::from([(A, live(1, 0))]);
    let dead = HashMap::new();
    for n in [3, 10] {
        let runq = waits(n);
        let names = h.names.clone();
        let mut resolve = |k: &ProcessKey| names[k].to_string();
        h.acc.apply(
            &Round {
                live: &live_a,
                dead: &dead,
                io: None,
                tcp: None,
                runq: Some(&runq),
                elapsed_secs: 1.0,
                now_secs: 0.0,
                page_size: 4096,
            },
            &mut resolve,
        );
    }
    let got: Vec<(String, u64, u64)> = h
        .acc
        .runq()
        .iter()
        .map(|(k, c)| (k.to_string(), c.count, c.sum_ns))
        .collect();
    assert_eq!(got, vec![("a:1".to_string(), 10, 10_000)]);
}

#[test]
fn threads_without_waits_give_no_histogram() {
    let mut h = Harness::new();
    let runq = HashMap::from([(A, HashMap::from([(7u32, Latency::default())]))]);
    let live_a = HashMap::from([(A, live(1, 0))]);
    let names = h.names.clone();
    let mut resolve = |k: &ProcessKey| names[k].to_string();
    h.acc.apply(
        &Round {
            live: &live_a,
            dead: &HashMap::new(),
            io: None,
            tcp: None,
            runq: Some(&runq),
            elapsed_secs: 1.0,
            now_secs: 0.0,
            page_size: 4096,
        },
        &mut resolve,
    );
    assert!(h.acc.runq().is_empty(), "{:?}", h.acc.runq());
}
