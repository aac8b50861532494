//! `apm-agent check`: the preflight. Prints every kernel feature the agent needs as ok or
//! missing (and the optional ones), and fails with a clear message when the agent cannot run.
use std::{io, path::Path};

use crate::{
    ebpf::{
        LoadOptions, Probes,
        attach::TRACEPOINT_PROGRAMS,
        capture_path::CapturePath,
        features::{EndpointHooks, Features},
        tracefs,
    },
    privileges,
};

/// One line of the report.
#[derive(Debug)]
pub struct Item {
    pub name: String,
    pub ok: bool,
    pub required: bool,
    pub detail: String,
}

fn item(name: impl Into<String>, ok: bool, required: bool, detail: impl Into<String>) -> Item {
    Item {
        name: name.into(),
        ok,
        required,
        detail: detail.into(),
    }
}

/// Runs every check.
pub fn run_checks() -> Vec<Item> {
    let mut items = Vec::new();
    let caps = privileges::effective();
    let missing = privileges::missing(caps, &privileges::REQUIRED);
    let names: Vec<&str> = missing.iter().map(|n| n.name).collect();
    items.push(item(
        "privileges",
        missing.is_empty(),
        true,
        if missing.is_empty() {
            format!("CapEff={caps:#x}")
        } else {
            format!("missing {}", names.join(", "))
        },
    ));
    let bpf = bpf_syscall();
    items.push(item(
        "bpf() syscall",
        bpf.is_ok(),
        true,
        match &bpf {
            Ok(()) => "created and freed a test map".to_owned(),
            Err(e) => e.to_string(),
        },
    ));
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    items.push(item(
        "kernel BTF",
        btf.is_file(),
        true,
        btf.display().to_string(),
    ));
    let tracefs = tracefs::ensure();
    let tracefs_root = tracefs.as_ref().ok().map(|(root, _)| root.clone());
    items.push(item(
        "tracefs",
        tracefs.is_ok(),
        true,
        match &tracefs {
            Ok((root, tracefs::TracefsState::AlreadyMounted)) => format!("{}", root.display()),
            Ok((root, tracefs::TracefsState::MountedNow)) => {
                format!("mounted at {}", root.display())
            }
            Err(e) => format!("not mounted and mounting failed: {e}"),
        },
    ));
    for &(_, category, name) in TRACEPOINT_PROGRAMS {
        let present = tracefs_root
            .as_ref()
            .is_some_and(|root| root.join("events").join(category).join(name).is_dir());
        items.push(item(
            format!("tracepoint {category}/{name}"),
            present,
            true,
            if present { "present" } else { "absent" },
        ));
    }
    for name in BTF_TRACEPOINTS {
        let present = raw_tracepoint_in_btf(btf, name);
        items.push(item(
            format!("raw tracepoint {name} (BTF)"),
            present,
            false,
            if present {
                format!("btf_trace_{name} in kernel BTF")
            } else {
                format!("btf_trace_{name} not in kernel BTF")
            },
        ));
    }
    let attach = load_and_attach(CapturePath::Auto);
    items.push(item(
        "capture path",
        attach.is_ok(),
        true,
        match &attach {
            Ok(loaded) => format!("{}: {}", loaded.features.capture, loaded.reason),
            Err(e) => e.clone(),
        },
    ));
    if let Ok(loaded) = &attach {
        items.push(item("iovecs per call", true, false, loaded.iovecs.clone()));
    }
    // The fallback of this kernel, when auto chose the socket layer: does it load too?
    if let Ok(loaded) = &attach
        && loaded.features.capture.socket_layer()
    {
        let fallback = load_and_attach(CapturePath::Syscalls);
        items.push(item(
            "capture path syscalls (optional)",
            fallback.is_ok(),
            false,
            match &fallback {
                Ok(f) => format!(
                    "{} programs loaded, verified and attached (then detached); capture_path = \
                     syscalls forces it",
                    f.attached
                ),
                Err(e) => e.clone(),
            },
        ));
    }
    // The trampoline path, where auto chose another: does this kernel accept it too?
    if attach
        .as_ref()
        .map_or(true, |l| l.features.capture != CapturePath::SocketsFexit)
    {
        let fexit = load_and_attach(CapturePath::SocketsFexit);
        items.push(item(
            "capture path sockets-fexit (optional)",
            fexit.is_ok(),
            false,
            match &fexit {
                Ok(f) => format!(
                    "{} programs loaded, verified and attached (then detached); \
                     capture_path = sockets-fexit forces it",
                    f.attached
                ),
                Err(e) => e.clone(),
            },
        ));
    }
    if let Ok(loaded) = &attach {
        items.extend(feature_items(loaded.features));
    }
    items.push(item(
        "attach: capture + process programs, ring buffer",
        attach.is_ok(),
        true,
        match &attach {
            Ok(loaded) => format!(
                "{} programs loaded, verified and attached (then detached)",
                loaded.attached
            ),
            Err(e) => e.clone(),
        },
    ));
    let tls = attach
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|loaded| loaded.tls.clone());
    items.push(item(
        "attach: TLS uprobes (optional)",
        tls.is_ok(),
        false,
        tls.unwrap_or_else(|e| format!("{e}: no TLS plaintext")),
    ));
    let sw = perf_event_open(1, 0);
    items.push(item(
        "perf events: software cpu-clock",
        sw.is_ok(),
        true,
        sw.map_or_else(|e| e.to_string(), |()| "opened on CPU 0".to_owned()),
    ));
    let symbols = privileges::kernel_symbols_visible();
    items.push(item(
        "kernel symbol names (optional)",
        symbols,
        false,
        if symbols {
            "/proc/kallsyms shows addresses".to_owned()
        } else {
            format!(
                "/proc/kallsyms hides addresses: kernel frames stay unnamed without {}",
                privileges::KERNEL_SYMBOLS.name
            )
        },
    ));
    let hw = perf_event_open(0, 0);
    items.push(item(
        "perf events: hardware cycles (optional)",
        hw.is_ok(),
        false,
        hw.map_or_else(
            |e| format!("{e}: the software clock is used instead"),
            |()| "available".to_owned(),
        ),
    ));
    let kprobe = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    items.push(item(
        "kprobes (optional)",
        kprobe,
        false,
        if kprobe {
            "available: used for socket endpoints where the socket tracepoints are missing"
        } else {
            "absent (CONFIG_KPROBES off): tracepoints cover what the agent needs"
        },
    ));
    items
}

