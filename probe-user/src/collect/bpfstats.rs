//! What the kernel counts about each of probe's programs: the runs it skipped (always), and how
//! many times it ran and the time it spent (only while BPF statistics are on, BPF_ENABLE_STATS).

use std::os::fd::AsFd as _;

use aya::Ebpf;

#[derive(Clone, Debug, PartialEq)]
pub struct ProgramStats {
    pub program: &'static str,
    /// Runs the kernel skipped because the program was already running on that CPU (an
    /// interrupt arrived while it ran and fired the same hook): the events of those runs are
    /// not counted anywhere else. `None` where the kernel does not say (before 5.12).
    pub missed: Option<u64>,
    /// Runs and nanoseconds, with `--bpf.stats` only.
    pub cost: Option<Cost>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub runs: u64,
    pub run_ns: u64,
}

pub fn read(ebpf: &Ebpf, programs: &[&'static str], with_cost: bool) -> Vec<ProgramStats> {
    programs
        .iter()
        .filter_map(|&name| {
            let program = ebpf.program(name)?;
            let missed = program
                .fd()
                .ok()
                .and_then(|fd| crate::sys::prog_recursion_misses(fd.as_fd()).ok());
            let cost = with_cost
                .then(|| program.info().ok())
                .flatten()
                .map(|info| Cost {
                    runs: info.run_count(),
                    run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                });
            Some(ProgramStats {
                program: name,
                missed,
                cost,
            })
        })
        .collect()
}
