//! Workloads for the kernel tests: processes whose CPU use the test knows independently of
//! probe. Each listens on a loopback TCP port (so it is its own instance, `<comm>:<port>`),
//! prints `ready pid=<pid> port=<port>`, does its work, prints `done ...` with what it measured
//! itself, then stays alive until its stdin closes, so the test can compare at leisure.
//!
//!   spin  [--secs S] [--threads N --thread-secs T] [--cpu C]   busy main thread (+ N workers that exit)
//!   burst --count N --ms M [--pause-ms P]                      N children, one after another, each burning M ms of CPU
//!                                                              (P ms apart)
//!   name  --hex HEX [--ms M]                                   set comm to the given bytes, burn M ms
//!   write --file F --mb N [--direct] [--sync] [--secs S]       write N MiB to F (O_DIRECT, or buffered
//!                                                              then sync(2)); with --secs, rewrite it
//!                                                              until S seconds passed; prints bytes=
//!   run   -- CMD ARGS...                                       run CMD as a child (same instance by
//!                                                              ancestry), print its exit status
//!   tcp-serve  --conns K --recv N --send M                     on the ready listener, K connections one
//!                                                              after another: read exactly N bytes, send
//!                                                              M, wait for the peer to close, close
//!                                                              and wait for its ACK (SO_LINGER)
//!   tcp-client --to ADDR:PORT --conns K --send N --recv M      K connections one after another: send N,
//!                                                              read exactly M, close
//!   tcp-client --defer-connect                                 connect with TCP_FASTOPEN_CONNECT (IPv4),
//!                                                              print `connecting state=S` (its TCP
//!                                                              state), wait for the line `step`
//!   tcp-client --read-after-close                              send N, shut down writing, wait until
//!                                                              the peer's close has taken the socket to
//!                                                              TCP_CLOSE (print `closed`), wait for the
//!                                                              line `read`, read the M bytes queued in
//!                                                              it (print `read rx=M`), wait for `step`,
//!                                                              close
//!   (tcp-serve, tcp-client) --rounds R                         R exchanges per connection; after each
//!                                                              but the last, print `round I` and wait
//!                                                              for the line `step` on stdin
//!   churn --procs N --rate R [--rotate-every K] [--send B] [--spin-us U]
//!                                                              N children at R per second, each sends B
//!                                                              bytes to this process's port, burns U us
//!                                                              and exits; a new port every K children;
//!                                                              prints `port P rx=B` when done with a port;
//!                                                              with --wait-go, starts when the line `go`
//!                                                              arrives on stdin
//!
//! `--bind ADDR:PORT` (any command) sets the ready listener's address (default 127.0.0.1:0).
//! `--until-stop` (burst, write): go on until the line `stop` arrives on stdin (in place of
//! --count or --secs), so a test decides when the load ends.
//!
//! Over 500 lines: one binary for every workload, so each test starts the same kind of process.

