//! Workloads for the kernel tests: processes whose CPU use the test knows independently of
//! probe. Each listens on a loopback TCP port (so it is its own instance, `<comm>:<port>`),
//! prints `ready pid=<pid> port=<port>`, does its work, prints `done ...` with what it measured
//! itself, then stays alive until its stdin closes, so the test can compare at leisure.
//!
//!   spin  [--secs S] [--threads N --thread-secs T] [--cpu C]   busy main thread (+ N workers that exit)
//!   burst --count N --ms M                                     N children, one after another, each burning M ms of CPU
//!   name  --hex HEX [--ms M]                                   set comm to the given bytes, burn M ms

use std::{
    io::{BufRead as _, Write as _},
    net::TcpListener,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

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

    if let Some(hex) = flag("--hex") {
        set_comm(&decode_hex(&hex));
    }
    if let Some(cpu) = flag("--cpu") {
        pin_to(cpu.parse().unwrap_or_else(|_| usage("--cpu")));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
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
            for _ in 0..count {
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
        other => usage(other),
    }
    // Stay alive (and idle) until the test is done with us.
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {
        line.clear();
    }
    drop(listener);
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
