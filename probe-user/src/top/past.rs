//! `probe top` over history: the frames of a window turned into the two samples
//! [`super::view::compute`] takes, so that rates, ranking and the noisy/suffering marks are the
//! ones a live `probe top` would have shown over that window. Pure, unit-tested.
//!
//! Counters are summed frame to frame as Prometheus' rate() does: one that went down (a
//! daemon restarted without its saved accounts, an instance expired and came back) counts
//! from zero. A process that enters a top-K list inside the window counts from its first
//! frame there (before it, it was below the list and its use is not in the frames).

use crate::{
    api::{InstanceSample, ProcessSample, Sample},
    history::Frame,
};

/// The window's first sample and the same sample advanced by every increase in the window.
pub fn window_samples(frames: &[Frame]) -> Option<(Sample, Sample)> {
    let samples: Vec<Sample> = frames
        .iter()
        .map(|f| Sample::from_snapshot(&f.snapshot, f.t_ms as f64 / 1e3))
        .collect();
    let (first, rest) = samples.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let mut base = first.clone();
    let mut acc = first.clone();
    let mut prev = first;
    for cur in rest {
        advance(&mut base, &mut acc, prev, cur);
        prev = cur;
    }
    acc.taken_at_seconds = prev.taken_at_seconds;
    Some((base, acc))
}

