//! Installs what the build and the tests need, idempotently: every step first checks whether
//! its piece is present (a fraction of a second in all when everything is), and installs only
//! what is missing.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{as_root, output, run};

/// Debian packages the build needs: LLVM 22 for bpf-linker.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
/// Debian packages `cargo xtask image` needs: podman with runc (crun refuses this machine
/// kind's hybrid cgroup layout), debootstrap for the locally made base.
pub const IMAGE_PACKAGES: &[&str] = &["podman", "runc", "debootstrap"];
/// Debian packages the tests and benchmarks use: real servers and clients.
const TEST_PACKAGES: &[&str] = &[
    "nginx-light",
    "wrk",
    "curl",
    // HTTP/2 tests: nghttp (streams in flight at once) and h2load (one stream after the
    // other on one connection) in cleartext, where curl 7.88 fails to reuse a
    // prior-knowledge connection ("Error in the HTTP2 framing layer").
    "nghttp2-client",
    "bpftool",
    "util-linux",
    "procps",
    // OTLP TLS test: a private CA and a server certificate.
    "openssl",
    // Profiler tests: the workload is built with gcc; binutils (strip, readelf, addr2line)
    // check stripped frames; the SVG is opened in Chromium and read back with tesseract;
    // the pprof file is read by `go tool pprof`.
    "gcc",
    "binutils",
    "chromium",
    // Chromium only recommends fonts: without one the flame graph's text does not render.
    "fonts-dejavu-core",
    "tesseract-ocr",
    "golang-go",
    // Profiler benchmark: perf record as the reference profiler.
    "linux-perf",
    // OTLP tests: the independent receiver runs in a venv of Debian's Python.
    "python3-venv",
    // gRPC test of Node's @grpc/grpc-js (tests/tests/grpc_node.rs): Node's own HTTP/2
    // (nghttp2). npm comes with NodeSource's package, separately with Debian's
    // (`ensure_test_node_modules`).
    "nodejs",
    // Database protocol tests and `bench db`: real servers and their own clients and load
    // generators (pgbench ships with the PostgreSQL server package).
    "postgresql",
    "redis-server",
    "redis-tools",
    "memcached",
    "mariadb-server",
    "mariadb-client",
    // Kernel matrix (`cargo xtask test-kernels`): qemu boots Debian's kernels; busybox is the
    // guests' init; kmod (depmod, modprobe) finds their 9p modules; the kernels and modules
    // come compressed with xz or zstd; cpio packs the initramfs.
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "cpio",
    // The DaemonSet's pod under podman (tests/tests/daemonset_podman.rs): the pod's own
    // network namespace is slirp4netns's, reached on the host's loopback only.
    "slirp4netns",
];
/// Debian packages the fuzz targets need: libfuzzer-sys compiles libFuzzer's C++ sources.
const FUZZ_PACKAGES: &[&str] = &["g++"];
/// The venv of the independent OTLP receiver (tests/servers/otlp_receiver.py); the tests
/// find its Python at the same path (tests/src/pyotlp.rs). Outside the build tree, so it
/// survives `cargo clean` and is shared by every checkout.
pub const TEST_VENV: &str = "/var/lib/apm-agent-tests/venv";
/// What the receiver imports, pinned.
const TEST_PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.85.1",
    "protobuf==7.36.2",
    "opentelemetry-proto==1.45.2",
    // Database tests: pure-Python clients. pg8000 (PostgreSQL, extended protocol) for the
    // N+1 test's app; mysql-connector-python with `use_pure=True` for MariaDB's binary
    // protocol (COM_STMT_PREPARE / COM_STMT_EXECUTE).
    "pg8000==1.31.6",
    "mysql-connector-python==26.10.0",
    // deploy/ manifests: validated offline against the Kubernetes schemas this package ships
    // (tests/tests/deploy_manifests.rs); its PyYAML also reads them for the test's own checks.
    "kubernetes-validate==1.37.0",
    // An HTTP/2 server that accepts `Upgrade: h2c` (tests/servers/h2c_upgrade.py): no Debian
    // server here does (nginx speaks h2c with prior knowledge only).
    "h2==4.2.0",
    "hpack==4.1.0",
    "hyperframe==6.1.0",
];
/// The Node packages of the tests (tests/servers/grpc_echo.js), outside the build tree like
/// [`TEST_VENV`]; the tests find them at the same path (`NODE_MODULES` in tests/src/grpc.rs).
pub const TEST_NODE_DIR: &str = "/var/lib/apm-agent-tests/node";
/// What the Node servers and clients require, pinned (`name`, exact version).
const TEST_NODE_PACKAGES: &[(&str, &str)] = &[("@grpc/grpc-js", "1.14.7")];
/// Where Debian's `prometheus` package is unpacked for its `promtool` (the rules test,
/// tests/tests/prometheus_rules.rs, reads `usr/bin/promtool` under it): unpacked with
/// `dpkg-deb -x`, not installed, so no Prometheus server (user, service, data directory) is
/// set up on the machine for one command-line tool.
const PROMTOOL_DIR: &str = "/var/lib/apm-agent-tests/prometheus";
/// bpf-linker version known to build against Debian's LLVM 22 (see ../shared/PLATFORM.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What to install.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Build,
    Test,
}

