//! Types shared by the kernel programs (`apm-ebpf`) and the agent (`apm-agent`).
//!
//! Everything here is `#[repr(C)]` with integer fields only: no `bool`, no enums. The kernel
//! writes these bytes and the agent decodes them in one checked place
//! (`apm-agent/src/ebpf/decode.rs`); an enum or bool read from kernel bytes could hold an
//! invalid value, an integer cannot. Every struct has a size assertion so that a layout change
//! on one side without the other fails to compile.
#![no_std]

/// Compile-time ceiling for the bytes copied from one socket syscall. The runtime capture size
/// (`--capture-bytes`) may be smaller, never larger.
pub const MAX_CAPTURE: usize = 4096;
/// The per-CPU scratch payload is twice [`MAX_CAPTURE`] so that the verifier can prove that
/// `offset (< MAX_CAPTURE) + len (<= MAX_CAPTURE)` stays in bounds while gathering iovecs.
pub const SCRATCH_PAYLOAD: usize = 2 * MAX_CAPTURE;
/// How many iovec entries of a readv/writev/recvmsg/sendmsg call are gathered, on every
/// capture path. gRPC's C core writes a frame header and each payload slice as their own
/// iovecs: its first write on a connection (preface, SETTINGS, WINDOW_UPDATE, HEADERS, DATA)
/// took 24; at 8 the header block was cut and the connection's HPACK table lost for good.
/// (32 was "BPF program is too large" for the `syscalls` path on 6.18 and for the socket-layer
/// receives on Debian's 7.3 until the gather loop made the verifier's walks converge: see
/// `forget` in apm-ebpf/src/capture.rs.)
pub const MAX_IOV: u32 = 32;
/// ... by the variants of the socket-layer data programs that the agent loads where a
/// verifier still finds the [`MAX_IOV`] ones too large (none of the kernels tested).
pub const MAX_IOV_NARROW: u32 = 8;

/// Event kinds: the first `u32` of every ring-buffer record.
pub mod kind {
    /// Bytes moved through a tracked socket ([`super::DataEventHeader`] + payload).
    pub const DATA: u32 = 1;
    /// A socket became tracked through accept or connect ([`super::ConnEvent`]).
    pub const CONN_OPEN: u32 = 2;
    /// A tracked socket was closed ([`super::ConnEvent`]).
    pub const CONN_CLOSE: u32 = 3;
    /// A process called execve ([`super::ProcEvent`]).
    pub const PROC_EXEC: u32 = 4;
    /// A thread group ended ([`super::ProcEvent`]).
    pub const PROC_EXIT: u32 = 5;
    /// The profiler sampled a thread group for the first time ([`super::ProcEvent`], on the
    /// profiler's own ring buffer): the agent snapshots its memory maps while it is alive.
    pub const PROC_SAMPLED: u32 = 6;
    /// The local and remote endpoints of a tracked TCP connection ([`super::TupleEvent`]),
    /// sent once per connection with its first data.
    pub const CONN_TUPLE: u32 = 7;
    /// A process mapped a file executable (it loaded a library: [`super::ProcEvent`]): the
    /// agent looks for a TLS library it has not attached to yet.
    pub const PROC_EXEC_MAP: u32 = 8;
}

/// Direction of a data event from the observed process's point of view.
pub mod direction {
    /// The process read bytes from the socket.
    pub const INGRESS: u32 = 0;
    /// The process wrote bytes to the socket.
    pub const EGRESS: u32 = 1;
}

/// How a socket came to be tracked.
pub mod role {
    /// Found in /proc at start-up, or adopted at its first data (inherited, duplicated): the
    /// agent infers the side from the traffic.
    pub const UNKNOWN: u32 = 0;
    /// Returned by accept/accept4: this process is the server.
    pub const SERVER: u32 = 1;
    /// Passed to connect: this process is the client.
    pub const CLIENT: u32 = 2;
}

