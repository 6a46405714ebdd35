//! `cargo xtask vm`: boot a Debian kernel package under qemu and run one command in it.
//!
//! The guest runs the host's own root filesystem, read-only over virtio-9p with a throwaway
//! tmpfs overlay on top, so everything built here (`probe`, the test binaries) runs there
//! unchanged, wherever it is (/tmp included: it is the host's, writable through the overlay);
//! /proc, /sys, /dev, /run, tracefs, debugfs, bpffs and cgroup2 are the guest's own. The kernel's modules are shared too, so `modprobe` (and the kernel's module autoloading)
//! works. Optional: a fresh ext4 disk (virtio-blk) mounted at a host path (block IO needs a real
//! disk, not the overlay's tmpfs), and host directories shared read-write at their own path.
//!
//! The command's output (stdout and stderr) comes back on the guest's second serial port and is
//! streamed; its exit status on the first (the kernel console, kept in a log file that is
//! printed when the guest dies without one).
//!
//! Kernels come from Debian's archive (`apt-get download` + `dpkg -x`, nothing installed on the
//! host), cached under target/vm/kernels. qemu uses TCG, not KVM, unless `kvm_intel` or
//! `kvm_amd` drives /dev/kvm: on machines whose /dev/kvm is a nested PVM hypervisor, stock kernels
//! do not run under KVM at all.
//!
//! Over 500 lines: booting a guest is one sequence (fetch and unpack the kernel package, the
//! initramfs, qemu's command line, the guest's init script, streaming and the exit status) that
//! reads best in order.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{run::root, setup};

/// Debian packages the VM runner needs on the host.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "zstd",
    "xz-utils",
    "e2fsprogs",
];

/// Modules the guest needs before it can reach the host's root filesystem and the disk.
const BOOT_MODULES: &[&str] = &[
    "virtio_pci",
    "9p",
    "9pnet_virtio",
    "overlay",
    "virtio_blk",
    "ext4",
];

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Debian kernel ABI name, e.g. `6.1.0-57-amd64` (package linux-image-KVER[-unsigned]).
    pub kernel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Wall-clock limit for the whole guest run.
    pub timeout: Duration,
    /// A fresh ext4 disk of `.1` MiB mounted at host path `.0` in the guest.
    pub disk: Option<(PathBuf, u32)>,
    /// Host directories mounted read-write at the same path in the guest.
    pub shares: Vec<PathBuf>,
    /// The command's working directory in the guest.
    pub cwd: PathBuf,
    /// Environment of the command (besides PATH and HOME).
    pub env: Vec<(String, String)>,
    /// Prefix for each streamed output line (empty: print the lines as they are).
    pub prefix: String,
}

impl Vm {
    pub fn new(kernel: &str) -> Self {
        Self {
            kernel: kernel.to_string(),
            memory_mib: 2048,
            cpus: 2,
            timeout: Duration::from_secs(900),
            disk: None,
            shares: Vec::new(),
            cwd: root(),
            env: Vec::new(),
            prefix: String::new(),
        }
    }
}

/// How a guest run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status in the guest.
    pub status: i32,
    /// Everything the command printed.
    pub output: String,
    pub elapsed: Duration,
}

