//! Runtime configuration handed to the kernel programs as read-only globals.
//!
//! Kernel struct layouts differ between kernel versions and builds, so no offset is compiled in:
//! the daemon reads them from the running kernel's BTF (/sys/kernel/btf/vmlinux) at load time and
//! sets these globals before the programs are loaded. The verifier then sees them as constants.

/// Name of the read-only global that holds [`Offsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// Name of the read-only global that holds the daemon's own tgid (its tasks are skipped).
pub const SELF_TGID_GLOBAL: &str = "SELF_TGID";
/// Name of the read-only global that holds the port the daemon serves HTTP on (0: none); the
/// connections it accepts there are not counted.
pub const SELF_PORT_GLOBAL: &str = "SELF_PORT";
/// Name of the read-only global that holds the daemon's network namespace (the inode number of
/// /proc/self/ns/net), with which [`SELF_PORT_GLOBAL`] names its connections.
pub const SELF_NETNS_GLOBAL: &str = "SELF_NETNS";

/// Name of the read-only global with the generation of this load of the programs (see
/// [`ACTIVE_MAP`]).
pub const GENERATION_GLOBAL: &str = "GENERATION";
/// Array map of one u32: the generation of the programs that count now; the others return at
/// once. Pinned: a restarted daemon attaches its programs beside the previous daemon's (still
/// attached through their pinned links), hands over with one write of this map, then detaches
/// the old ones: no event is missed in between, none is counted twice.
pub const ACTIVE_MAP: &str = "ACTIVE_GENERATION";

