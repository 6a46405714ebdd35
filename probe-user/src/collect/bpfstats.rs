//! Cost of each kernel program, from the kernel's own BPF statistics (BPF_ENABLE_STATS):
//! how many times it ran and the time it spent.

use aya::Ebpf;

#[derive(Clone, Debug, PartialEq)]
pub struct ProgramStats {
    pub program: &'static str,
    pub runs: u64,
    pub run_ns: u64,
}

pub fn read(ebpf: &Ebpf, programs: &[&'static str]) -> Vec<ProgramStats> {
    programs
        .iter()
        .filter_map(|&name| {
            let info = ebpf.program(name)?.info().ok()?;
            Some(ProgramStats {
                program: name,
                runs: info.run_count(),
                run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            })
        })
        .collect()
}
