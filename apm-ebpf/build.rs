//! Build script of the kernel programs:
//! - rebuild when bpf-linker changes (cargo cannot see that dependency itself);
//! - set `bpf_target_arch` (pt_regs layouts differ per architecture) when the caller did not
//!   (aya-build passes it; a plain `cargo clippy --target bpfel-unknown-none` does not).
fn main() -> anyhow::Result<()> {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    aya_build::emit_bpf_target_arch_cfg()
}
