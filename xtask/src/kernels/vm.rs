//! Boots a kernel under `qemu-system-x86_64 -accel tcg` and runs one shell command in it, on
//! the host's own files.
//!
//! The guest is the host's root, shared read-only over virtio-9p, with fresh proc, sys, dev,
//! tmp and run mounts, tracefs, debugfs, bpffs and cgroup2, and the work tree shared
//! read-write at its own path (so results and build outputs land on the host). Software
//! emulation, because this machine kind's `/dev/kvm` is a paravirtual KVM that runs only its
//! own kernels. The initramfs is busybox plus the kernel's own virtio/9p modules.
use std::{
    io::BufReader,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::image::Kernel;

/// Marks around the command's output on the guest's console.
const START: &str = "@@APM-GUEST-START@@";
const EXIT: &str = "@@APM-GUEST-EXIT=";

/// The guest's /init: mounts, modules, the host's root, then the command in a chroot.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" || echo "insmod $m failed"; done
R=/mnt; P9=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $P9,ro,cache=loose host $R || { echo "mounting the host's root over 9p failed"; poweroff -f; }
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mount -t tmpfs tmp $R/tmp; mount -t tmpfs run $R/run; mount -t tmpfs vartmp $R/var/tmp
mount -t tmpfs boot $R/boot && cp /config $R/boot/config-$(uname -r)
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts pts $R/dev/pts; mount -t tmpfs shm $R/dev/shm
mount -t tracefs tracefs $R/sys/kernel/tracing; mount -t debugfs debugfs $R/sys/kernel/debug
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null; mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
WORK=$(cat /apm-work); mkdir -p "$R$WORK" 2>/dev/null  # a tree under /tmp or /run: on the fresh tmpfs
mount -t 9p -o $P9 work "$R$WORK" || { echo "mounting the work tree failed"; poweroff -f; }
ip link set lo up
echo "@@APM-GUEST-START@@"
chroot $R /bin/sh -c "cd '$WORK' && . '$WORK/$(cat /apm-env)' && sh '$WORK/$(cat /apm-cmd)'"
echo "@@APM-GUEST-EXIT=$?@@"; sync; poweroff -f
"#;

/// How a guest run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status; `None` when it never finished (boot failure, timeout).
    pub status: Option<i32>,
    /// The command's output (the console between the marks).
    pub output: String,
    /// The whole console, for a boot that went wrong.
    pub console: String,
    pub elapsed: Duration,
}

/// Settings of one boot.
pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    /// The work tree (shared read-write at the same path).
    pub work: &'a Path,
    /// Shell script to run, relative to `work`.
    pub script: &'a str,
    /// Shell file of `export` lines sourced first, relative to `work`.
    pub env: &'a str,
    pub memory_mb: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Prefix of the live output lines.
    pub label: &'a str,
}

