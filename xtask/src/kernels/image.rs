//! A Debian kernel package unpacked into a folder, made ready to boot under qemu: the kernel
//! decompressed to the ELF image qemu starts through its PVH entry point (no BIOS, no
//! in-kernel decompressor: seconds saved under emulation), and the modules a guest needs to
//! reach the host's files (virtio PCI and 9p) found with the package's own dependency data.
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run};

/// Modules every guest loads: the host's root and the work tree come over virtio-9p.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel (e.g. `6.1.0-57-amd64`).
    pub release: String,
    /// What qemu boots: the decompressed ELF when the kernel has a PVH note, else vmlinuz.
    pub image: PathBuf,
    /// The kernel's build configuration (copied to the guest's /boot for tools that read it).
    pub config: PathBuf,
    /// The guest modules, in load order (compressed or not, as shipped).
    pub modules: Vec<PathBuf>,
}

/// Unpacks `debs` into `dir` (once: a finished folder is marked and reused).
pub fn unpack(debs: &[PathBuf], dir: &Path) -> Result<()> {
    let done = dir.join(".unpacked");
    if done.is_file() {
        return Ok(());
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for deb in debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    std::fs::write(&done, b"")?;
    Ok(())
}

/// Finds the kernel, its configuration and modules in an unpacked folder, decompressing the
/// kernel and indexing the modules on first use.
pub fn prepare(dir: &Path) -> Result<Kernel> {
    let (vmlinuz, release, config) = locate(dir)?;
    // Newer packages ship under usr/lib only; modprobe and depmod look under lib/.
    let lib = dir.join("lib");
    if !lib.exists() {
        std::os::unix::fs::symlink("usr/lib", &lib)?;
    }
    if !dir
        .join(format!("lib/modules/{release}/modules.dep"))
        .is_file()
    {
        run(Command::new("depmod").arg("-b").arg(dir).arg(&release))?;
    }
    let elf = dir.join("vmlinux.pvh");
    if !elf.is_file() {
        decompress_kernel(&vmlinuz, &elf)?;
    }
    let image = if elf.is_file() { elf } else { vmlinuz };
    let deps = output(
        Command::new("modprobe")
            .arg("-d")
            .arg(dir)
            .args(["-S", &release, "--show-depends", "-a"])
            .args(GUEST_MODULES),
    )
    .with_context(|| {
        format!("kernel {release} has no virtio/9p modules (a `cloud` flavour?): guests need them")
    })?;
    let mut modules: Vec<PathBuf> = Vec::new();
    for line in deps.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("insmod") {
            continue;
        }
        let Some(path) = words.next().map(PathBuf::from) else {
            continue;
        };
        if !modules.contains(&path) {
            modules.push(path);
        }
    }
    Ok(Kernel {
        release,
        image,
        config,
        modules,
    })
}

/// (vmlinuz, release, config) of an unpacked package: `boot/vmlinuz-<release>` with
/// `boot/config-<release>` (up to Debian 12), or `usr/lib/modules/<release>/vmlinuz` with
/// `config` beside it (Debian 13 on).
fn locate(dir: &Path) -> Result<(PathBuf, String, PathBuf)> {
    if let Ok(entries) = std::fs::read_dir(dir.join("boot")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                let config = dir.join(format!("boot/config-{release}"));
                return Ok((e.path(), release.to_owned(), config));
            }
        }
    }
    let modules = dir.join("usr/lib/modules");
    for e in std::fs::read_dir(&modules)
        .with_context(|| format!("no boot/ or usr/lib/modules/ in {}", dir.display()))?
        .flatten()
    {
        let vmlinuz = e.path().join("vmlinuz");
        if vmlinuz.is_file() {
            let release = e.file_name().to_string_lossy().into_owned();
            return Ok((vmlinuz, release, e.path().join("config")));
        }
    }
    bail!("no kernel image in {}", dir.display())
}

/// Compression formats of a bzImage payload: (magic, decompressor).
const PAYLOADS: &[(&[u8], &[&str])] = &[
    (b"\xfd7zXZ\x00", &["xz", "-dcq"]),
    (b"\x28\xb5\x2f\xfd", &["zstd", "-qdc"]),
    (b"\x1f\x8b\x08\x00", &["gzip", "-dcq"]),
    (b"\x02\x21\x4c\x18", &["lz4", "-dcq"]),
];

/// Writes the ELF kernel inside a bzImage to `out`: the first payload found that
/// decompresses to an ELF file. Leaves `out` absent when none does (qemu then boots the
/// bzImage itself, slower).
fn decompress_kernel(vmlinuz: &Path, out: &Path) -> Result<()> {
    let data = std::fs::read(vmlinuz)?;
    for (magic, command) in PAYLOADS {
        let Some(offset) = data.windows(magic.len()).position(|w| w == *magic) else {
            continue;
        };
        let elf = decompress(command, &data[offset..])?;
        // The decompressor complains about the bytes after the payload: only the result counts.
        if elf.starts_with(b"\x7fELF") {
            let tmp = out.with_extension("tmp");
            std::fs::File::create(&tmp)?.write_all(&elf)?;
            std::fs::rename(&tmp, out)?;
            return Ok(());
        }
    }
    eprintln!(
        "warning: no ELF kernel found inside {}: booting the bzImage (slower)",
        vmlinuz.display()
    );
    Ok(())
}

fn decompress(command: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let (program, args) = command.split_first().context("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The decompressor may stop reading at the payload's end: a broken pipe is expected.
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_end(&mut out)?;
    let _ = child.wait();
    let _ = writer.join();
    Ok(out)
}