use std::{
    io::{BufRead as _, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// `--until-stop`: set when stdin says `stop`; STDIN_CLOSED when it closes.
static STOP: AtomicBool = AtomicBool::new(false);
static STDIN_CLOSED: AtomicBool = AtomicBool::new(false);
static UNTIL_STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        usage("missing command")
    };
    let flag = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| usage(name)))
    };
    let num = |name: &str, default: f64| -> f64 {
        flag(name).map_or(default, |v| v.parse().unwrap_or_else(|_| usage(name)))
    };

    if args.iter().any(|a| a == "--until-stop") {
        UNTIL_STOP.store(true, Ordering::Relaxed);
        std::thread::spawn(|| {
            let mut line = String::new();
            while std::io::stdin()
                .lock()
                .read_line(&mut line)
                .is_ok_and(|n| n > 0)
            {
                if line.trim() == "stop" {
                    STOP.store(true, Ordering::Relaxed);
                }
                line.clear();
            }
            STOP.store(true, Ordering::Relaxed);
            STDIN_CLOSED.store(true, Ordering::Relaxed);
        });
    }
    if let Some(hex) = flag("--hex") {
        set_comm(&decode_hex(&hex));
    }
    if let Some(cpu) = flag("--cpu") {
        pin_to(cpu.parse().unwrap_or_else(|_| usage("--cpu")));
    }
    let bind = flag("--bind").unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&bind).unwrap_or_else(|e| fail(&format!("bind {bind}: {e}")));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("addr: {e}")));
    say(&format!("ready pid={} port={port}", std::process::id()));

    match cmd.as_str() {
        "spin" => {
            let workers: Vec<_> = (0..num("--threads", 0.0) as usize)
                .map(|_| {
                    let secs = num("--thread-secs", 1.0);
                    std::thread::spawn(move || spin_wall(Duration::from_secs_f64(secs)))
                })
                .collect();
            spin_wall(Duration::from_secs_f64(num("--secs", 3.0)));
            for w in workers {
                let _ = w.join();
            }
            say("done");
        }
        "burst" => {
            let count = num("--count", 1000.0) as usize;
            let cpu = Duration::from_secs_f64(num("--ms", 5.0) / 1000.0);
            let pause = Duration::from_secs_f64(num("--pause-ms", 0.0) / 1000.0);
            let until_stop = UNTIL_STOP.load(Ordering::Relaxed);
            let mut count = if until_stop { 0 } else { count };
            let mut i = 0;
            while if until_stop { !stopped() } else { i < count } {
                i += 1;
                if until_stop {
                    count = i;
                }
                // SAFETY: single-threaded here; the child only burns CPU and calls _exit.
                match unsafe { libc::fork() } {
                    0 => {
                        // Not the listener: the child belongs to the parent's instance by ancestry.
                        unsafe { libc::close(listener.as_raw_fd()) };
                        spin_cpu(cpu);
                        unsafe { libc::_exit(0) };
                    }
                    -1 => fail("fork failed"),
                    child => {
                        let mut status = 0;
                        unsafe { libc::waitpid(child, &mut status, 0) };
                        std::thread::sleep(pause);
                    }
                }
            }
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
            let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
            say(&format!(
                "done children={count} children_cpu_ns={}",
                tv(ru.ru_utime) + tv(ru.ru_stime)
            ));
        }
        "name" => {
            spin_cpu(Duration::from_secs_f64(num("--ms", 300.0) / 1000.0));
            say("done");
        }
        "write" => {
            let file = flag("--file").unwrap_or_else(|| usage("--file"));
            let mb = num("--mb", 64.0) as usize;
            let secs = num("--secs", 0.0);
            let bytes = write_file(
                &file,
                mb,
                args.iter().any(|a| a == "--direct"),
                Duration::from_secs_f64(secs),
            );
            if args.iter().any(|a| a == "--sync") {
                unsafe { libc::sync() };
            }
            say(&format!("done bytes={bytes}"));
        }
        "run" => {
            let cmd_args: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(1).collect();
            let Some((prog, rest)) = cmd_args.split_first() else {
                usage("run -- CMD")
            };
            // The child's output must not mix with ours (the test reads our stdout).
            let status = std::process::Command::new(prog)
                .args(rest)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .status()
                .unwrap_or_else(|e| fail(&format!("run {prog}: {e}")));
            // The kernel's own count of what the child, and this process (paging its own
            // binary in after a cache drop), read from storage (read_bytes, 512-byte blocks).
            let inblock = |who| {
                let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
                unsafe { libc::getrusage(who, &mut ru) };
                ru.ru_inblock as u64 * 512
            };
            say(&format!(
                "done status={} inblock_bytes={} self_inblock_bytes={}",
                status.code().unwrap_or(-1),
                inblock(libc::RUSAGE_CHILDREN),
                inblock(libc::RUSAGE_SELF)
            ));
        }
        "tcp-serve" => {
            let (rx, tx) = (num("--recv", 0.0) as u64, num("--send", 0.0) as u64);
            let conns = num("--conns", 1.0) as u64;
            let rounds = num("--rounds", 1.0) as u64;
            for _ in 0..conns {
                let (mut s, _) = listener
                    .accept()
                    .unwrap_or_else(|e| fail(&format!("accept: {e}")));
                exchange_rounds(&mut s, tx, rx, rounds);
                // Wait for the peer's close, so every connection ends the same way.
                let mut sink = [0u8; 64];
                while std::io::Read::read(&mut s, &mut sink).is_ok_and(|n| n > 0) {}
                close_and_wait(s);
            }
            say(&format!(
                "done conns={conns} rx={} tx={}",
                conns * rounds * rx,
                conns * rounds * tx
            ));
        }
        "tcp-client" => {
            let to = flag("--to").unwrap_or_else(|| usage("--to"));
            let (tx, rx) = (num("--send", 0.0) as u64, num("--recv", 0.0) as u64);
            let conns = num("--conns", 1.0) as u64;
            let rounds = num("--rounds", 1.0) as u64;
            for _ in 0..conns {
                let mut s = if args.iter().any(|a| a == "--defer-connect") {
                    deferred_connect(&to)
                } else {
                    std::net::TcpStream::connect(&to)
                        .unwrap_or_else(|e| fail(&format!("connect {to}: {e}")))
                };
                if args.iter().any(|a| a == "--read-after-close") {
                    read_after_close(s, tx, rx);
                    continue;
                }
                exchange_rounds(&mut s, tx, rx, rounds);
            }
            say(&format!(
                "done conns={conns} rx={} tx={}",
                conns * rounds * rx,
                conns * rounds * tx
            ));
        }
        "churn" => {
            // Still listening while the test compares: the process stays in its instance.
            if args.iter().any(|a| a == "--wait-go") {
                wait_for_line("go");
            }
            let _listener = churn(
                listener,
                num("--procs", 1000.0) as u64,
                num("--rate", 100.0),
                num("--rotate-every", 0.0) as u64,
                num("--send", 100.0) as usize,
                Duration::from_micros(num("--spin-us", 200.0) as u64),
            );
            wait_for_stdin_to_close();
            std::process::exit(0);
        }
        other => usage(other),
    }
    wait_for_stdin_to_close();
    drop(listener);
}

