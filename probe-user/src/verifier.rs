//! The kernel verifier's log, boiled down to the one line that says why a program was refused.
//!
//! A rejection log runs to thousands of lines: every instruction walked, with register states.
//! What a reader needs is at its end: the error, the instruction it refers to and the source
//! line that instruction came from (the object carries line info). `probe check` and the
//! collector's reasons show that line; the whole log goes to the debug log.

/// `<error>, at insn <n> \`<instruction>\` (\`<source>\`)`, or the last line of the log if it
/// has no recognisable error.
pub fn summary(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The stats the verifier prints after its verdict.
    let is_stats = |l: &str| {
        l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("processed ")
            || l.starts_with("max_states_per_insn")
    };
    let Some(err_at) = lines
        .iter()
        .rposition(|l| !is_stats(l) && instruction(l).is_none() && !l.starts_with(';'))
    else {
        return lines.last().map_or_else(String::new, |l| (*l).to_string());
    };
    let mut out = lines[err_at].to_string();
    if let Some((idx, insn)) = lines[..err_at].iter().rev().find_map(|l| instruction(l)) {
        out.push_str(&format!(", at insn {idx} `{insn}`"));
        let insn_at = lines[..err_at]
            .iter()
            .rposition(|l| instruction(l).is_some())
            .unwrap_or(0);
        if let Some(src) = lines[..insn_at]
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(';'))
        {
            out.push_str(&format!(" (`{}`)", shorten(src.trim(), 100)));
        }
    }
    out
}

/// `65: (db) lock *(u64 *)(r0 +16) += r1 ; R0=...` -> (65, "lock *(u64 *)(r0 +16) += r1").
fn instruction(line: &str) -> Option<(u32, &str)> {
    let (idx, rest) = line.split_once(": ")?;
    let idx = idx.parse().ok()?;
    let rest = rest.strip_prefix('(')?;
    let (_opcode, insn) = rest.split_once(") ")?;
    let insn = insn.split(" ; ").next().unwrap_or(insn).trim();
    Some((idx, insn))
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 3).collect();
    t.push_str("...");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of the log Linux 6.1.192 printed when it refused the RTT program (before the
    /// histogram bucket was written for it).
    const LOG_6_1: &str = "\
func#0 @0
0: R1=ctx(off=0,imm=0) R10=fp0
; unsafe { (*self.ops).op }
0: (61) r2 = *(u32 *)(r1 +0)          ; R1=ctx(off=0,imm=0) R2_w=scalar(umax=4294967295,var_off=(0x0; 0xffffffff))
; atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).sum_us, us);
62: (db) lock *(u64 *)(r0 +8) += r8   ; R0=map_value(off=0,ks=2,vs=224,imm=0) R8=scalar(id=2,umax=536870911,var_off=(0x0; 0x1fffffff))
; atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).buckets[b], 1);
63: (67) r7 <<= 3                     ; R7_w=scalar(umin=240,umax=192,var_off=(0xc0; 0x38))
64: (0f) r0 += r7                     ; R0_w=scalar() R7_w=scalar(umin=240,umax=192,var_off=(0xc0; 0x38))
; atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).buckets[b], 1);
65: (db) lock *(u64 *)(r0 +16) += r1
misaligned access off (0x0; 0xffffffffffffffff)+0+16 size 8
verification time 78806 usec
stack depth 256+0
processed 3803 insns (limit 1000000) max_states_per_insn 4 total_states 151 peak_states 126 mark_read 22
";

    #[test]
    fn points_at_the_error_the_instruction_and_the_source() {
        assert_eq!(
            summary(LOG_6_1),
            "misaligned access off (0x0; 0xffffffffffffffff)+0+16 size 8, at insn 65 \
             `lock *(u64 *)(r0 +16) += r1` (`atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed \
             }>(&raw mut (*t).buckets[b], 1);`)"
        );
    }

    #[test]
    fn odd_logs_give_their_last_line() {
        assert_eq!(summary(""), "");
        assert_eq!(summary("processed 3 insns\n"), "processed 3 insns");
        assert_eq!(
            summary("invalid argument\n"),
            "invalid argument",
            "an error without instructions"
        );
    }

    #[test]
    fn long_source_lines_are_shortened() {
        let long = format!(
            "; {}\n7: (05) goto pc+1\nback-edge from insn 7 to 3\n",
            "x".repeat(300)
        );
        let s = summary(&long);
        assert!(
            s.starts_with("back-edge from insn 7 to 3, at insn 7 `goto pc+1`"),
            "{s}"
        );
        assert!(s.len() < 200, "{s}");
    }
}