/// Boots the kernel and runs `cmd`. Errors if the guest cannot boot, times out or dies without
/// reporting the command's exit status (with the tail of its console log); a command that fails
/// is an `Ok` with a non-zero status.
pub fn run(vm: &Vm, cmd: &[String]) -> Result<Outcome> {
    if cmd.is_empty() {
        bail!("no command to run in the VM");
    }
    setup::packages(PACKAGES)?;
    let kernel = Kernel::fetch(&vm.kernel)?;
    let work = WorkDir::new(&vm.kernel)?;
    let initramfs = work.path.join("initramfs.cpio");
    build_initramfs(vm, &kernel, cmd, &work.path.join("ir"), &initramfs)?;
    let disk = match &vm.disk {
        Some((_, mib)) => Some(make_disk(&work.path.join("disk.img"), *mib)?),
        None => None,
    };
    let console = work.path.join("console.log");
    let mut qemu = qemu_command(vm, &kernel, &initramfs, disk.as_deref(), &console);
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    // Stream the command's output (the guest's ttyS1) line by line, and keep it.
    let stdout = child.stdout.take().context("qemu stdout")?;
    let prefix = vm.prefix.clone();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            println!("{prefix}{line}");
            all.push_str(line);
            all.push('\n');
        }
        all
    });
    let stderr = child.stderr.take().context("qemu stderr")?;
    let errors = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > vm.timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let output = reader.join().unwrap_or_default();
    let qemu_errors = errors.join().unwrap_or_default();
    let log = fs::read_to_string(&console).unwrap_or_default();
    let tail = tail_lines(&log, 40);
    if timed_out {
        bail!(
            "the {} guest did not finish within {} s; console tail:\n{tail}",
            vm.kernel,
            vm.timeout.as_secs()
        );
    }
    if let Some(why) = log
        .lines()
        .find_map(|l| l.split_once(INIT_FAILED).map(|(_, w)| w.trim()))
    {
        bail!(
            "the {} guest failed to start the command: {why}\nconsole tail:\n{tail}",
            vm.kernel
        );
    }
    match exit_status(&log) {
        Some(status) => Ok(Outcome {
            status,
            output,
            elapsed,
        }),
        None => bail!(
            "the {} guest stopped without reporting the command's exit status (kernel panic, \
             failed mount, qemu error?)\nqemu: {}\nconsole tail:\n{tail}",
            vm.kernel,
            qemu_errors.trim()
        ),
    }
}

/// The marker the guest's init prints on the console after the command.
const EXIT_MARKER: &str = "PROBE_VM_EXIT_STATUS=";
/// The marker printed when the guest's init itself fails (before the command).
const INIT_FAILED: &str = "PROBE_VM_INIT_FAILED:";

