//! Side-by-side comparison of variants (no probe, probe with some flags, ...) on one workload:
//! alternating rounds whose order rotates, so drift on a noisy machine spreads over every
//! variant; medians; ratios against the first variant, also paired round by round (each
//! variant against the baseline run of the same round) with a confidence interval; the
//! daemon's own CPU.

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
    /// Per metric: the median of the round-by-round ratios to the first variant, and a 90%
    /// confidence interval of that median (distribution-free: order statistics); None for the
    /// first variant.
    pub paired: Vec<Option<Paired>>,
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
    let paired: Vec<Vec<Option<Paired>>> = (0..n)
        .map(|i| {
            (0..metrics.len())
                .map(|j| {
                    let ratios: Vec<f64> = values[i][j]
                        .iter()
                        .zip(&values[0][j])
                        .map(|(x, b)| x / b)
                        .filter(|r| r.is_finite())
                        .collect();
                    (i > 0).then(|| Paired::of(ratios)).flatten()
                })
                .collect()
        })
        .collect();
    Ok(variants
        .iter()
        .zip(values)
        .zip(cpu)
        .zip(costs)
        .zip(paired)
        .map(|((((v, mut vals), mut cpu), costs), paired)| Outcome {
            name: v.name.clone(),
            medians: vals.iter_mut().map(|x| median(x)).collect(),
            paired,
            daemon_cpu_pct: (!cpu.is_empty()).then(|| median(&mut cpu)),
            costs,
        })
        .collect())
}

/// The median of per-round ratios and its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Paired {
    /// The median of `ratios` and the widest pair of order statistics around it that still
    /// covers the true median with at least 90% probability (the sign test's interval: the
    /// number of ratios below the median is Binomial(n, 1/2)). None with fewer than 5 ratios,
    /// where no such interval exists.
    pub fn of(mut ratios: Vec<f64>) -> Option<Self> {
        let n = ratios.len();
        if n < 5 {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        // P(X <= k) for X ~ Binomial(n, 1/2).
        let cdf = |k: usize| -> f64 {
            let mut c = 1.0f64; // C(n, i)
            let mut sum = 0.0;
            for i in 0..=k {
                if i > 0 {
                    c = c * (n + 1 - i) as f64 / i as f64;
                }
                sum += c;
            }
            sum / 2f64.powi(n as i32)
        };
        // The interval [x_(l), x_(n+1-l)] (1-based) covers with 1 - 2 P(X <= l-1); the largest l
        // that keeps 90%.
        let mut l = 1;
        while l < n / 2 && 1.0 - 2.0 * cdf(l) >= 0.90 {
            l += 1;
        }
        Some(Self {
            median: median(&mut ratios.clone()),
            low: ratios[l - 1],
            high: ratios[n - l],
        })
    }
}

/// Prints the medians with their ratio to the first variant's, the paired ratios, and the
/// daemon's CPU.
pub fn print_table(metrics: &[Metric], outcomes: &[Outcome]) {
    let mut head = format!("  {:<40}", "median");
    for m in metrics {
        head.push_str(&format!(
            " {:>14} {:>7} {:>22}",
            m.name, "ratio", "paired [90% CI]"
        ));
    }
    head.push_str(&format!(" {:>10}", "probe CPU"));
    println!("{head}");
    let base = &outcomes[0].medians;
    for o in outcomes {
        let mut row = format!("  {:<40}", o.name);
        for (j, x) in o.medians.iter().enumerate() {
            row.push_str(&format!(" {x:>14.3} {:>6.3}x", x / base[j]));
            match o.paired.get(j).copied().flatten() {
                Some(p) => row.push_str(&format!(
                    " {:>6.3}x [{:.3}, {:.3}]",
                    p.median, p.low, p.high
                )),
                None => row.push_str(&format!(" {:>22}", "-")),
            }
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
        "  ({}; paired: the median of each round's ratio to the same round's run without \
         probe, and a confidence interval of that median covering it with at least 90%; probe \
         CPU: the daemon, % of one CPU)",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_give_the_median_and_the_sign_test_interval() {
        // 20 ratios 0.90, 0.91, ..., 1.09: the sign test's 90% interval for n = 20 is the 6th
        // to the 15th smallest (coverage 1 - 2 P(Bin(20, 1/2) <= 5) = 0.959; the 7th to 14th
        // would cover only 0.885).
        let ratios: Vec<f64> = (0..20).map(|i| 0.90 + f64::from(i) / 100.0).collect();
        let p = Paired::of(ratios).expect("enough rounds");
        // The upper of the two middle ones, as every median of the benchmark.
        assert!((p.median - 1.00).abs() < 1e-9, "{p:?}");
        assert!(
            (p.low - 0.95).abs() < 1e-9 && (p.high - 1.04).abs() < 1e-9,
            "{p:?}"
        );
        // 11 rounds: the 3rd to 9th (0.935; the 4th to 8th: 0.773); 5 rounds: the extremes
        // (0.938).
        let p = Paired::of((0..11).map(f64::from).collect()).expect("11");
        assert_eq!((p.low, p.median, p.high), (2.0, 5.0, 8.0));
        let p = Paired::of((0..5).map(f64::from).collect()).expect("5");
        assert_eq!((p.low, p.high), (0.0, 4.0));
        assert_eq!(Paired::of(vec![1.0; 4]), None);
    }
}
