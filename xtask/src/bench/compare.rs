//! Side-by-side comparison of variants (no probe, probe with some flags, ...) on one workload:
//! alternating rounds whose order rotates, so drift on a noisy machine spreads over every
//! variant; medians; ratios against the first variant; the daemon's own CPU.

use std::time::Instant;

use anyhow::Result;

use super::{cpu_ns, median, program_deltas, Server};

/// One way to run the workload: without probe (`args: None`) or with `probe serve ARGS`.
pub struct Variant {
    pub name: String,
    pub args: Option<Vec<&'static str>>,
}

impl Variant {
    pub fn without() -> Self {
        Self {
            name: "without probe".into(),
            args: None,
        }
    }

    pub fn probe(name: &str, args: &[&'static str]) -> Self {
        Self {
            name: name.into(),
            args: Some(args.to_vec()),
        }
    }
}

/// What the workload reports, e.g. ("TPS", higher is better).
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

/// The medians of one variant.
pub struct Outcome {
    pub name: String,
    pub medians: Vec<f64>,
    /// The daemon's CPU during the workload, in % of one CPU (median), if probe ran.
    pub daemon_cpu_pct: Option<f64>,
    /// The programs' (name, runs, ns) during the last round, if the variant has `--bpf.stats`.
    pub costs: Vec<(String, f64, f64)>,
}

/// Runs `rounds` rounds of every variant; `measure` gets the running probe (if any) and
/// returns one value per metric. Prints each round and returns the medians.
pub(super) fn compare(
    rounds: usize,
    variants: &[Variant],
    metrics: &[Metric],
    mut measure: impl FnMut(Option<&Server>) -> Result<Vec<f64>>,
) -> Result<Vec<Outcome>> {
    let n = variants.len();
    let mut values: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); metrics.len()]; n];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut costs: Vec<Vec<(String, f64, f64)>> = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let v = &variants[i];
            let got = match &v.args {
                None => measure(None)?,
                Some(args) => {
                    let probe = Server::probe_with(args)?;
                    let before = probe.scrape_text()?;
                    let (cpu0, t0) = (cpu_ns(probe.pid())?, Instant::now());
                    let got = measure(Some(&probe))?;
                    let used = (cpu_ns(probe.pid())? - cpu0) as f64 / 1e9;
                    cpu[i].push(used / t0.elapsed().as_secs_f64() * 100.0);
                    if args.contains(&"--bpf.stats") {
                        costs[i] = program_deltas(&before, &probe.scrape_text()?);
                    }
                    got
                }
            };
            let shown: Vec<String> = metrics
                .iter()
                .zip(&got)
                .map(|(m, x)| format!("{} {x:.3}", m.name))
                .collect();
            println!("  round {} {:<40} {}", round + 1, v.name, shown.join(", "));
            for (j, x) in got.into_iter().enumerate() {
                values[i][j].push(x);
            }
        }
    }
    Ok(variants
        .iter()
        .zip(values)
        .zip(cpu)
        .zip(costs)
        .map(|(((v, mut vals), mut cpu), costs)| Outcome {
            name: v.name.clone(),
            medians: vals.iter_mut().map(|x| median(x)).collect(),
            daemon_cpu_pct: (!cpu.is_empty()).then(|| median(&mut cpu)),
            costs,
        })
        .collect())
}

/// Prints the medians with their ratio to the first variant's, and the daemon's CPU.
pub fn print_table(metrics: &[Metric], outcomes: &[Outcome]) {
    let mut head = format!("  {:<40}", "median");
    for m in metrics {
        head.push_str(&format!(" {:>14} {:>7}", m.name, "ratio"));
    }
    head.push_str(&format!(" {:>10}", "probe CPU"));
    println!("{head}");
    let base = &outcomes[0].medians;
    for o in outcomes {
        let mut row = format!("  {:<40}", o.name);
        for (j, x) in o.medians.iter().enumerate() {
            row.push_str(&format!(" {x:>14.3} {:>6.3}x", x / base[j]));
        }
        match o.daemon_cpu_pct {
            Some(c) => row.push_str(&format!(" {c:>9.2}%")),
            None => row.push_str(&format!(" {:>10}", "-")),
        }
        println!("{row}");
    }
    let dirs: Vec<String> = metrics
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m.name,
                if m.higher_is_better {
                    "higher is better"
                } else {
                    "lower is better"
                }
            )
        })
        .collect();
    println!(
        "  ({}; probe CPU: the daemon, % of one CPU)",
        dirs.join(", ")
    );
}

/// Prints the programs' cost per event from an outcome measured with `--bpf.stats`.
pub fn print_costs(outcome: &Outcome, filter: impl Fn(&str) -> bool) {
    for (prog, runs, ns) in outcome
        .costs
        .iter()
        .filter(|(p, r, _)| filter(p) && *r > 0.0)
    {
        println!("  {prog:<28} {runs:>12.0} runs {:>10.1} ns/run", ns / runs);
    }
}