/// Which syscall produced a data event (kept for the agent's own statistics).
pub mod syscall {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const READV: u32 = 2;
    pub const WRITEV: u32 = 3;
    pub const RECVFROM: u32 = 4;
    pub const SENDTO: u32 = 5;
    pub const RECVMSG: u32 = 6;
    pub const SENDMSG: u32 = 7;
    pub const ACCEPT: u32 = 8;
    pub const CONNECT: u32 = 9;
    /// Plaintext returned by `SSL_read`/`SSL_read_ex` (OpenSSL uprobes), not a syscall.
    pub const SSL_READ: u32 = 10;
    /// Plaintext passed to `SSL_write`/`SSL_write_ex`.
    pub const SSL_WRITE: u32 = 11;
    /// `sendfile` into a socket: the bytes came from a file, not from the caller's memory, so
    /// the record carries their count only (`captured_len` 0). nginx and Apache send file
    /// bodies this way (Debian's nginx.conf has `sendfile on`), and so does Go's `io.Copy`
    /// from an `os.File` to a `net.TCPConn`: without the count a parser would take the next
    /// message's head for the body it is still waiting for.
    pub const SENDFILE: u32 = 12;
    /// `splice` between a pipe and a socket, either way: its count only, as for
    /// [`SENDFILE`] (Go's `io.Copy` between two TCP connections, HAProxy).
    pub const SPLICE: u32 = 13;
}

/// Which OpenSSL function a uprobe entry saw (the [`SslCall::op`] field).
pub mod ssl_op {
    /// `int SSL_read(SSL *, void *buf, int num)`: returns the bytes read.
    pub const READ: u32 = 0;
    /// `int SSL_write(SSL *, const void *buf, int num)`: returns the bytes written.
    pub const WRITE: u32 = 1;
    /// `int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes)`: returns 1 on success.
    pub const READ_EX: u32 = 2;
    /// `int SSL_write_ex(SSL *, const void *buf, size_t num, size_t *written)`.
    pub const WRITE_EX: u32 = 3;
    /// `int SSL_do_handshake(SSL *)`: no plaintext, but its socket I/O is encrypted too.
    pub const HANDSHAKE: u32 = 4;
}

/// Bits of [`SockInfo::flags`].
pub mod sock_flags {
    /// The agent gave up on this connection (not a protocol it understands): the kernel stops
    /// copying its bytes, so unclassified traffic costs one map lookup per syscall.
    pub const MUTED: u32 = 1;
    /// The connection's endpoints were sent (or cannot be: not IPv4 TCP).
    pub const TUPLE_DONE: u32 = 2;
    /// The socket carries TLS and the agent sees its plaintext through the OpenSSL uprobes:
    /// the encrypted bytes of its syscalls are not copied (they would be parsed twice).
    pub const TLS: u32 = 4;
    /// The agent was never told about this socket (a connection to its own listener, entered
    /// muted on the socket-layer capture path): its end is not reported either.
    pub const UNANNOUNCED: u32 = 8;
}

