//! Builds the kernel programs (`apm-ebpf`) for the BPF target with the nightly toolchain and
//! leaves the object in OUT_DIR, where `src/ebpf/load.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // Only the agent embeds the kernel object. The fuzz crate builds this package without the
    // `agent` feature, under cargo-fuzz's sanitizer RUSTFLAGS, which the nested cargo that
    // aya-build spawns for the BPF target would inherit and fail on.
    if std::env::var_os("CARGO_FEATURE_AGENT").is_none() {
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "apm-ebpf")
        .ok_or_else(|| anyhow!("apm-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("apm-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