/// Stays alive (and idle) until the test is done with us.
fn wait_for_stdin_to_close() {
    if UNTIL_STOP.load(Ordering::Relaxed) {
        // The stdin thread reads it.
        while !STDIN_CLOSED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {
        line.clear();
    }
}

/// Exit codes of a churn child that could not connect or send.
const CHILD_CONNECT_FAILED: i32 = 4;
const CHILD_SEND_FAILED: i32 = 3;

/// Forks `procs` short-lived children at `rate` per second; each connects to this process's
/// listening port, sends `send` bytes, burns `spin` of CPU and exits. Every `rotate_every`
/// children (once they are all done) the process listens on a new port and closes the old one,
/// so it moves to another instance. Prints each port (`port N`) and at the end the ground
/// truth: children made, bytes received, this process's and its children's CPU.
fn churn(
    listener: TcpListener,
    procs: u64,
    rate: f64,
    rotate_every: u64,
    send: usize,
    spin: Duration,
) -> TcpListener {
    use std::io::{ErrorKind, Read as _};
    let mut listener = listener;
    let mut port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| fail(&format!("nonblocking: {e}")));
    let (mut made, mut running, mut received) = (0u64, 0u64, 0u64);
    // Children that could not connect, could not send, or ended otherwise (a signal).
    let mut failed = [0u64; 3];
    let mut received_before = 0u64;
    let mut rotated_at = 0u64;
    let mut conns: Vec<std::net::TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    loop {
        // Reap, accept and read whatever is ready.
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local; children only.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            running -= 1;
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => {}
                (true, CHILD_CONNECT_FAILED) => failed[0] += 1,
                (true, CHILD_SEND_FAILED) => failed[1] += 1,
                _ => failed[2] += 1,
            }
        }
        while let Ok((c, _)) = listener.accept() {
            c.set_nonblocking(true)
                .unwrap_or_else(|e| fail(&format!("nonblocking: {e}")));
            conns.push(c);
        }
        conns.retain_mut(|c| loop {
            match c.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => received += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("recv: {e}")),
            }
        });
        let idle = running == 0 && conns.is_empty();
        if made == procs && idle {
            break;
        }
        let rotate_now = rotate_every > 0 && made > 0 && made % rotate_every == 0;
        if rotate_now && made != rotated_at && made < procs && idle {
            rotated_at = made;
            // The new port first, so the process is never without a listener.
            let next =
                TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
            next.set_nonblocking(true)
                .unwrap_or_else(|e| fail(&format!("nonblocking: {e}")));
            say(&format!("port {port} rx={}", received - received_before));
            received_before = received;
            port = next.local_addr().map(|a| a.port()).unwrap_or(0);
            listener = next;
        }
        let rotating = rotate_now && made != rotated_at && made < procs;
        let due = made < procs && !rotating && t0.elapsed().as_secs_f64() * rate >= made as f64;
        if !due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        // SAFETY: this process has one thread; the child only connects, writes, spins and
        // leaves with _exit (no destructors, no stdio flush).
        match unsafe { libc::fork() } {
            0 => {
                // A failure says why on stderr (the test shows it) and in the exit code. Not
                // tried again: a connection that fails on loopback is a fault to see (one did
                // when the kernel's TCP iterator, run by probe, used a socket being freed).
                let code = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut s) => {
                        let data = vec![0x5au8; send];
                        match std::io::Write::write_all(&mut s, &data) {
                            Ok(()) => 0,
                            Err(e) => {
                                eprintln!("probe-workload: child: send to port {port}: {e}");
                                CHILD_SEND_FAILED
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("probe-workload: child: connect to port {port}: {e}");
                        CHILD_CONNECT_FAILED
                    }
                };
                spin_cpu(spin);
                unsafe { libc::_exit(code) };
            }
            -1 => fail("fork failed"),
            _ => {
                made += 1;
                running += 1;
            }
        }
    }
    let cpu = |who| {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct passed by pointer.
        unsafe { libc::getrusage(who, &mut ru) };
        let t = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
        t(ru.ru_utime) + t(ru.ru_stime)
    };
    say(&format!("port {port} rx={}", received - received_before));
    say(&format!(
        "done procs={made} failed={} failed_connect={} failed_send={} failed_other={} rx={received} self_cpu_ns={} children_cpu_ns={}",
        failed.iter().sum::<u64>(),
        failed[0],
        failed[1],
        failed[2],
        cpu(libc::RUSAGE_SELF),
        cpu(libc::RUSAGE_CHILDREN)
    ));
    listener
}