/// Prints the report; returns whether the agent can run.
pub fn report(items: &[Item]) -> bool {
    println!("apm-agent preflight");
    for i in items {
        let status = match (i.ok, i.required) {
            (true, _) => "[ok]     ",
            (false, true) => "[missing]",
            (false, false) => "[absent] ",
        };
        println!("  {status} {:<52} {}", i.name, i.detail);
    }
    let failed: Vec<&str> = items
        .iter()
        .filter(|i| i.required && !i.ok)
        .map(|i| i.name.as_str())
        .collect();
    if failed.is_empty() {
        println!("result: this machine can run apm-agent");
        true
    } else {
        println!(
            "result: apm-agent cannot run here: missing {}. Run as root (sudo) on Linux >= 5.8 with BTF.",
            failed.join(", ")
        );
        false
    }
}

/// The kernel differences the loader found, and what each costs where it is absent.
fn feature_items(f: Features) -> Vec<Item> {
    vec![
        item(
            "socket endpoints (optional)",
            f.endpoints != EndpointHooks::None,
            false,
            match f.endpoints {
                EndpointHooks::Tracepoints => "tracepoints sock_send_length/sock_recv_length",
                EndpointHooks::Fexit => {
                    "fexit on inet_, inet6_, unix_stream_sendmsg/recvmsg: TCP and unix sockets"
                }
                EndpointHooks::Kprobes => {
                    "kprobes tcp_sendmsg/tcp_recvmsg (no socket tracepoints before 6.4): TCP \
                     connections only"
                }
                EndpointHooks::None => {
                    "absent (no socket tracepoints, no kprobes): connections carry no \
                     endpoints (no same-host client/server pairing, port selectors see no \
                     local port of accepted connections), inherited sockets are not followed"
                }
            },
        ),
        item(
            "atomic fetch-add (optional)",
            f.fetch_add,
            false,
            if f.fetch_add {
                "records numbered with BPF atomic fetch-add"
            } else {
                "absent (5.12+): records numbered in two steps; two threads writing one \
                 socket at the same instant can cost that connection a needless reset"
            },
        ),
        item(
            "sched_process_exit group_dead (optional)",
            f.exit_group_dead.is_some(),
            false,
            match f.exit_group_dead {
                Some(offset) => format!("at offset {offset}"),
                None => "absent (added after 6.12): the thread-group leader's exit stands for the \
                         process's"
                    .to_owned(),
            },
        ),
        item(
            "sched_process_fork child_pid (optional)",
            f.fork_child_pid.is_some(),
            false,
            match f.fork_child_pid {
                Some(offset) => format!("at offset {offset}"),
                None => "absent: a forked child serving an inherited socket is named after \
                         itself only"
                    .to_owned(),
            },
        ),
    ]
}

