//! Listening TCP sockets, and established connections per local port, from NETLINK_SOCK_DIAG
//! (what `ss` uses). Both cover the daemon's network namespace.
//!
//! Asking for TCP_LISTEN only makes the kernel walk just its listening hash, so this costs the
//! same with ten or ten thousand connections open. It does not say which process holds a socket,
//! but it is a cheap way to tell whether the set of listening sockets changed, and so whether the
//! (much more expensive) walk over every process's files needs to run again.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

// include/uapi/linux/{netlink,sock_diag,inet_diag}.h (stable ABI).
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// struct inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue, wqueue,
/// uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;

/// Listening sockets: inode -> local port.
pub type ListenSockets = BTreeMap<u64, u16>;

pub fn listening() -> io::Result<ListenSockets> {
    let mut out = ListenSockets::new();
    dump(1 << TCP_LISTEN, |state, port, inode| {
        if state == TCP_LISTEN {
            out.insert(inode, port);
        }
    })?;
    Ok(out)
}

/// Established connections by local port (IPv4 and IPv6 together).
pub fn established_by_port() -> io::Result<HashMap<u16, u64>> {
    let mut out = HashMap::new();
    dump(1 << TCP_ESTABLISHED, |state, port, _| {
        if state == TCP_ESTABLISHED {
            *out.entry(port).or_default() += 1;
        }
    })?;
    Ok(out)
}

/// Dumps the TCP sockets in `states` (a bit mask of TCP states), calling `each` with the state,
/// local port and inode of every one.
fn dump(states: u32, mut each: impl FnMut(u32, u16, u64)) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send_request(&sock, seq, family, states)?;
        read_dump(&sock, &mut each)?;
    }
    Ok(())
}

fn send_request(sock: &OwnedFd, seq: u32, family: u8, states: u32) -> io::Result<()> {
    let mut req = [0u8; NLMSG_HDRLEN + 56];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // struct inet_diag_req_v2 { family, protocol, ext, pad, states, id }
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: req is a valid buffer of the given length.
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_dump(sock: &OwnedFd, each: &mut impl FnMut(u32, u16, u64)) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if parse_messages(&buf[..n as usize], each)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of netlink messages; true once the dump is complete.
fn parse_messages(mut data: &[u8], each: &mut impl FnMut(u32, u16, u64)) -> io::Result<bool> {
    let u32_at = |d: &[u8], i: usize| u32::from_ne_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        let payload = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY if payload.len() >= INET_DIAG_MSG_LEN => {
                let port = u16::from_be_bytes([payload[4], payload[5]]);
                let inode = u64::from(u32_at(payload, 68));
                each(u32::from(payload[1]), port, inode);
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    // No root needed: any process may dump listening sockets.
    #[test]
    fn sees_a_new_listener_appear_and_go() {
        let before = listening().expect("sock_diag dump");
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let l6 = std::net::TcpListener::bind("[::1]:0").expect("bind v6");
        let (p4, p6) = (
            l4.local_addr().expect("a").port(),
            l6.local_addr().expect("a").port(),
        );
        let during = listening().expect("sock_diag dump");
        assert!(
            during.values().any(|&p| p == p4),
            "IPv4 listener {p4} missing: {during:?}"
        );
        assert!(
            during.values().any(|&p| p == p6),
            "IPv6 listener {p6} missing: {during:?}"
        );
        assert_ne!(before, during);
        drop((l4, l6));
        let after = listening().expect("sock_diag dump");
        assert!(!after.values().any(|&p| p == p4 || p == p6));
    }

    #[test]
    fn counts_established_connections_by_local_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let counts = established_by_port().expect("sock_diag dump");
        // The three accepted (queued) connections have the listener's port locally.
        assert_eq!(counts.get(&port), Some(&3), "{counts:?}");
        drop(clients);
    }

    #[test]
    fn rejects_truncated_messages() {
        let mut msg = vec![0u8; 20];
        msg[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_messages(&msg, &mut |_, _, _| {}).is_err());
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse_messages(&done, &mut |_, _, _| {}).expect("done"));
    }
}
