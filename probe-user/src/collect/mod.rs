//! Readers at the kernel boundary: each turns what a kernel program or /proc reports into plain
//! values for the model. Nothing here aggregates or decides; that is `model`'s job.

pub mod block;
pub mod bpfstats;
pub mod cgroups;
pub mod collector;
pub mod cpu;
pub mod idle;
pub mod ports;
pub mod procinfo;
pub mod proctasks;
pub mod reading;
pub mod runq;
pub mod sockdiag;
pub mod tcp;

/// Splits an iterator's output into fixed-size records.
///
/// The kernel programs write whole records with `bpf_seq_write`, so a length that is not a
/// multiple of the record size means the object and the daemon disagree about the layout.
pub fn decode<T: aya::Pod>(buf: &[u8]) -> Result<Vec<T>, DecodeError> {
    let size = std::mem::size_of::<T>();
    if size == 0 || !buf.len().is_multiple_of(size) {
        return Err(DecodeError {
            len: buf.len(),
            size,
        });
    }
    Ok(buf
        .chunks_exact(size)
        // SAFETY: T is plain old data (aya::Pod) and the chunk holds exactly size_of::<T>() bytes.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) })
        .collect())
}

#[derive(Debug, thiserror::Error)]
#[error("iterator output of {len} bytes is not a whole number of {size}-byte records")]
pub struct DecodeError {
    pub len: usize,
    pub size: usize,
}

#[cfg(test)]
mod tests {
    use probe_common::ports::ListenRecord;

    use super::*;

    #[test]
    fn decodes_whole_records_and_rejects_torn_ones() {
        let rec = ListenRecord {
            tgid: 7,
            fd: 3,
            port: 3306,
            family: 2,
            _pad: 0,
        };
        let mut buf = Vec::new();
        for _ in 0..3 {
            // SAFETY: ListenRecord is repr(C) plain data.
            buf.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    (&rec as *const ListenRecord).cast::<u8>(),
                    ListenRecord::SIZE,
                )
            });
        }
        assert_eq!(decode::<ListenRecord>(&buf).expect("whole"), vec![rec; 3]);
        assert!(decode::<ListenRecord>(&buf[..buf.len() - 1]).is_err());
        assert!(decode::<ListenRecord>(&[]).expect("empty").is_empty());
    }
}