/// Boots, runs the script, powers off. Guest output is echoed live to stderr.
pub fn boot(b: &Boot<'_>) -> Result<Outcome> {
    let dir = tempdir("apm-vm")?;
    let result = boot_in(b, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn boot_in(b: &Boot<'_>, dir: &Path) -> Result<Outcome> {
    let root = dir.join("initramfs");
    for sub in ["bin", "mods", "mnt", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    for (i, module) in b.kernel.modules.iter().enumerate() {
        let data = decompressed_module(module)?;
        std::fs::write(root.join(format!("mods/{:02}.ko", i + 1)), data)?;
    }
    std::fs::copy(&b.kernel.config, root.join("config"))?;
    // Not named like the 9p mount tags: busybox mount takes an existing file for a loop image.
    std::fs::write(root.join("apm-work"), b.work.display().to_string())?;
    std::fs::write(root.join("apm-cmd"), b.script)?;
    std::fs::write(root.join("apm-env"), b.env)?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let initrd = dir.join("initrd.gz");
    let pack = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    );
    crate::util::run(Command::new("sh").args(["-c", &pack]))?;

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-M", "q35"])
        .args(["-m", &b.memory_mb.to_string(), "-smp", &b.cpus.to_string()])
        .args(["-nic", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&b.kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off rdinit=/init",
        ])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=work,security_model=none,multidevs=remap",
            b.work.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let err_tx = tx.clone();
    let readers = [
        std::thread::spawn(move || forward(BufReader::new(stdout), &tx)),
        std::thread::spawn(move || forward(BufReader::new(stderr), &err_tx)),
    ];
    let mut console = String::new();
    let mut output = String::new();
    let mut status = None;
    let mut inside = false;
    let deadline = started + b.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.replace('\r', "");
                console.push_str(&line);
                console.push('\n');
                if line.contains(START) {
                    inside = true;
                    continue;
                }
                if let Some(rest) = line.split(EXIT).nth(1) {
                    status = rest.trim_end_matches('@').parse().ok();
                    inside = false;
                    continue;
                }
                if inside {
                    eprintln!("[{}] {line}", b.label);
                    output.push_str(&line);
                    output.push('\n');
                }
                if hopeless_lockup(&line) {
                    eprintln!("[{}] a vCPU is locked up: stopping qemu", b.label);
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    eprintln!(
                        "[{}] timed out after {:?}: stopping qemu",
                        b.label, b.timeout
                    );
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    if status.is_none() && console.trim().is_empty() {
        bail!("qemu printed nothing: is qemu-system-x86_64 working?");
    }
    Ok(Outcome {
        status,
        output,
        console,
        elapsed: started.elapsed(),
    })
}

fn forward(reader: impl std::io::BufRead, tx: &mpsc::Sender<String>) {
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        if tx
            .send(String::from_utf8_lossy(&line).into_owned())
            .is_err()
        {
            break;
        }
    }
}

/// A module file as the guest's busybox `insmod` needs it: uncompressed.
fn decompressed_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<&[&str]> = if name.ends_with(".xz") {
        Some(&["xz", "-dc"])
    } else if name.ends_with(".zst") {
        Some(&["zstd", "-qdc"])
    } else if name.ends_with(".gz") {
        Some(&["gzip", "-dc"])
    } else {
        None
    };
    match tool {
        None => Ok(std::fs::read(path)?),
        Some(tool) => {
            let out = Command::new(tool[0])
                .args(&tool[1..])
                .arg(path)
                .output()
                .with_context(|| format!("running {}", tool[0]))?;
            if !out.status.success() {
                bail!("{} {} failed", tool[0], path.display());
            }
            Ok(out.stdout)
        }
    }
}

fn tempdir(prefix: &str) -> Result<std::path::PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The guest kernel's oops line when it died of running kernel text that was being patched:
/// - an `int3` trap inside kernel text: the breakpoint x86 kernels put on an instruction while
///   they patch it (jump labels, static calls, ftrace), removed before the trap was taken;
/// - a kernel-mode instruction fetch at address 0 (`RIP: 0010:0x0`), reached by a call from
///   kernel code (seen once on 6.1: `inet_recvmsg` calling `tcp_recvmsg` while the agent's
///   kprobe on it was attached or removed, i.e. its ftrace call site rewritten).
///
/// Real CPUs serialise on the kernel's sync IPIs; multi-threaded TCG can still run the stale
/// translation on another vCPU. Any other oops is not this and is not retried (and a real
/// kernel bug of this shape would show again on the one retry).
pub fn emulator_text_poke_fault(console: &str) -> Option<String> {
    if let Some(fault) = null_call_fault(console) {
        return Some(fault);
    }
    if let Some(lockup) = both_vcpus_locked_up(console) {
        return Some(lockup);
    }
    let mut lines = console.lines();
    let oops = lines.find(|l| l.contains("Oops: int3"))?;
    // The trap must be in kernel text (`RIP: 0010:`), not a user-space breakpoint.
    let rip = lines.find(|l| l.contains("RIP: "))?;
    rip.contains("RIP: 0010:").then(|| {
        let at = rip.split("RIP: 0010:").nth(1).unwrap_or("").trim();
        let from = oops.find("Oops:").unwrap_or(0);
        format!("{} at {at}", oops[from..].trim())
    })
}

/// Soft lockups of both vCPUs at once (seen once on 6.1, in the `ebpf-time` step that
/// attaches and detaches three capture paths' trampolines in turn: the agent stuck on one vCPU
/// and the load generator on the other for minutes, neither in a loop of the agent's bounded
/// programs): the shape of a `text_poke` sync waiting forever on a vCPU that runs a stale
/// translation. One vCPU alone stuck is not this.
fn both_vcpus_locked_up(console: &str) -> Option<String> {
    let stuck = |cpu: &str| {
        console
            .lines()
            .find(|l| l.contains("watchdog: BUG: soft lockup - CPU#") && l.contains(cpu))
    };
    let first = stuck("CPU#0 stuck")?;
    stuck("CPU#1 stuck")?;
    let from = first.find("watchdog:").unwrap_or(0);
    Some(format!("both vCPUs soft-locked ({})", first[from..].trim()))
}

/// A soft lockup this long means the guest will not finish: stop waiting for the timeout.
pub fn hopeless_lockup(line: &str) -> bool {
    let Some(rest) = line.split("soft lockup - CPU#").nth(1) else {
        return false;
    };
    rest.split("stuck for ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|secs| secs >= 120)
}

/// The `RIP: 0010:0x0` case of [`emulator_text_poke_fault`], with the caller from the trace.
fn null_call_fault(console: &str) -> Option<String> {
    let mut lines = console.lines();
    lines.find(|l| l.contains("#PF: supervisor instruction fetch in kernel mode"))?;
    lines
        .find(|l| l.contains("RIP: "))?
        .contains("RIP: 0010:0x0")
        .then_some(())?;
    let caller = lines
        .skip_while(|l| !l.contains("Call Trace:"))
        .find(|l| l.contains("+0x"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?");
    Some(format!("kernel-mode call to address 0 from {caller}"))
}

#[cfg(test)]
mod tests {
    use super::emulator_text_poke_fault;

    #[test]
    fn both_vcpus_locked_up_is_recognised_and_one_alone_is_not() {
        let both = "[  160.541475] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [apm-agent:262]\n\
                    [  180.633360] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [curl:268]\n";
        assert_eq!(
            emulator_text_poke_fault(both).as_deref(),
            Some(
                "both vCPUs soft-locked (watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [apm-agent:262])"
            )
        );
        let one =
            "[  160.541475] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [apm-agent:262]\n";
        assert_eq!(emulator_text_poke_fault(one), None);
        assert!(!super::hopeless_lockup(
            "[  160.5] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [apm-agent:262]"
        ));
        assert!(super::hopeless_lockup(
            "[  300.5] watchdog: BUG: soft lockup - CPU#0 stuck for 156s! [apm-agent:262]"
        ));
        assert!(!super::hopeless_lockup("booted fine"));
    }

    #[test]
    fn a_call_to_address_zero_from_kernel_text_is_recognised() {
        let console = "[  119.440923] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                       [  119.441788] #PF: supervisor instruction fetch in kernel mode\n\
                       [  119.441788] RIP: 0010:0x0\n\
                       [  119.441788] Call Trace:\n\
                       [  119.441788]  <TASK>\n\
                       [  119.441788]  inet_recvmsg+0x52/0x130\n\
                       [  119.441788]  __sys_recvfrom+0xcb/0x140\n";
        assert_eq!(
            emulator_text_poke_fault(console).as_deref(),
            Some("kernel-mode call to address 0 from inet_recvmsg+0x52/0x130")
        );
        // A NULL data dereference is not it.
        let data = "[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000010\n\
                    [ 1.0] #PF: supervisor read access in kernel mode\n\
                    [ 1.1] RIP: 0010:f+0x1/0x2\n";
        assert_eq!(emulator_text_poke_fault(data), None);
    }

    #[test]
    fn an_int3_oops_in_kernel_text_is_recognised() {
        let console = "[   29.120235] Oops: int3: 0000 [#1] SMP NOPTI\n\
                       [   29.122548] CPU: 0 UID: 0 PID: 146 Comm: apm-listener\n\
                       [   29.124576] RIP: 0010:sock_recvmsg+0x5a/0xa0\n";
        assert_eq!(
            emulator_text_poke_fault(console).as_deref(),
            Some("Oops: int3: 0000 [#1] SMP NOPTI at sock_recvmsg+0x5a/0xa0")
        );
    }

    #[test]
    fn other_oopses_are_not() {
        let page_fault = "[ 1.0] Oops: general protection fault [#1]\n[ 1.1] RIP: 0010:f+0x1/0x2\n";
        assert_eq!(emulator_text_poke_fault(page_fault), None);
        let user = "[ 1.0] Oops: int3: 0000 [#1]\n[ 1.1] RIP: 0033:0x7f00\n";
        assert_eq!(emulator_text_poke_fault(user), None);
        assert_eq!(emulator_text_poke_fault("booted fine\n"), None);
    }
}