fn exit_status(console: &str) -> Option<i32> {
    console
        .lines()
        .filter_map(|l| l.split_once(EXIT_MARKER).map(|(_, v)| v.trim_start()))
        // The kernel may print on the same console line right after the number (seen: "…=0[
        // 238.8] sysrq: Power Off"), so only the leading digits count.
        .filter_map(|v| {
            let end = v
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
                .map_or(v.len(), |(i, _)| i);
            v[..end].parse().ok()
        })
        .next_back()
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A kernel package unpacked into the cache.
pub struct Kernel {
    pub release: String,
    /// Unpacked package (boot/, lib/modules/).
    pub root: PathBuf,
    /// What qemu boots: the uncompressed ELF vmlinux (PVH entry, ~5 s faster under TCG) where
    /// it could be extracted, else the bzImage.
    pub image: PathBuf,
}

impl Kernel {
    pub fn cache_dir(release: &str) -> PathBuf {
        root().join("target/vm/kernels").join(release)
    }

    /// Downloads and unpacks `linux-image-RELEASE-unsigned` (or `linux-image-RELEASE`) once.
    pub fn fetch(release: &str) -> Result<Self> {
        if release.is_empty() || release.contains(['/', ' ']) {
            bail!("{release:?} is not a Debian kernel release such as 6.1.0-57-amd64");
        }
        let dir = Self::cache_dir(release);
        let done = dir.join(".complete");
        if !done.exists() {
            println!("xtask vm: fetching Debian's kernel {release} (first use only)");
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            let debs = dir.join("debs");
            fs::create_dir_all(&debs)?;
            download(release, &debs)?;
            let deb = fs::read_dir(&debs)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .context("apt-get download left no .deb")?;
            let unpacked = dir.join("root");
            setup::sh("dpkg", &["-x", path_str(&deb)?, path_str(&unpacked)?])?;
            fs::remove_dir_all(&debs)?;
            // The package's postinst would run depmod; modprobe needs its index.
            setup::sh("depmod", &["-b", path_str(&unpacked)?, release])?;
            let bzimage = unpacked.join(format!("boot/vmlinuz-{release}"));
            match extract_vmlinux(&bzimage) {
                Ok(elf) => fs::write(dir.join("vmlinux"), elf)?,
                Err(e) => println!("  no ELF vmlinux ({e:#}); booting the bzImage (slower)"),
            }
            fs::write(&done, "")?;
        }
        let root = dir.join("root");
        let config = fs::read_to_string(root.join(format!("boot/config-{release}")))
            .with_context(|| format!("the {release} package has no boot/config-{release}"))?;
        let vmlinux = dir.join("vmlinux");
        // PVH entry (booting the ELF directly) needs CONFIG_PVH.
        let image = if vmlinux.exists() && config.lines().any(|l| l == "CONFIG_PVH=y") {
            vmlinux
        } else {
            root.join(format!("boot/vmlinuz-{release}"))
        };
        Ok(Self {
            release: release.to_string(),
            root,
            image,
        })
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn download(release: &str, into: &Path) -> Result<()> {
    let names = [
        format!("linux-image-{release}-unsigned"),
        format!("linux-image-{release}"),
    ];
    let try_all = || {
        names.iter().any(|name| {
            Command::new("apt-get")
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", name])
                .current_dir(into)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    };
    if try_all() {
        return Ok(());
    }
    // The package lists may be missing or stale (a fresh machine): refresh them once.
    setup::apt_update()?;
    if try_all() {
        return Ok(());
    }
    bail!(
        "cannot download {} nor {} from the configured apt repositories; \
         `apt-cache search linux-image-` lists the kernels they offer",
        names[0],
        names[1]
    )
}

/// The ELF kernel inside a bzImage: the first compressed stream (xz, zstd or gzip) that
/// decompresses to an ELF file.
fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let formats: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    for (magic, tool, args) in formats {
        let mut from = 0;
        while let Some(pos) = find(&data[from..], magic).map(|p| p + from) {
            if let Some(elf) = decompress(tool, args, &data[pos..]) {
                return Ok(elf);
            }
            from = pos + 1;
        }
    }
    bail!("no compressed ELF kernel found in {}", bzimage.display())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Output of `tool args` fed with `input`, if it starts like an ELF file (the tools may fail on
/// the bytes that follow the stream; what they wrote before counts).
fn decompress(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().ok()?;
    let _ = feeder.join();
    out.stdout.starts_with(b"\x7fELF").then_some(out.stdout)
}

/// A scratch directory for one guest run, removed afterwards.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(kernel: &str) -> Result<Self> {
        let path = root()
            .join("target/vm/run")
            .join(format!("{kernel}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A sparse raw disk image with a fresh ext4 filesystem.
fn make_disk(path: &Path, mib: u32) -> Result<PathBuf> {
    let f = fs::File::create(path)?;
    f.set_len(u64::from(mib) << 20)?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "probe-vm", path_str(path)?])
        .output()
        .context("cannot run mkfs.ext4 (package e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(path.to_path_buf())
}

/// Single-quotes a word for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The initramfs: static busybox, the boot modules (decompressed, in dependency order) and an
/// init that mounts the host's root and switches to it.
fn build_initramfs(vm: &Vm, kernel: &Kernel, cmd: &[String], dir: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("modules"))?;
    for d in ["dev", "proc", "sys", "lower", "upper", "newroot"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("no /bin/busybox (package busybox-static)")?;
    let mut order = Vec::new();
    for module in BOOT_MODULES {
        for path in module_files(kernel, module)? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("module file name")?;
            let plain = name
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            if order.contains(&plain) {
                continue;
            }
            let bytes = module_bytes(&path)?;
            fs::write(dir.join("modules").join(&plain), bytes)?;
            order.push(plain);
        }
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;

    let mut mounts = String::new();
    if let Some((at, _)) = &vm.disk {
        let at = quote(path_str(at)?);
        mounts.push_str(&format!(
            "mkdir -p $R{at} && mount -t ext4 /dev/vda $R{at} || fail \"cannot mount the disk at {at}\"\n"
        ));
    }
    for (i, share) in vm.shares.iter().enumerate() {
        let at = quote(path_str(share)?);
        mounts.push_str(&format!(
            "mkdir -p $R{at} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none share{i} $R{at} || fail \"cannot mount share {at}\"\n"
        ));
    }
    let init = INIT
        .replace("@KVER@", &kernel.release)
        .replace("@MOUNTS@", &mounts);
    write_executable(&dir.join("init"), &init)?;

    let mut stage2 = String::from(STAGE2_HEAD);
    for (k, v) in &vm.env {
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad environment variable name {k:?}");
        }
        stage2.push_str(&format!("export {k}={}\n", quote(v)));
    }
    stage2.push_str(&format!(
        "cd {} || fail \"no directory\"\n",
        quote(path_str(&vm.cwd)?)
    ));
    let words: Vec<String> = cmd.iter().map(|w| quote(w)).collect();
    stage2.push_str(&format!(
        "{} >/dev/ttyS1 2>&1 </dev/null\n",
        words.join(" ")
    ));
    stage2.push_str(STAGE2_TAIL);
    write_executable(&dir.join("stage2"), &stage2)?;

    // newc archive of the directory (the kernel takes it uncompressed).
    let list = Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(dir)
        .output()
        .context("cannot run cpio (package cpio)")?;
    if !list.status.success() {
        bail!("cpio failed: {}", String::from_utf8_lossy(&list.stderr));
    }
    fs::write(out, list.stdout)?;
    Ok(())
}

/// The files (dependencies first) that loading `module` takes; none if it is built in.
fn module_files(kernel: &Kernel, module: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("modprobe")
        .args(["-d", path_str(&kernel.root)?, "-S", &kernel.release])
        .args(["--show-depends", module])
        .output()
        .context("cannot run modprobe (package kmod)")?;
    if !out.status.success() {
        bail!(
            "module {module} is not in the {} package: {}",
            kernel.release,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| PathBuf::from(p.trim()))
        .collect())
}

fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .args(["-dc", path_str(path)?])
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn qemu_command(
    vm: &Vm,
    kernel: &Kernel,
    initramfs: &Path,
    disk: Option<&Path>,
    console: &Path,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    if kvm_usable() {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // One host thread for all vCPUs. With one thread per vCPU (MTTCG), a guest that patches
        // its own code while another vCPU runs it (a static key flipping: probe turns the
        // kernel's BPF statistics on and off, attaches and detaches sched_switch) livelocked:
        // both vCPUs looped on the int3 of text_poke_bp in bpf_trace_run4 with interrupts off,
        // executing a stale translation of the patched bytes (seen on 6.1, about once in six
        // test runs). Round-robin vCPUs see code changes at once.
        c.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
    }
    c.args([
        "-machine",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]);
    c.args([
        "-m",
        &vm.memory_mib.to_string(),
        "-smp",
        &vm.cpus.to_string(),
    ]);
    if Path::new(QBOOT).exists() {
        c.args(["-bios", QBOOT]);
    }
    c.arg("-kernel").arg(&kernel.image);
    c.arg("-initrd").arg(initramfs);
    c.args([
        "-append",
        "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off rdinit=/init",
    ]);
    c.arg("-serial").arg(format!("file:{}", console.display()));
    c.args([
        "-chardev",
        "stdio,id=out,signal=off",
        "-serial",
        "chardev:out",
    ]);
    let mut fsdev = |id: &str, path: &Path, extra: &str, tag: &str| {
        c.arg("-fsdev").arg(format!(
            "local,id={id},path={},security_model=none{extra}",
            path.display()
        ));
        c.arg("-device")
            .arg(format!("virtio-9p-pci,fsdev={id},mount_tag={tag}"));
    };
    fsdev(
        "fsroot",
        Path::new("/"),
        ",readonly=on,multidevs=remap",
        "hostroot",
    );
    fsdev("fsmods", &kernel.modules(), ",readonly=on", "modules");
    for (i, share) in vm.shares.iter().enumerate() {
        fsdev(&format!("fsshare{i}"), share, "", &format!("share{i}"));
    }
    if let Some(disk) = disk {
        c.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            disk.display()
        ));
    }
    // For debugging a guest, e.g. `-monitor unix:/tmp/mon,server,nowait` to read its registers.
    if let Ok(extra) = std::env::var("PROBE_VM_QEMU_ARGS") {
        c.args(extra.split_whitespace());
    }
    c
}

const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// KVM only where a real KVM module drives /dev/kvm (see the module docs).
fn kvm_usable() -> bool {
    match std::env::var("PROBE_VM_ACCEL").as_deref() {
        Ok("kvm") => return true,
        Ok("tcg") => return false,
        _ => {}
    }
    let writable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    writable
        && (Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// Stage 1, in the initramfs (busybox sh): boot modules, the host's root over 9p with a tmpfs
/// overlay, the guest's own kernel filesystems in it, then switch_root into it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
    echo "PROBE_VM_INIT_FAILED: $*" >/dev/ttyS0
    echo o >/proc/sysrq-trigger
    sleep 30
}
for m in $(cat /modules.order); do
    insmod /modules/$m || fail "insmod $m"
done
o9p="trans=virtio,version=9p2000.L,msize=512000,cache=none"
mount -t 9p -o ro,$o9p hostroot /lower || fail "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
mkdir -p $R/lib/modules/@KVER@
mount -t 9p -o ro,$o9p modules $R/lib/modules/@KVER@ || fail "cannot mount the modules"
@MOUNTS@
cp /stage2 $R/run/probe-vm-stage2 || fail "cp stage2"
exec switch_root $R /bin/sh /run/probe-vm-stage2
fail "switch_root"
"#;

/// Stage 2, PID 1 on the host's root (its /bin/sh): the command, then its exit status on the
/// console, then power off.
const STAGE2_HEAD: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
fail() {
    echo "PROBE_VM_INIT_FAILED: $*" >/dev/ttyS0
    echo o >/proc/sysrq-trigger
    sleep 30
}
hostname probe-vm 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null
# Device nodes that load their module when opened (/dev/loop-control) need udev or kmod's
# static nodes, which this guest has neither of: load those modules now.
modprobe -q loop 2>/dev/null
"#;

const STAGE2_TAIL: &str = r#"rc=$?
sync
echo "PROBE_VM_EXIT_STATUS=$rc" >/dev/ttyS0
echo o >/proc/sysrq-trigger
sleep 30
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_the_last_marker() {
        let log = "[    1.0] boot\nPROBE_VM_EXIT_STATUS=3\nPROBE_VM_EXIT_STATUS=0\r\n[ 9.9] reboot: Power down\n";
        assert_eq!(exit_status(log), Some(0));
        assert_eq!(exit_status("Kernel panic - not syncing\n"), None);
        assert_eq!(exit_status(&format!("{INIT_FAILED} overlay\n")), None);
        // The kernel's next message on the marker's line.
        let log = "PROBE_VM_EXIT_STATUS=0[  238.817481] sysrq: Power Off\n";
        assert_eq!(exit_status(log), Some(0));
        assert_eq!(exit_status("PROBE_VM_EXIT_STATUS=-1\n"), Some(-1));
        assert_eq!(exit_status("PROBE_VM_EXIT_STATUS=[ 1.0] x\n"), None);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn finds_magic() {
        assert_eq!(find(b"xxabcx", b"abc"), Some(2));
        assert_eq!(find(b"xxab", b"abc"), None);
    }
}