/// An offset that could not be resolved on this kernel. Programs treat the field as absent.
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Byte offsets of the kernel struct fields the programs read, resolved from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// task_struct.pid
    pub task_pid: u32,
    /// task_struct.tgid
    pub task_tgid: u32,
    /// task_struct.flags (PF_KTHREAD lives here)
    pub task_flags: u32,
    /// task_struct.__state (5.14+) or task_struct.state
    pub task_state: u32,
    /// Size in bytes of the state field (4 for `unsigned int __state`, 8 for `long state`).
    pub task_state_size: u32,
    /// task_struct.exit_state
    pub task_exit_state: u32,
    /// task_struct.se.sum_exec_runtime: on-CPU nanoseconds of this thread.
    pub task_sum_exec_runtime: u32,
    /// task_struct.sched_info.run_delay: nanoseconds this thread waited on a run queue.
    pub task_run_delay: u32,
    /// task_struct.sched_info.pcount: times this thread was switched in after waiting.
    pub task_pcount: u32,
    /// task_struct.start_boottime (ns since boot, what /proc/<pid>/stat field 22 is made from).
    pub task_start_boottime: u32,
    /// task_struct.group_leader
    pub task_group_leader: u32,
    /// task_struct.real_parent
    pub task_real_parent: u32,
    /// task_struct.comm
    pub task_comm: u32,
    /// task_struct.mm
    pub task_mm: u32,
    /// task_struct.cgroups (struct css_set *)
    pub task_cgroups: u32,
    /// css_set.dfl_cgrp (the cgroup v2 cgroup)
    pub css_set_dfl_cgrp: u32,
    /// cgroup.kn
    pub cgroup_kn: u32,
    /// kernfs_node.id (the cgroup id, equal to the cgroup directory's inode number)
    pub kernfs_node_id: u32,
    /// Offsets of the RSS counters inside mm_struct, for MM_FILEPAGES, MM_ANONPAGES and
    /// MM_SHMEMPAGES: each points at a signed 64-bit page count (percpu_counter.count on 6.2+,
    /// the atomic_long_t of mm_rss_stat before).
    pub mm_rss_file: u32,
    pub mm_rss_anon: u32,
    pub mm_rss_shmem: u32,
    /// socket.sk
    pub socket_sk: u32,
    /// sock_common.skc_family
    pub sk_family: u32,
    /// sock_common.skc_state
    pub sk_state: u32,
    /// sock_common.skc_num (local port, host byte order)
    pub sk_num: u32,
    /// sock.sk_protocol (u16 on 5.6+)
    pub sk_protocol: u32,
    /// sock.sk_type (u16): SOCK_STREAM for TCP sockets, SOCK_RAW for raw ones of protocol TCP
    pub sk_type: u32,
    /// inet_sock.inet_sport (local port, network byte order): unlike skc_num it is still set
    /// when a closing socket reaches TCP_CLOSE (its port is released first)
    pub inet_sport: u32,
    /// sock_common.skc_dport (remote port, network byte order)
    pub sk_dport: u32,
    /// sock_common.skc_net.net (struct net *), and net.ns.inum: the socket's network namespace
    pub sk_net: u32,
    pub net_ns_inum: u32,
    /// sock_common.skc_flags (sock.sk_flags; SOCK_DONE: the peer's FIN arrived)
    pub sk_flags: u32,
    /// tcp_sock.bytes_acked, bytes_received (u64), snd_una, write_seq (u32)
    pub tcp_bytes_acked: u32,
    /// tcp_sock.srtt_us: 8 times the smoothed RTT in microseconds.
    pub tcp_srtt_us: u32,
    pub tcp_bytes_received: u32,
    pub tcp_snd_una: u32,
    pub tcp_write_seq: u32,
    /// sk_buff.cb, and tcp_skb_cb.tcp_gso_segs inside it: segments in a TCP skb
    pub skb_cb: u32,
    pub tcp_cb_gso_segs: u32,
    /// sock.sk_receive_queue, sk_buff_head.prev (its last skb; the queue's own address when
    /// empty), tcp_skb_cb.tcp_flags and end_seq (in sk_buff.cb), tcp_sock.rcv_nxt and
    /// copied_seq: whether the peer's FIN is in bytes_received before SOCK_DONE says so
    pub sk_receive_queue: u32,
    pub skb_head_prev: u32,
    pub tcp_cb_flags: u32,
    pub tcp_cb_end_seq: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    /// 1 when tcp_retransmit_skb passes `err` as its 3rd argument (6.13+; it then fires for
    /// failed retransmits too)
    pub retransmit_has_err: u32,
    /// 1 when the sched_switch tracepoint passes `prev_state` as its 4th argument (5.18+).
    pub sched_switch_has_prev_state: u32,

    // Block IO (see the block module of probe-ebpf).
    /// request.q
    pub rq_q: u32,
    /// request.cmd_flags (REQ_OP_* in the low 8 bits)
    pub rq_cmd_flags: u32,
    /// request.rq_flags (RQF_*)
    pub rq_rq_flags: u32,
    /// request.__data_len: bytes not yet completed
    pub rq_data_len: u32,
    /// request.start_time_ns: when the block layer started accounting the request
    pub rq_start_time_ns: u32,
    /// request.bio
    pub rq_bio: u32,
    /// request.rq_disk (before 5.16; later the disk is request.q->disk)
    pub rq_rq_disk: u32,
    /// request_queue.disk (5.15+)
    pub queue_disk: u32,
    /// gendisk.major, gendisk.first_minor: the whole disk's dev_t
    pub disk_major: u32,
    pub disk_first_minor: u32,
    /// RQF_IO_STAT and RQF_FLUSH_SEQ as bit masks
    pub rqf_io_stat: u32,
    pub rqf_flush_seq: u32,
    /// bio.bi_io_vec, bio_vec.bv_page
    pub bio_io_vec: u32,
    pub bvec_page: u32,
    /// page.compound_head (bit 0 set on tail pages), page.mapping
    pub page_compound_head: u32,
    pub page_mapping: u32,
    /// address_space.host, inode.i_mode, inode.i_sb, super_block.s_bdev, block_device.bd_disk
    pub mapping_host: u32,
    pub inode_mode: u32,
    pub inode_sb: u32,
    pub sb_bdev: u32,
    pub bdev_disk: u32,
    /// page.flags bit PG_head (a large folio's first page)
    pub pg_head_bit: u32,
    /// folio._nr_pages (6.x, 64-bit), else folio._flags_1 (its low byte is the order)
    pub folio_nr_pages: u32,
    pub folio_flags_1: u32,
    /// Bytes per page (PAGE_SIZE)
    pub page_size: u32,
}