/// Indices of the per-CPU kernel counters (`STATS` map). The agent sums them over CPUs and
/// exports them as its own metrics.
pub mod stat {
    /// A ring-buffer record could not be written (buffer full): an event lost.
    pub const EVENTS_LOST: u32 = 0;
    /// The socket table was full: a connection was not tracked.
    pub const SOCK_MAP_FULL: u32 = 1;
    /// A vectored call had more iovecs than [`super::MAX_IOV`]: its capture is partial.
    pub const IOV_TRUNCATED: u32 = 2;
    /// Copying user memory failed: the event carries fewer captured bytes than it could.
    pub const READ_USER_FAILED: u32 = 3;
    /// Profiler: samples taken of a (non-idle) thread.
    pub const PROFILE_SAMPLES: u32 = 4;
    /// Profiler: samples of an idle CPU (not attributed to any process).
    pub const PROFILE_IDLE: u32 = 5;
    /// Profiler: a stack hashed to a stack-map slot holding another stack (stack lost).
    pub const PROFILE_STACK_COLLISIONS: u32 = 6;
    /// Profiler: the stack map was full or the walk failed otherwise (stack lost).
    pub const PROFILE_STACK_ERRORS: u32 = 7;
    /// Profiler: the sample-count map was full (sample lost).
    pub const PROFILE_COUNTS_FULL: u32 = 8;
    /// Profiler: the known-process table was full (no early maps snapshot for that process).
    pub const PROFILE_KNOWN_FULL: u32 = 9;
    /// Profiler: the agent's ring buffer for first-sample events was full.
    pub const PROFILE_EVENTS_LOST: u32 = 10;
    /// A socket the table did not know moved data and was adopted (inherited across fork,
    /// duplicated, or received over a unix socket).
    pub const SOCK_ADOPTED: u32 = 11;
    /// TLS plaintext whose socket is not known (the `SSL *` was never seen doing I/O on a
    /// tracked socket): dropped.
    pub const TLS_NO_SOCKET: u32 = 12;
    /// An in-flight OpenSSL call could not be recorded (map update failed): its plaintext is
    /// lost.
    pub const TLS_CALLS_FULL: u32 = 13;
    /// Plaintext records emitted from the OpenSSL uprobes.
    pub const TLS_RECORDS: u32 = 14;
    /// Wake-ups of the agent forced by a record (a batch waits, at most one per millisecond;
    /// and each `exec`).
    pub const RING_WAKEUPS: u32 = 15;
    /// A socket send or receive outside a read/write-family, `sendfile` or `splice` syscall
    /// of the calling task (io_uring, kernel sockets), on the socket-layer capture path: not
    /// copied, and not counted in the connection's stream.
    pub const SOCKET_CALL_OTHER: u32 = 16;
    /// A data record found its CPU's scratch area in use by a program that was preempted
    /// while assembling one (kernels with full or lazy preemption run tracing programs
    /// preemptibly): not written, so that neither record is corrupted; an event lost.
    pub const SCRATCH_BUSY: u32 = 17;
    /// A send or receive that was already blocked when the `sockets-fexit` programs were
    /// attached, seen at its syscall's exit by the catch-up program.
    pub const CAUGHT_UP: u32 = 18;
    /// Number of counters.
    pub const COUNT: u32 = 19;
}

/// Key of the profiler's sample counts: one (thread, user stack, kernel stack) combination.
/// Stack ids are `bpf_get_stackid` results: negative when there is no stack (kernel threads
/// have no user stack; kernel stacks can be turned off) or it was lost (the error code).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SampleKey {
    pub tgid: u32,
    pub pid: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
}

/// Key of the socket table: a file descriptor in a thread group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockInfo {
    /// One of [`role`].
    pub role: u32,
    /// Bits of [`sock_flags`].
    pub flags: u32,
    /// Identity of this connection: the kernel clock when it was tracked (equal to the
    /// `ts_ns` of its [`ConnEvent`]). The agent mutes a socket only when the id still matches,
    /// so a muting decision can never hit a newer connection that reused the fd.
    pub id: u64,
    /// Data records the kernel tried to emit for this socket so far, counted before each ring
    /// output (atomically: two threads may use one socket). A record lost to a full ring
    /// buffer still took its number, so the agent sees a gap in [`DataEventHeader::seq`]
    /// (see [`record_seq`]) and knows that this connection, not just some connection, lost
    /// bytes. Starts at 0 in every new entry; flag changes are made in place so that they
    /// never reset it.
    pub records: u64,
    /// The socket's cookie (`bpf_get_socket_cookie`: unique for the socket's lifetime, never
    /// reused), on the socket-layer capture path: a data call on this fd through another
    /// socket means the fd was closed and reused unseen. 0 until known (entries seeded from
    /// /proc, and every entry of the syscall path).
    pub cookie: u64,
}

/// Header of a [`kind::DATA`] record; `captured_len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEventHeader {
    pub kind: u32,
    /// One of [`direction`].
    pub direction: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// One of [`syscall`].
    pub syscall: u32,
    /// Kernel monotonic clock (`bpf_ktime_get_ns`) when the syscall returned.
    pub ts_ns: u64,
    /// Bytes the syscall moved: may exceed `captured_len` by far.
    pub total_len: u64,
    /// Payload bytes that follow this header.
    pub captured_len: u32,
    /// Number of this record among its socket's data records ([`record_seq`] of
    /// [`SockInfo::records`]): 1, 2, ... wrapping from `u32::MAX` back to 1; never 0, which
    /// the agent reads as "not numbered". A jump forward tells the agent that records of this
    /// connection were lost; a step back is only reordering between CPUs.
    pub seq: u32,
}

