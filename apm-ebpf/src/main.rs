//! Kernel side of the agent: programs that copy the first bytes of socket traffic into a ring
//! buffer (at the socket layer, `socket_layer.rs`, or at syscall exit, `sockets.rs`: the two
//! capture paths), TLS plaintext from OpenSSL and Go `crypto/tls` uprobes, process lifecycle
//! tracepoints and the CPU profiler.
#![no_std]
#![no_main]
// BPF inline assembly (the atomic add in maps.rs) is still a nightly feature.
#![feature(asm_experimental_arch)]

mod capture;
mod catch_up;
mod endpoints;
mod go_tls;
mod libraries;
mod maps;
mod process;
mod profiler;
mod socket_layer;
mod sockets;
mod tls;

/// GPL-compatible licence: `bpf_probe_read_user` is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot unwind; the verifier rejects any path that would reach here.
    loop {}
}