/// Writes `mb` MiB of non-zero data to `path` in 1 MiB writes (O_DIRECT with an aligned buffer,
/// or buffered); with a non-zero `min_time`, starts over at offset 0 until that much time
/// passed. Returns the bytes written.
fn write_file(path: &str, mb: usize, direct: bool, min_time: Duration) -> u64 {
    use std::os::unix::fs::OpenOptionsExt as _;
    const CHUNK: usize = 1 << 20;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(!direct);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts
        .open(path)
        .unwrap_or_else(|e| fail(&format!("open {path}: {e}")));
    // O_DIRECT needs a buffer aligned to the logical block size; 4096 covers every device.
    let layout = std::alloc::Layout::from_size_align(CHUNK, 4096).expect("layout");
    // SAFETY: the layout has a non-zero size; the buffer is filled before use and freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        fail("out of memory");
    }
    let chunk = unsafe { std::slice::from_raw_parts_mut(buf, CHUNK) };
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let t0 = Instant::now();
    let mut written = 0u64;
    loop {
        for i in 0..mb {
            let n = std::os::unix::fs::FileExt::write_at(&file, chunk, (i * CHUNK) as u64)
                .unwrap_or_else(|e| fail(&format!("write {path}: {e}")));
            if n != CHUNK {
                fail(&format!("short write to {path}: {n}"));
            }
            written += n as u64;
        }
        let done = if UNTIL_STOP.load(Ordering::Relaxed) {
            stopped()
        } else {
            t0.elapsed() >= min_time
        };
        if done {
            break;
        }
    }
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    written
}

/// `exchange` `rounds` times on one connection; between rounds, prints `round N` and waits for
/// the line `step` on stdin (a test collects in between).
fn exchange_rounds(s: &mut std::net::TcpStream, tx: u64, rx: u64, rounds: u64) {
    for round in 1..=rounds {
        exchange(s, tx, rx);
        if round == rounds {
            break;
        }
        say(&format!("round {round}"));
        wait_for_line("step");
    }
}

