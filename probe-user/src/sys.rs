//! The few system calls aya 0.14 does not wrap the way the daemon needs them, and the pseudo
//! filesystems it depends on.

use std::{
    fs::File,
    io::{self, Read as _},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

// From include/uapi/linux/bpf.h (stable ABI).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised buffer at least as large as the union member the
    // command reads, and outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("bpf() returned a bad fd"))?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The kernel's count of runs of a program it skipped because the program was already running
/// on that CPU (bpf_prog_info.recursion_misses, Linux 5.12+). Counted whether or not BPF
/// statistics are on. `Unsupported` where the kernel's bpf_prog_info is older.
pub fn prog_recursion_misses(prog: BorrowedFd<'_>) -> io::Result<u64> {
    use aya_obj::generated::bpf_prog_info;
    // SAFETY: bpf_prog_info is plain data (integers and u64 pointers the kernel only writes
    // through when their lengths are non-zero); all zeroes is a valid, empty request.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<bpf_prog_info>() as u32;
    // union bpf_attr, member info: { __u32 bpf_fd; __u32 info_len; __u64 info; }
    let mut attr = [0u64; 8];
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(size) << 32);
    attr[1] = (&raw mut info) as u64;
    // SAFETY: `attr` is zero-initialised beyond the member the command reads, and `info` is a
    // buffer of the `info_len` bytes the kernel may write; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel writes back how much of the struct it knows.
    let written = (attr[0] >> 32) as usize;
    if written < std::mem::offset_of!(bpf_prog_info, recursion_misses) + 8 {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(info.recursion_misses)
}

/// An attached BPF iterator that can be read any number of times.
///
/// aya's `IterLink::into_file` consumes the link, so one attachment gives one read. The daemon
/// reads on every collection, so it keeps the link fd itself and asks the kernel for a new
/// iterator instance (BPF_ITER_CREATE) each time.
#[derive(Debug)]
pub struct IterLink {
    link: OwnedFd,
}

impl IterLink {
    /// BPF_LINK_CREATE with attach type BPF_TRACE_ITER for a loaded iterator program; a map
    /// iterator walks the elements of `map`.
    pub fn attach(prog: BorrowedFd<'_>, map: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let mut attr = [0u64; 8];
        // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags;
        //          __aligned_u64 iter_info; __u32 iter_info_len; ... }
        attr[0] = u64::from(prog.as_raw_fd() as u32);
        attr[1] = u64::from(BPF_TRACE_ITER);
        // union bpf_iter_link_info { struct { __u32 map_fd; } map; ... }; read by the kernel
        // during the call, so it lives on this stack.
        let info: [u32; 2] = [map.map_or(0, |m| m.as_raw_fd() as u32), 0];
        if map.is_some() {
            attr[2] = info.as_ptr() as u64;
            attr[3] = std::mem::size_of_val(&info) as u64;
        }
        Ok(Self {
            link: sys_bpf(BPF_LINK_CREATE, &mut attr)?,
        })
    }

    /// Runs the iterator once and returns everything it wrote.
    pub fn read_all(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut attr = [0u64; 8];
        // struct { __u32 link_fd; __u32 flags; }
        attr[0] = u64::from(self.link.as_raw_fd() as u32);
        let fd = sys_bpf(BPF_ITER_CREATE, &mut attr)?;
        buf.clear();
        File::from(fd).read_to_end(buf)?;
        Ok(())
    }
}

/// A pseudo filesystem the daemon needs, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    AlreadyMounted,
    Mounted,
}

/// Mounts `fstype` at `target` unless something is mounted there already (tracefs and bpffs
/// are not mounted on every host; peers such as bpftool mount them the same way).
pub fn ensure_mounted(fstype: &str, target: &Path) -> io::Result<MountOutcome> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if mount_point_of(&mountinfo, fstype)
        .iter()
        .any(|p| p == target)
    {
        return Ok(MountOutcome::AlreadyMounted);
    }
    std::fs::create_dir_all(target)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(io::Error::other);
    let (src, dst, ty) = (c(fstype)?, c(&target.to_string_lossy())?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let ret = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(MountOutcome::Mounted)
}

/// Mount points of filesystems of type `fstype` in a /proc/self/mountinfo text.
pub fn mount_point_of(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
            let (left, right) = line.split_once(" - ")?;
            let ty = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (ty == fstype).then(|| PathBuf::from(unescape_mount_path(point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup2 root for attaching cgroup programs that must see every socket: through
/// /proc/1/root when pid 1 is the host's init (a container with the host's pid namespace has
/// its own cgroup namespace, whose /sys/fs/cgroup is only its own cgroup), else this process's
/// cgroup2 mount.
/// `given` (`--path.cgroup`) overrides both: the cgroup2 mount there or in its unified/.
pub fn cgroup2_root(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return [dir.to_path_buf(), dir.join("unified")]
            .into_iter()
            .find(|p| is_cgroup2(p) && !p.join("cgroup.events").exists())
            .ok_or_else(|| {
                format!(
                    "--path.cgroup {}: neither it nor its unified/ is the root of a cgroup2 \
                     hierarchy (a cgroup below the root would hide other cgroups' sockets)",
                    dir.display()
                )
            });
    }
    let host = std::fs::read_to_string("/proc/1/mountinfo")
        .ok()
        .and_then(|m| mount_point_of(&m, "cgroup2").into_iter().next())
        .map(|p| Path::new("/proc/1/root").join(p.strip_prefix("/").unwrap_or(&p)))
        .filter(|p| p.is_dir());
    host.or_else(cgroup2_mount).ok_or_else(|| {
        "no cgroup2 mount found (in a container: mount the host's /sys/fs/cgroup and pass \
         --path.cgroup)"
            .to_string()
    })
}

/// Whether `path` is on a cgroup2 filesystem (its root cgroup has no cgroup.events file, every
/// other cgroup has one).
fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    // f_type and the constant have different types on glibc and musl.
    #[allow(clippy::unnecessary_cast)]
    let magic = libc::CGROUP2_SUPER_MAGIC as i64;
    ok && st.f_type as i64 == magic
}

/// This process's cgroup v2 mount point (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_point_of(&mountinfo, "cgroup2").into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /sys/kernel/tracing rw,relatime shared:5 - tracefs tracefs rw
51 23 0:41 / /mnt/with\\040space rw - bpf bpf rw
";

    #[test]
    fn a_given_cgroup_path_that_is_not_cgroup2_is_refused_by_name() {
        let dir = std::env::temp_dir();
        let err = cgroup2_root(Some(&dir)).expect_err("a temp dir is no cgroup2 mount");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("--path.cgroup"), "{err}");
    }

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        assert_eq!(
            mount_point_of(MOUNTINFO, "cgroup2"),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            mount_point_of(MOUNTINFO, "tracefs"),
            vec![PathBuf::from("/sys/kernel/tracing")]
        );
        assert!(mount_point_of(MOUNTINFO, "debugfs").is_empty());
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(
            mount_point_of(MOUNTINFO, "bpf"),
            vec![PathBuf::from("/mnt/with space")]
        );
        assert_eq!(unescape_mount_path("a\\134b"), "a\\b");
        assert_eq!(unescape_mount_path("trailing\\04"), "trailing\\04");
    }
}