/// Ensures everything `scope` needs is installed.
pub fn ensure(scope: Scope) -> Result<()> {
    ensure_rust()?;
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    if matches!(scope, Scope::Test) {
        packages.extend_from_slice(TEST_PACKAGES);
        // The integration tests run the agent's image too.
        packages.extend_from_slice(IMAGE_PACKAGES);
        // `cargo xtask test` runs the fuzz targets too.
        packages.extend_from_slice(FUZZ_PACKAGES);
    }
    ensure_debian(&packages)?;
    ensure_bpf_linker()?;
    if matches!(scope, Scope::Test) {
        ensure_test_venv()?;
        ensure_promtool()?;
        ensure_test_node_modules()?;
        ensure_cargo_fuzz()?;
    }
    Ok(())
}

/// What `cargo xtask fuzz` needs: the nightly toolchain, a C++ compiler and cargo-fuzz (not
/// the eBPF build's LLVM and bpf-linker: the fuzz build leaves the kernel object out).
pub fn ensure_fuzz() -> Result<()> {
    ensure_rust()?;
    ensure_debian(FUZZ_PACKAGES)?;
    ensure_cargo_fuzz()
}

fn ensure_cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The nightly toolchain with rust-src (eBPF build) and clippy (eBPF lint); rustfmt and clippy
/// on the default toolchain.
fn ensure_rust() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = |toolchain: &str| {
        output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            toolchain,
        ]))
        .unwrap_or_default()
    };
    let nightly = installed("nightly");
    for component in ["rust-src", "clippy"] {
        if !nightly.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    let default = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for component in ["rustfmt", "clippy"] {
        if !default.lines().any(|l| l.starts_with(component)) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

pub fn ensure_debian(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(as_root("apt-get").args(["update", "-qq"]))?;
    run(as_root("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

/// Where cargo installs binaries.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version"))
        .or_else(|| output(Command::new(cargo_bin_dir().join("bpf-linker")).arg("--version")));
    if installed.is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let llvm = "/usr/lib/llvm-22";
    if !std::path::Path::new(llvm).is_dir() {
        bail!("{llvm} is missing although llvm-22-dev was installed");
    }
    run(Command::new("cargo")
        .env("LLVM_PREFIX", llvm)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]))
}

/// The tests' venv: the OTLP receiver (`tests/servers/otlp_receiver.py`), the database
/// clients, `kubernetes-validate`.
fn ensure_test_venv() -> Result<()> {
    crate::venv::ensure(
        std::path::Path::new(TEST_VENV),
        TEST_PYTHON_PACKAGES,
        "import grpc, google.protobuf.json_format, \
         opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc, \
         opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc, \
         pg8000, mysql.connector, kubernetes_validate, yaml, h2.connection",
    )
    .map(drop)
}

/// The tests' Node packages in [`TEST_NODE_DIR`]`/node_modules`: each pinned version read from
/// its installed `package.json` (no npm call when all match), `npm install` otherwise.
fn ensure_test_node_modules() -> Result<()> {
    let dir = std::path::Path::new(TEST_NODE_DIR);
    let installed = |name: &str| {
        let manifest = dir.join("node_modules").join(name).join("package.json");
        std::fs::read(manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
    };
    let missing: Vec<String> = TEST_NODE_PACKAGES
        .iter()
        .filter(|(name, version)| installed(name).as_deref() != Some(*version))
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if output(Command::new("npm").arg("--version")).is_none() {
        // Debian's nodejs comes without npm (NodeSource's has it).
        ensure_debian(&["npm"])?;
    }
    eprintln!("installing Node packages into {}", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let manifest = dir.join("package.json");
    if !manifest.exists() {
        // A package of its own, so that npm installs here and not in a parent's.
        std::fs::write(
            &manifest,
            "{\"name\": \"apm-agent-tests\", \"private\": true}\n",
        )
        .with_context(|| format!("writing {}", manifest.display()))?;
    }
    run(as_root("npm")
        .current_dir(dir)
        .args(["install", "--no-audit", "--no-fund", "--save-exact"])
        .args(["--no-update-notifier", "--loglevel=error"])
        .args(&missing))?;
    for (name, version) in TEST_NODE_PACKAGES {
        let got = installed(name);
        if got.as_deref() != Some(*version) {
            bail!("{name}: npm installed {got:?}, want {version}");
        }
    }
    Ok(())
}

/// `promtool` from Debian's `prometheus` package, unpacked into [`PROMTOOL_DIR`] (fast when
/// it is there and runs).
fn ensure_promtool() -> Result<()> {
    let dir = std::path::Path::new(PROMTOOL_DIR);
    let promtool = dir.join("usr/bin/promtool");
    if output(Command::new(&promtool).arg("--version")).is_some() {
        return Ok(());
    }
    eprintln!("unpacking Debian's prometheus package for promtool into {PROMTOOL_DIR}");
    let download = std::env::temp_dir().join(format!("apm-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let fetched =
        run(Command::new("apt-get")
            .current_dir(&download)
            .args(["download", "-qq", "prometheus"]))
        .or_else(|_| {
            // The package lists may be missing on a fresh machine.
            run(as_root("apt-get").args(["-qq", "update"]))?;
            run(Command::new("apt-get").current_dir(&download).args([
                "download",
                "-qq",
                "prometheus",
            ]))
        });
    let result = fetched.and_then(|()| {
        let deb = std::fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download prometheus left no .deb")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))
    });
    let _ = std::fs::remove_dir_all(&download);
    result?;
    if output(Command::new(&promtool).arg("--version")).is_none() {
        bail!("{} does not run after unpacking", promtool.display());
    }
    Ok(())
}