/// Is `btf_trace_<name>` (the type behind a BTF raw tracepoint) in the kernel BTF?
fn raw_tracepoint_in_btf(btf: &Path, name: &str) -> bool {
    let needle = format!("btf_trace_{name}\0");
    std::fs::read(btf).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Where distributions put OpenSSL's libssl.
const SYSTEM_LIBSSL: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.3",
    "/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

/// What [`load_and_attach`] found.
struct Loaded {
    /// Programs attached.
    attached: usize,
    /// The TLS uprobes: what was hooked, or why not.
    tls: Result<String, String>,
    features: Features,
    /// Why this capture path.
    reason: String,
    /// Iovecs gathered per vectored call ([`crate::ebpf::Probes::iovecs_per_call`]).
    iovecs: String,
}

/// What [`Probes::load_tls`] verifies.
const TLS_PROGRAMS: &str = "10 programs verified (OpenSSL 6, Go crypto/tls 4)";

/// The tracepoints the capture paths use, through BTF.
const BTF_TRACEPOINTS: [&str; 5] = [
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
    "sys_enter",
    "sys_exit",
];

/// Attaches the programs of capture path `path` (their count), then loads the OpenSSL
/// uprobes and hooks the system's libssl when there is one (what happened, or why not).
fn load_and_attach(path: CapturePath) -> Result<Loaded, String> {
    let opts = LoadOptions {
        agent_tgid: std::process::id(),
        capture_bytes: 64,
        ring_buffer_bytes: 64 * 1024,
        wakeup_bytes: 4096,
        max_sockets: 16,
        listen: None,
        library_events: false,
        profiler: None,
    };
    let mut probes = Probes::load(&opts).map_err(|e| error_chain(&e))?;
    probes.attach_all(path).map_err(|e| error_chain(&e))?;
    let tls = probes
        .load_tls()
        .map_err(|e| error_chain(&e))
        .and_then(
            |()| match SYSTEM_LIBSSL.iter().map(Path::new).find(|p| p.exists()) {
                None => Ok(format!("{TLS_PROGRAMS}; no system libssl to hook")),
                Some(lib) => probes
                    .attach_tls(lib)
                    .map(|n| {
                        format!(
                            "{TLS_PROGRAMS}; {n} functions hooked in {} (then detached)",
                            lib.display()
                        )
                    })
                    .map_err(|e| error_chain(&e)),
            },
        );
    Ok(Loaded {
        attached: probes.attached().len(),
        tls,
        features: probes.features(),
        reason: probes.capture_reason().to_owned(),
        iovecs: probes.iovecs_per_call(),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Creates and closes a one-entry array map with the raw syscall.
fn bpf_syscall() -> io::Result<()> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u64; 12],
    }
    let attr = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        rest: [0; 12],
    };
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attribute of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the fd we just got.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// `PERF_FLAG_FD_CLOEXEC` from linux/perf_event.h (not exported by libc).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// Opens (and closes) a counting perf event of `kind` (0 hardware, 1 software), config 0
/// (cycles / cpu-clock), on `cpu` for all processes.
fn perf_event_open(kind: u32, cpu: i32) -> io::Result<()> {
    // perf_event_attr, first 64 bytes (PERF_ATTR_SIZE_VER0); `size` tells the kernel so.
    let mut attr = [0u64; 8];
    attr[0] = u64::from(kind) | (64u64 << 32);
    attr[5] = 1; // disabled
    // SAFETY: a zero-padded perf_event_attr of the announced size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            cpu,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the fd we just got.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