/// How many distinct record numbers [`DataEventHeader::seq`] takes (`1..=u32::MAX`): 0 is
/// kept for "unknown", so the numbers wrap modulo this, not modulo 2^32.
pub const SEQ_PERIOD: u64 = u32::MAX as u64;

/// The [`DataEventHeader::seq`] of the record that found `count` records already counted in
/// [`SockInfo::records`]: `count + 1`, wrapped into `1..=u32::MAX`. One definition for the
/// kernel, which numbers records, and the agent, which measures the distance between them.
#[inline(always)]
pub const fn record_seq(count: u64) -> u32 {
    (count % SEQ_PERIOD) as u32 + 1
}

/// The per-CPU scratch area where a data record is assembled before it is copied, trimmed to
/// its real length, into the ring buffer.
#[repr(C)]
pub struct DataEventScratch {
    pub header: DataEventHeader,
    pub payload: [u8; SCRATCH_PAYLOAD],
}

/// A [`kind::CONN_OPEN`] or [`kind::CONN_CLOSE`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// One of [`role`].
    pub role: u32,
    /// `AF_INET`, `AF_INET6`, `AF_UNIX`, or 0 when unknown.
    pub family: u32,
    /// Peer port in host byte order (0 when unknown).
    pub port: u32,
    /// An adopted socket's ([`role::UNKNOWN`]) process was forked by this one (its thread
    /// group), when the fork was seen; else 0. Names a short-lived forked child after its
    /// parent when the child is gone before /proc can be read.
    pub parent_tgid: u32,
    pub ts_ns: u64,
    /// The socket's [`SockInfo::id`].
    pub id: u64,
    /// Peer address: 4 bytes for IPv4, 16 for IPv6, network byte order.
    pub addr: [u8; 16],
    /// `comm` of the calling thread, for processes that exit before /proc can be read.
    pub comm: [u8; 16],
}

/// A [`kind::CONN_TUPLE`] record: both endpoints of a tracked TCP connection, as the
/// kernel's socket has them (so that the two ends of a same-host connection can be paired).
/// An IPv6 socket whose peer is an IPv4-mapped address is reported as IPv4, the way its
/// IPv4 peer's socket has it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TupleEvent {
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    /// Ports in host byte order.
    pub local_port: u32,
    pub remote_port: u32,
    /// `AF_INET` (2: the addresses are in the first four bytes) or `AF_INET6` (10).
    pub family: u32,
    /// Addresses in network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// The socket's [`SockInfo::id`].
    pub id: u64,
}

/// Per-CPU note of the last socket a thread sent or received on (written by the
/// `sock_send_length`/`sock_recv_length` programs, read by the syscall-exit program).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LastSock {
    pub pid_tgid: u64,
    /// `struct sock *`, only ever read through `bpf_probe_read_kernel`.
    pub sk: u64,
}

/// An OpenSSL call in progress on one thread, from its uprobe entry to its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SslCall {
    /// `SSL *`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `size_t *` where the `_ex` variants store the byte count.
    pub out: u64,
    /// The socket the call did I/O on (seen by the syscall programs), or [`NO_FD`].
    pub fd: u32,
    /// One of [`ssl_op`].
    pub op: u32,
}

/// [`SslCall::fd`] before the call touched a socket.
pub const NO_FD: u32 = u32::MAX;

/// Key of the `SSL *` -> socket table: `SSL` pointers are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// A [`kind::PROC_EXEC`], [`kind::PROC_EXIT`] or [`kind::PROC_EXEC_MAP`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SockKey>() == 8);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 32);
const _: () = assert!(core::mem::size_of::<DataEventHeader>() == 48);
const _: () = assert!(core::mem::size_of::<DataEventScratch>() == 48 + SCRATCH_PAYLOAD);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 80);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 32);
const _: () = assert!(core::mem::size_of::<SampleKey>() == 16);
const _: () = assert!(core::mem::size_of::<TupleEvent>() == 64);
const _: () = assert!(core::mem::size_of::<LastSock>() == 16);
const _: () = assert!(core::mem::size_of::<SslCall>() == 32);
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers, no padding holes left implicit.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleKey {}
}