impl Offsets {
    /// All offsets missing; the daemon fills in what BTF provides.
    pub const MISSING: Self = Self {
        task_pid: OFFSET_MISSING,
        task_tgid: OFFSET_MISSING,
        task_flags: OFFSET_MISSING,
        task_state: OFFSET_MISSING,
        task_state_size: 0,
        task_exit_state: OFFSET_MISSING,
        task_sum_exec_runtime: OFFSET_MISSING,
        task_run_delay: OFFSET_MISSING,
        task_pcount: OFFSET_MISSING,
        task_start_boottime: OFFSET_MISSING,
        task_group_leader: OFFSET_MISSING,
        task_real_parent: OFFSET_MISSING,
        task_comm: OFFSET_MISSING,
        task_mm: OFFSET_MISSING,
        task_cgroups: OFFSET_MISSING,
        css_set_dfl_cgrp: OFFSET_MISSING,
        cgroup_kn: OFFSET_MISSING,
        kernfs_node_id: OFFSET_MISSING,
        mm_rss_file: OFFSET_MISSING,
        mm_rss_anon: OFFSET_MISSING,
        mm_rss_shmem: OFFSET_MISSING,
        socket_sk: OFFSET_MISSING,
        sk_family: OFFSET_MISSING,
        sk_state: OFFSET_MISSING,
        sk_num: OFFSET_MISSING,
        sk_protocol: OFFSET_MISSING,
        sk_type: OFFSET_MISSING,
        inet_sport: OFFSET_MISSING,
        sk_dport: OFFSET_MISSING,
        sk_net: OFFSET_MISSING,
        net_ns_inum: OFFSET_MISSING,
        sk_flags: OFFSET_MISSING,
        tcp_bytes_acked: OFFSET_MISSING,
        tcp_srtt_us: OFFSET_MISSING,
        tcp_bytes_received: OFFSET_MISSING,
        tcp_snd_una: OFFSET_MISSING,
        tcp_write_seq: OFFSET_MISSING,
        skb_cb: OFFSET_MISSING,
        tcp_cb_gso_segs: OFFSET_MISSING,
        sk_receive_queue: OFFSET_MISSING,
        skb_head_prev: OFFSET_MISSING,
        tcp_cb_flags: OFFSET_MISSING,
        tcp_cb_end_seq: OFFSET_MISSING,
        tcp_rcv_nxt: OFFSET_MISSING,
        tcp_copied_seq: OFFSET_MISSING,
        retransmit_has_err: 0,
        sched_switch_has_prev_state: 0,
        rq_q: OFFSET_MISSING,
        rq_cmd_flags: OFFSET_MISSING,
        rq_rq_flags: OFFSET_MISSING,
        rq_data_len: OFFSET_MISSING,
        rq_start_time_ns: OFFSET_MISSING,
        rq_bio: OFFSET_MISSING,
        rq_rq_disk: OFFSET_MISSING,
        queue_disk: OFFSET_MISSING,
        disk_major: OFFSET_MISSING,
        disk_first_minor: OFFSET_MISSING,
        rqf_io_stat: 0,
        rqf_flush_seq: 0,
        bio_io_vec: OFFSET_MISSING,
        bvec_page: OFFSET_MISSING,
        page_compound_head: OFFSET_MISSING,
        page_mapping: OFFSET_MISSING,
        mapping_host: OFFSET_MISSING,
        inode_mode: OFFSET_MISSING,
        inode_sb: OFFSET_MISSING,
        sb_bdev: OFFSET_MISSING,
        bdev_disk: OFFSET_MISSING,
        pg_head_bit: OFFSET_MISSING,
        folio_nr_pages: OFFSET_MISSING,
        folio_flags_1: OFFSET_MISSING,
        page_size: 4096,
    };
}
