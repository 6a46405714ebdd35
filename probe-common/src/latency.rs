//! Latency histograms, one layout for every latency probe measures (block IO, run-queue wait,
//! TCP RTT): bucket `i` counts what took at most 2^i microseconds. The kernel programs bucket
//! with [`bit_length`] (branches only, capped in a form every supported verifier follows); user
//! space reads the buckets as they are and exports them with [`upper_secs`] as `le`.

/// Number of buckets: bucket `i` counts what took at most 2^i microseconds
/// (1 µs .. 2^24 µs = 16.8 s); the last one everything longer.
pub const BUCKETS: usize = 26;

/// The bucket of a latency, exactly: the smallest `i` with `ns <= 1000 * 2^i`, at most the last.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    let bits = bit_length(ns) as usize;
    if bits >= BUCKETS - 1 {
        BUCKETS - 1
    } else {
        bits
    }
}

/// The smallest `i` with `ns <= 1000 * 2^i` (0..=55), without the cap of [`bucket`]:
/// the kernel programs cap it themselves in a form every supported verifier can follow.
/// Branches only (no loop), so it runs in the kernel programs as well.
#[inline(always)]
pub fn bit_length(ns: u64) -> u64 {
    // ceil(ns / 1000) <= 2^i  <=>  ns <= 1000 * 2^i (2^i is an integer).
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // i = ceil(log2(us)) = bit length of (us - 1).
    let mut v = us - 1;
    let mut bits = 0u64;
    if v >> 32 != 0 {
        v >>= 32;
        bits += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        bits += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        bits += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        bits += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        bits += 2;
    }
    if v >> 1 != 0 {
        v >>= 1;
        bits += 1;
    }
    bits + v // v is 0 or 1 here
}

/// Upper bound of bucket `i` in seconds (`f64::INFINITY` for the last).
pub fn upper_secs(i: usize) -> f64 {
    if i + 1 >= BUCKETS {
        f64::INFINITY
    } else {
        (1u64 << i) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_at_the_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1000), 0);
        assert_eq!(bucket(1001), 1);
        assert_eq!(bucket(2000), 1);
        assert_eq!(bucket(2001), 2);
        for i in 1..BUCKETS - 1 {
            let bound = 1000u64 << i;
            assert_eq!(bucket(bound), i, "at 2^{i} us");
            assert_eq!(bucket(bound + 1), i + 1, "just above 2^{i} us");
            assert_eq!(bucket(bound / 2 + 1), i, "just above 2^{} us", i - 1);
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bit_length(u64::MAX), 55);
        for ns in [
            0,
            999,
            1000,
            1001,
            5_000_000,
            16_777_216_000,
            16_777_216_001,
            u64::MAX / 3,
        ] {
            assert_eq!(
                bucket(ns) as u64,
                bit_length(ns).min(BUCKETS as u64 - 1),
                "{ns} ns"
            );
        }
        assert_eq!(upper_secs(0), 1e-6);
        assert_eq!(upper_secs(10), 1024e-6);
        assert!(upper_secs(BUCKETS - 1).is_infinite());
    }
}
