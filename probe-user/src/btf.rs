//! Kernel struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Nothing about kernel struct layouts is compiled into the kernel programs: they read fields at
//! the offsets resolved here, handed to them as read-only globals ([`Offsets`]). A field that this
//! kernel does not have stays [`OFFSET_MISSING`] and the program that needs it treats it as
//! absent; [`Resolved::missing`] lists them so `probe check` can say what is degraded.

use std::path::Path;

use btf_rs::{Btf, Type};
use fallible_iterator::FallibleIterator as _;
use probe_common::config::{Offsets, OFFSET_MISSING};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF from {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("struct {st} has no member {member}")]
    NoMember { st: String, member: String },
    #[error("{what}: unexpected BTF: {detail}")]
    Unexpected { what: String, detail: String },
}

/// A member found in a struct: its byte offset from the start of the outer struct, its size and
/// the BTF type it has (with typedefs and qualifiers stripped).
#[derive(Clone, Debug)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    pub ty: Type,
}

/// The kernel's BTF, with the lookups the loader needs.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { btf })
    }

    /// The definition (not a forward declaration) of `struct name`.
    fn find_struct(&self, name: &str) -> Result<Type, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoStruct { name: name.into() })?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
            .ok_or_else(|| BtfError::NoStruct { name: name.into() })
    }

    /// Follows typedefs, const, volatile and restrict down to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        for _ in 0..32 {
            match &ty {
                Type::Typedef(t) => ty = self.chained(t)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => ty = self.chained(t)?,
                Type::TypeTag(t) => ty = self.chained(t)?,
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Unexpected {
            what: "type chain".into(),
            detail: "too deep".into(),
        })
    }

    fn chained(&self, t: &dyn btf_rs::BtfType) -> Result<Type, BtfError> {
        self.btf
            .resolve_chained_type(t)
            .map_err(|e| BtfError::Unexpected {
                what: "chained type".into(),
                detail: e.to_string(),
            })
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, ty: &Type) -> Result<u32, BtfError> {
        let ty = self.strip(ty.clone())?;
        let size = match &ty {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Float(f) => f.size(),
            Type::Array(a) => a.len() * self.size_of(&self.chained(a)?)? as usize,
            other => {
                return Err(BtfError::Unexpected {
                    what: "size_of".into(),
                    detail: format!("type {} has no size", other.name()),
                })
            }
        };
        u32::try_from(size).map_err(|_| BtfError::Unexpected {
            what: "size_of".into(),
            detail: "too large".into(),
        })
    }

    /// Looks `member` up in a struct or union type, descending into anonymous members (the
    /// kernel nests many fields in unnamed unions and structs).
    fn member_of(&self, outer: &Type, member: &str) -> Result<Option<Field>, BtfError> {
        let members = match outer {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            if m.bitfield_size().is_some_and(|bits| bits != 0) {
                // Bitfields cannot be read with a plain load; treat them as absent.
                let name = self.btf.resolve_name(m).unwrap_or_default();
                if name == member {
                    return Ok(None);
                }
                continue;
            }
            let offset = m.bit_offset() / 8;
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.strip(self.chained(m)?)?;
            if name == member {
                let size = self.size_of(&ty)?;
                return Ok(Some(Field { offset, size, ty }));
            }
            if name.is_empty() {
                if let Some(inner) = self.member_of(&ty, member)? {
                    return Ok(Some(Field {
                        offset: offset + inner.offset,
                        ..inner
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The field at `path` (e.g. `["se", "sum_exec_runtime"]`) inside `struct st`.
    pub fn field(&self, st: &str, path: &[&str]) -> Result<Field, BtfError> {
        let mut ty = self.find_struct(st)?;
        let mut offset = 0;
        let mut found: Option<Field> = None;
        for member in path {
            let field = self
                .member_of(&ty, member)?
                .ok_or_else(|| BtfError::NoMember {
                    st: st.into(),
                    member: path.join("."),
                })?;
            offset += field.offset;
            ty = field.ty.clone();
            found = Some(field);
        }
        let field = found.ok_or_else(|| BtfError::Unexpected {
            what: st.into(),
            detail: "empty member path".into(),
        })?;
        Ok(Field { offset, ..field })
    }

    /// Value of an enumerator (e.g. `MM_ANONPAGES`).
    pub fn enum_value(&self, name: &str) -> Option<u32> {
        let mut types = self.btf.type_iter();
        while let Ok(Some(ty)) = types.next() {
            if let Type::Enum(e) = &ty {
                for m in &e.members {
                    if self.btf.resolve_name(m).is_ok_and(|n| n == name) {
                        return Some(m.val());
                    }
                }
            }
        }
        None
    }

    /// Number of arguments of a tracepoint, from its `btf_trace_<name>` typedef (a pointer to a
    /// function whose first parameter is the tracepoint's private `void *`).
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        let Type::Typedef(td) = typedef.into_iter().next()? else {
            return None;
        };
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&td).ok()? else {
            return None;
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else {
            return None;
        };
        Some(proto.parameters.len().saturating_sub(1))
    }
}

/// Offsets for the kernel programs, plus the fields this kernel did not have.
#[derive(Debug)]
pub struct Resolved {
    pub offsets: Offsets,
    /// `struct.member: reason` for every field left at [`OFFSET_MISSING`].
    pub missing: Vec<String>,
}

/// Resolves every field the kernel programs read. Never fails as a whole: what cannot be found
/// is listed in [`Resolved::missing`] and the programs that need it degrade.
pub fn resolve(btf: &KernelBtf) -> Resolved {
    let mut missing = Vec::new();
    let mut get = |st: &str, paths: &[&[&str]]| -> Option<Field> {
        let mut last_err = None;
        for path in paths {
            match btf.field(st, path) {
                Ok(f) => return Some(f),
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            missing.push(format!("{st}.{}: {e}", paths[0].join(".")));
        }
        None
    };
    let off = |f: &Option<Field>| f.as_ref().map_or(OFFSET_MISSING, |f| f.offset);

    let mut o = Offsets::MISSING;
    o.task_pid = off(&get("task_struct", &[&["pid"]]));
    o.task_tgid = off(&get("task_struct", &[&["tgid"]]));
    o.task_flags = off(&get("task_struct", &[&["flags"]]));
    let state = get("task_struct", &[&["__state"], &["state"]]);
    o.task_state = off(&state);
    o.task_state_size = state.as_ref().map_or(0, |f| f.size);
    o.task_exit_state = off(&get("task_struct", &[&["exit_state"]]));
    o.task_sum_exec_runtime = off(&get("task_struct", &[&["se", "sum_exec_runtime"]]));
    o.task_run_delay = off(&get("task_struct", &[&["sched_info", "run_delay"]]));
    o.task_pcount = off(&get("task_struct", &[&["sched_info", "pcount"]]));
    o.task_start_boottime = off(&get(
        "task_struct",
        &[&["start_boottime"], &["real_start_time"]],
    ));
    o.task_group_leader = off(&get("task_struct", &[&["group_leader"]]));
    o.task_real_parent = off(&get("task_struct", &[&["real_parent"]]));
    o.task_comm = off(&get("task_struct", &[&["comm"]]));
    o.task_mm = off(&get("task_struct", &[&["mm"]]));
    o.task_cgroups = off(&get("task_struct", &[&["cgroups"]]));
    o.css_set_dfl_cgrp = off(&get("css_set", &[&["dfl_cgrp"]]));
    o.cgroup_kn = off(&get("cgroup", &[&["kn"]]));
    o.kernfs_node_id = off(&get("kernfs_node", &[&["id"]]));
    o.socket_sk = off(&get("socket", &[&["sk"]]));
    o.sk_family = off(&get("sock_common", &[&["skc_family"]]));
    o.sk_state = off(&get("sock_common", &[&["skc_state"]]));
    o.sk_num = off(&get("sock_common", &[&["skc_num"]]));
    o.sk_protocol = off(&get("sock", &[&["sk_protocol"]]));
    o.sk_type = off(&get("sock", &[&["sk_type"]]));

    o.sk_dport = off(&get("sock_common", &[&["skc_dport"]]));
    o.sk_net = off(&get("sock_common", &[&["skc_net", "net"]]));
    o.net_ns_inum = off(&get("net", &[&["ns", "inum"]]));
    o.inet_sport = off(&get("inet_sock", &[&["inet_sport"]]));
    o.sk_flags = off(&get("sock_common", &[&["skc_flags"]]));
    o.tcp_bytes_acked = off(&get("tcp_sock", &[&["bytes_acked"]]));
    o.tcp_srtt_us = off(&get("tcp_sock", &[&["srtt_us"]]));
    o.tcp_bytes_received = off(&get("tcp_sock", &[&["bytes_received"]]));
    o.tcp_snd_una = off(&get("tcp_sock", &[&["snd_una"]]));
    o.tcp_write_seq = off(&get("tcp_sock", &[&["write_seq"]]));
    o.skb_cb = off(&get("sk_buff", &[&["cb"]]));
    o.tcp_cb_gso_segs = off(&get("tcp_skb_cb", &[&["tcp_gso_segs"]]));
    o.sk_receive_queue = off(&get("sock", &[&["sk_receive_queue"]]));
    o.skb_head_prev = off(&get("sk_buff_head", &[&["prev"]]));
    o.tcp_cb_flags = off(&get("tcp_skb_cb", &[&["tcp_flags"]]));
    o.tcp_cb_end_seq = off(&get("tcp_skb_cb", &[&["end_seq"]]));
    o.tcp_rcv_nxt = off(&get("tcp_sock", &[&["rcv_nxt"]]));
    o.tcp_copied_seq = off(&get("tcp_sock", &[&["copied_seq"]]));
    o.retransmit_has_err = u32::from(btf.tracepoint_args("tcp_retransmit_skb") == Some(3));
    o.sched_switch_has_prev_state = u32::from(btf.tracepoint_args("sched_switch") == Some(4));

    // Block IO.
    o.rq_q = off(&get("request", &[&["q"]]));
    o.rq_cmd_flags = off(&get("request", &[&["cmd_flags"]]));
    o.rq_rq_flags = off(&get("request", &[&["rq_flags"]]));
    o.rq_data_len = off(&get("request", &[&["__data_len"]]));
    o.rq_start_time_ns = off(&get("request", &[&["start_time_ns"]]));
    o.rq_bio = off(&get("request", &[&["bio"]]));
    // The disk is request.rq_disk before 5.16 and request.q->disk from 5.15 on: one suffices.
    let optional = |st: &str, path: &[&str]| {
        btf.field(st, path)
            .ok()
            .map_or(OFFSET_MISSING, |f| f.offset)
    };
    o.rq_rq_disk = optional("request", &["rq_disk"]);
    o.queue_disk = optional("request_queue", &["disk"]);
    o.disk_major = off(&get("gendisk", &[&["major"]]));
    o.disk_first_minor = off(&get("gendisk", &[&["first_minor"]]));
    o.bio_io_vec = off(&get("bio", &[&["bi_io_vec"]]));
    o.bvec_page = off(&get("bio_vec", &[&["bv_page"]]));
    o.page_compound_head = off(&get("page", &[&["compound_head"]]));
    o.page_mapping = off(&get("page", &[&["mapping"]]));
    o.mapping_host = off(&get("address_space", &[&["host"]]));
    o.inode_mode = off(&get("inode", &[&["i_mode"]]));
    o.inode_sb = off(&get("inode", &[&["i_sb"]]));
    o.sb_bdev = off(&get("super_block", &[&["s_bdev"]]));
    o.bdev_disk = off(&get("block_device", &[&["bd_disk"]]));
    // mm_struct.rss_stat: an array of percpu_counter (6.2+), or struct mm_rss_stat
    // { atomic_long_t count[]; } before. Each counter is a signed 64-bit page count.
    match rss_offsets(btf) {
        Ok([file, anon, shmem]) => {
            o.mm_rss_file = file;
            o.mm_rss_anon = anon;
            o.mm_rss_shmem = shmem;
        }
        Err(e) => missing.push(format!("mm_struct.rss_stat: {e}")),
    }
    if o.rq_rq_disk == OFFSET_MISSING && o.queue_disk == OFFSET_MISSING {
        missing.push("request.rq_disk / request_queue.disk: neither exists".into());
    }
    // Request flags are an enum of bit numbers from 6.4 on, #defines (not in BTF) before; the
    // values below are those of the #defines (5.8 to 6.3).
    o.rqf_io_stat = 1 << btf.enum_value("__RQF_IO_STAT").unwrap_or(13);
    o.rqf_flush_seq = 1 << btf.enum_value("__RQF_FLUSH_SEQ").unwrap_or(4);
    // Large folios (5.16+): without them every dirtied folio is one page.
    o.pg_head_bit = btf.enum_value("PG_head").unwrap_or(OFFSET_MISSING);
    o.folio_nr_pages = btf
        .field("folio", &["_nr_pages"])
        .or_else(|_| btf.field("folio", &["_folio_nr_pages"]))
        .ok()
        .map_or(OFFSET_MISSING, |f| f.offset);
    o.folio_flags_1 = optional("folio", &["_flags_1"]);
    Resolved {
        offsets: o,
        missing,
    }
}

fn rss_offsets(btf: &KernelBtf) -> Result<[u32; 3], BtfError> {
    let index = |name: &str| {
        btf.enum_value(name).ok_or_else(|| BtfError::Unexpected {
            what: "rss counters".into(),
            detail: format!("no enumerator {name}"),
        })
    };
    let idx = [
        index("MM_FILEPAGES")?,
        index("MM_ANONPAGES")?,
        index("MM_SHMEMPAGES")?,
    ];
    let rss = btf.field("mm_struct", &["rss_stat"])?;
    let (base, stride) = match &rss.ty {
        // 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]
        Type::Array(a) => {
            let elem = btf.strip(btf.chained(a)?)?;
            let count = btf
                .member_of(&elem, "count")?
                .ok_or_else(|| BtfError::NoMember {
                    st: "percpu_counter".into(),
                    member: "count".into(),
                })?;
            (rss.offset + count.offset, btf.size_of(&elem)?)
        }
        // before: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
        Type::Struct(_) => {
            let count = btf
                .member_of(&rss.ty, "count")?
                .ok_or_else(|| BtfError::NoMember {
                    st: "mm_rss_stat".into(),
                    member: "count".into(),
                })?;
            (rss.offset + count.offset, 8)
        }
        other => {
            return Err(BtfError::Unexpected {
                what: "mm_struct.rss_stat".into(),
                detail: format!("is a {}", other.name()),
            })
        }
    };
    Ok(idx.map(|i| base + i * stride))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The running kernel's BTF is world-readable, so this needs no root. Ground truth for the
    // offsets themselves is the kernel tests (values read through them match /proc).
    #[test]
    fn resolves_every_field_on_this_kernel() {
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF))
            .unwrap_or_else(|e| panic!("this machine must have kernel BTF: {e}"));
        let r = resolve(&btf);
        assert!(r.missing.is_empty(), "unresolved: {:?}", r.missing);
        let o = r.offsets;
        assert_eq!(o.task_state_size, 4, "5.14+ has unsigned int __state");
        assert_eq!(o.sched_switch_has_prev_state, 1, "5.18+ passes prev_state");
        assert_eq!(
            o.retransmit_has_err, 1,
            "6.13+ passes err to tcp_retransmit_skb"
        );
        assert_eq!(
            o.sk_dport + 2,
            o.sk_num,
            "skc_dport then skc_num in skc_portpair"
        );
        assert_ne!(o.task_pid, o.task_tgid);
        // u16 sk_type, next to u16 sk_protocol (5.6+; their order varies).
        let ty = btf.field("sock", &["sk_type"]).expect("sk_type");
        assert_eq!(ty.size, 2);
        assert_eq!(
            o.sk_type.abs_diff(o.sk_protocol),
            2,
            "sk_type next to sk_protocol"
        );
        // skc_num is the 16-bit local port right after skc_dport in sock_common.
        let num = btf.field("sock_common", &["skc_num"]).expect("skc_num");
        assert_eq!(num.size, 2);
        assert!(o.mm_rss_anon > o.mm_rss_file && o.mm_rss_shmem > o.mm_rss_anon);
        // 6.18: the disk is request.q->disk, request flags are an enum, folios carry _nr_pages.
        assert_eq!(o.rq_rq_disk, OFFSET_MISSING);
        assert_ne!(o.queue_disk, OFFSET_MISSING);
        assert!(o.rqf_io_stat.is_power_of_two() && o.rqf_flush_seq.is_power_of_two());
        assert_ne!(o.rqf_io_stat, o.rqf_flush_seq);
        assert!(o.pg_head_bit < 64);
        assert_ne!(o.folio_nr_pages, OFFSET_MISSING);
        assert_eq!(btf.field("bio_vec", &["bv_page"]).expect("bv_page").size, 8);
    }

    #[test]
    fn missing_struct_is_an_error_not_a_panic() {
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF)).expect("btf");
        assert!(matches!(
            btf.field("no_such_struct_probe", &["x"]),
            Err(BtfError::NoStruct { .. })
        ));
        assert!(matches!(
            btf.field("task_struct", &["no_such_member"]),
            Err(BtfError::NoMember { .. })
        ));
    }

    #[test]
    fn missing_btf_file_says_what_to_do() {
        let Err(err) = KernelBtf::from_file(Path::new("/nonexistent/vmlinux")) else {
            panic!("a missing file must be an error");
        };
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