/// The TCP state of socket `fd` (tcp_info.tcpi_state).
fn tcp_state(fd: std::os::fd::RawFd) -> u8 {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the local `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if r != 0 {
        fail(&format!("TCP_INFO: {}", std::io::Error::last_os_error()));
    }
    info.tcpi_state
}

/// `tcp-client --defer-connect`: connect(2) to `to` (IPv4) with TCP_FASTOPEN_CONNECT. Where
/// net.ipv4.tcp_fastopen has the no-cookie client bit (0x4), it returns before the SYN is sent:
/// the socket stays in SYN_SENT, its initial sequence number picked and snd_una not yet set to
/// it, until the first write sends the SYN with the data. Prints `connecting state=S` (2 for
/// SYN_SENT) and waits for `step`.
fn deferred_connect(to: &str) -> std::net::TcpStream {
    use std::os::fd::FromRawFd as _;
    let addr: std::net::SocketAddrV4 = to
        .parse()
        .unwrap_or_else(|e| fail(&format!("--to {to}: {e}")));
    let os_err = |what: &str| fail(&format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: creates a descriptor this function owns (handed to the TcpStream below).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        os_err("socket");
    }
    let one: libc::c_int = 1;
    // SAFETY: the option value is the local `one`, with its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        os_err("TCP_FASTOPEN_CONNECT");
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the address is the local `sa`, with its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        os_err(&format!("connect {to}"));
    }
    say(&format!("connecting state={}", tcp_state(fd)));
    wait_for_line("step");
    // SAFETY: `fd` is the TCP socket created above, owned by nothing else.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}

/// `tcp-client --read-after-close` on one connection: the bytes queued in a socket that reached
/// TCP_CLOSE (the peer's FIN after our shutdown takes it to TIME_WAIT, which closes the full
/// socket while its descriptor stays open) are read only then, when the test says so.
fn read_after_close(mut s: std::net::TcpStream, tx: u64, rx: u64) {
    use std::io::{Read as _, Write as _};
    const TCP_CLOSE: u8 = 7;
    s.write_all(&vec![0u8; tx as usize])
        .unwrap_or_else(|e| fail(&format!("send: {e}")));
    s.shutdown(std::net::Shutdown::Write)
        .unwrap_or_else(|e| fail(&format!("shutdown: {e}")));
    let t0 = Instant::now();
    loop {
        let state = tcp_state(s.as_raw_fd());
        if state == TCP_CLOSE {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            fail(&format!("still in TCP state {state} after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    say("closed");
    wait_for_line("read");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| fail(&format!("read after close: {e}")));
    if got.len() as u64 != rx {
        fail(&format!("read {} bytes after close, want {rx}", got.len()));
    }
    say(&format!("read rx={rx}"));
    wait_for_line("step");
}

/// Reads stdin until the line `word` arrives (the test's go-ahead); fails if stdin closes first.
fn wait_for_line(word: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => fail(&format!("stdin closed before `{word}`")),
            Ok(_) if line.trim() == word => return,
            Ok(_) => {}
        }
    }
}

/// Sends `tx` bytes and receives exactly `rx` bytes on `s` (sending from another thread, so
/// neither side blocks on a full buffer).
fn exchange(s: &mut std::net::TcpStream, tx: u64, rx: u64) {
    let mut w = s
        .try_clone()
        .unwrap_or_else(|e| fail(&format!("clone: {e}")));
    let sender = std::thread::spawn(move || {
        let chunk = [0x5au8; 64 * 1024];
        let mut left = tx;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n])
                .unwrap_or_else(|e| fail(&format!("send: {e}")));
            left -= n as u64;
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < rx {
        let want = (rx - got).min(buf.len() as u64) as usize;
        match std::io::Read::read(s, &mut buf[..want]) {
            Ok(0) => fail(&format!("peer closed after {got} of {rx} bytes")),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => fail(&format!("recv: {e}")),
        }
    }
    let _ = sender.join();
}

/// Closes a connection the peer already closed and returns once the kernel is done with it
/// (the peer acknowledged our FIN: LAST_ACK to CLOSE), so `done` comes after every state change
/// a test counts. SO_LINGER makes close(2) wait for that, up to 10 s.
fn close_and_wait(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 10,
    };
    // SAFETY: setsockopt reads `linger` (of the size passed) on a socket this function owns.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        fail(&format!("SO_LINGER: {}", std::io::Error::last_os_error()));
    }
    drop(s);
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn usage(what: &str) -> ! {
    fail(&format!("bad or missing argument: {what}"))
}

fn fail(msg: &str) -> ! {
    eprintln!("probe-workload: {msg}");
    std::process::exit(2)
}

/// Never sleeps for `d` of wall time.
fn spin_wall(d: Duration) {
    let t0 = Instant::now();
    let mut x = 0u64;
    while t0.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Burns `d` of this thread's CPU time.
fn spin_cpu(d: Duration) {
    let t0 = thread_cpu();
    let mut x = 0u64;
    while thread_cpu() - t0 < d {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin_to(cpu: usize) {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            fail("sched_setaffinity failed");
        }
    }
}

fn set_comm(bytes: &[u8]) {
    let mut name = [0u8; 16];
    let n = bytes.len().min(15);
    name[..n].copy_from_slice(&bytes[..n]);
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or_else(|_| usage("--hex")))
        .collect()
}