/// What went up from `before` to `now`; all of `now` if it went down (a reset).
fn inc(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

fn advance(base: &mut Sample, acc: &mut Sample, prev: &Sample, cur: &Sample) {
    let empty = InstanceSample::default();
    for c in &cur.instances {
        let p = prev
            .instances
            .iter()
            .find(|p| p.name == c.name)
            .unwrap_or(&empty);
        let a = match acc.instances.iter_mut().position(|a| a.name == c.name) {
            Some(i) => &mut acc.instances[i],
            None => {
                acc.instances.push(InstanceSample {
                    name: c.name.clone(),
                    ..InstanceSample::default()
                });
                acc.instances.last_mut().expect("pushed")
            }
        };
        a.rule.clone_from(&c.rule);
        a.container.clone_from(&c.container);
        a.pod_uid.clone_from(&c.pod_uid);
        a.processes = c.processes;
        a.cpu_ns += inc(c.cpu_ns, p.cpu_ns);
        a.runqueue_wait_ns += inc(c.runqueue_wait_ns, p.runqueue_wait_ns);
        a.disk_read_bytes += inc(c.disk_read_bytes, p.disk_read_bytes);
        a.disk_write_bytes += inc(c.disk_write_bytes, p.disk_write_bytes);
        a.runqueue.add(
            &c.runqueue
                .since(&p.runqueue)
                .unwrap_or_else(|| c.runqueue.clone()),
        );
        a.disk_latency.add(
            &c.disk_latency
                .since(&p.disk_latency)
                .unwrap_or_else(|| c.disk_latency.clone()),
        );
        for port in &c.tcp {
            let before = p.tcp.iter().find(|q| q.port == port.port);
            let (rx, tx) = (
                inc(port.rx_bytes, before.map_or(0, |b| b.rx_bytes)),
                inc(port.tx_bytes, before.map_or(0, |b| b.tx_bytes)),
            );
            match a.tcp.iter_mut().find(|q| q.port == port.port) {
                Some(q) => {
                    q.rx_bytes += rx;
                    q.tx_bytes += tx;
                }
                None => a.tcp.push(crate::api::PortSample {
                    port: port.port.clone(),
                    rx_bytes: rx,
                    tx_bytes: tx,
                }),
            }
        }
    }

    let none = ProcessSample::default();
    for c in &cur.processes {
        let p = prev
            .processes
            .iter()
            .find(|p| p.pid == c.pid && p.comm == c.comm)
            .unwrap_or(&none);
        let same = |q: &&mut ProcessSample| q.pid == c.pid && q.comm == c.comm;
        let fresh = || ProcessSample {
            pid: c.pid,
            comm: c.comm.clone(),
            instance: c.instance.clone(),
            ..ProcessSample::default()
        };
        if !acc.processes.iter_mut().any(|q| same(&q)) {
            acc.processes.push(fresh());
        }
        if !base.processes.iter_mut().any(|q| same(&q)) {
            base.processes.push(fresh());
        }
        let a = acc.processes.iter_mut().find(same).expect("added above");
        let b = base.processes.iter_mut().find(same).expect("added above");
        a.instance.clone_from(&c.instance);
        let fields: [fn(&mut ProcessSample) -> &mut Option<u64>; 6] = [
            |s| &mut s.cpu_ns,
            |s| &mut s.runqueue_wait_ns,
            |s| &mut s.disk_read_bytes,
            |s| &mut s.disk_write_bytes,
            |s| &mut s.tcp_rx_bytes,
            |s| &mut s.tcp_tx_bytes,
        ];
        let (mut cc, mut pp) = (c.clone(), p.clone());
        for field in fields {
            let Some(now) = *field(&mut cc) else { continue };
            match (*field(a), *field(&mut pp)) {
                // Known at both frames: what went up.
                (Some(sum), Some(before)) => *field(a) = Some(sum + inc(now, before)),
                // First seen in this list: counted from here.
                (None, _) => {
                    *field(a) = Some(now);
                    *field(b) = Some(now);
                }
                // Left the list and came back: counted from here again.
                (Some(_), None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        daemon::Snapshot,
        model::accounts::{InstanceTotals, ProcessRow},
        top::view::compute,
    };

    fn frame(t_s: i64, started: i64, cpu: &[(&str, u64)], procs: &[(u32, u64)]) -> Frame {
        Frame {
            t_ms: t_s * 1_000,
            daemon_started_ms: started,
            restored: false,
            snapshot: Snapshot {
                instances: cpu
                    .iter()
                    .map(|(n, ns)| {
                        (
                            Arc::from(*n),
                            InstanceTotals {
                                cpu_ns: *ns,
                                ..InstanceTotals::default()
                            },
                        )
                    })
                    .collect(),
                top: procs
                    .iter()
                    .map(|(pid, ns)| ProcessRow {
                        pid: *pid,
                        comm: "mariadbd".into(),
                        instance: Arc::from("mariadbd:3306"),
                        cpu_ns: *ns,
                        run_delay_ns: 0,
                        score: 0.0,
                    })
                    .collect(),
                ..Snapshot::default()
            },
            collectors: Vec::new(),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_window_gives_the_rate_over_it_across_a_restart() {
        // One CPU-second per second on 3306; the daemon restarts (without its accounts) after
        // 20 s, so its counter starts again from the 5 s it saw since.
        let frames = [
            frame(0, 1, &[("mariadbd:3306", 100 * S)], &[]),
            frame(10, 1, &[("mariadbd:3306", 110 * S)], &[]),
            frame(20, 1, &[("mariadbd:3306", 120 * S)], &[]),
            frame(30, 2, &[("mariadbd:3306", 5 * S)], &[]),
            frame(40, 2, &[("mariadbd:3306", 15 * S)], &[]),
        ];
        let (a, b) = window_samples(&frames).expect("two frames");
        let v = compute(&a, &b);
        assert_eq!(v.interval_seconds, 40.0);
        // 10 + 10 + 5 + 10 = 35 s of CPU in 40 s (the 5 s before the restart's first frame
        // are counted, the daemon's own gap is not invented).
        assert!((v.instances[0].cpu_percent - 87.5).abs() < 1e-9, "{v:?}");
    }

    #[test]
    fn an_instance_or_process_appearing_inside_the_window_counts_from_there() {
        let frames = [
            frame(0, 1, &[("a", 0)], &[]),
            frame(10, 1, &[("a", 5 * S), ("b", 2 * S)], &[(7, 40 * S)]),
            frame(20, 1, &[("a", 10 * S), ("b", 12 * S)], &[(7, 50 * S)]),
        ];
        let (a, b) = window_samples(&frames).expect("two frames");
        let v = compute(&a, &b);
        let cpu = |n: &str| {
            v.instances
                .iter()
                .find(|i| i.name == n)
                .map(|i| i.cpu_percent)
                .expect("instance")
        };
        // A new instance's counter is all its life, which began in the window.
        assert!((cpu("b") - 60.0).abs() < 1e-9);
        assert!((cpu("a") - 50.0).abs() < 1e-9);
        assert_eq!(v.instances[0].name, "b", "ranked first");
        // The process is counted from its first frame (10 s of CPU in the 20 s window), not
        // with the 40 s of its life before.
        let p = v.processes.iter().find(|p| p.pid == 7).expect("process");
        assert_eq!(p.cpu_percent, Some(50.0));
    }

    #[test]
    fn one_frame_is_not_a_window() {
        assert!(window_samples(&[frame(0, 1, &[("a", 0)], &[])]).is_none());
        assert!(window_samples(&[]).is_none());
    }
}
