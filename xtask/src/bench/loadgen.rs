//! A constant-rate (open-loop) HTTP/1.1 load generator, for the loads below saturation.
//!
//! wrk has no rate control, and pacing it with a Lua `delay()` after each response is closed
//! loop: the rate then depends on the server's latency and on wrk's 1 ms timer, and it moved
//! by 25% between agent-off and agent-on rounds of nginx at half saturation. Here every
//! keep-alive connection sends on a fixed schedule, `connections / rate` apart, staggered
//! across connections; a request sent late because the previous answer came late is timed
//! from when it was due (as wrk2 does), so queueing shows in the latency instead of lowering
//! the rate.
//!
//! One thread drives every connection (non-blocking sockets, `ppoll` with a nanosecond
//! timeout and no timer slack), as wrk does with its event loop: a thread per connection
//! spent its CPU on context switches and added a millisecond of its own scheduling delay to
//! the latency at 46k requests/s.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::wrk::WrkRun;

/// What to send, how fast, from where.
#[derive(Debug, Clone)]
pub struct Load {
    pub port: u16,
    pub path: String,
    /// Requests per second, all connections together.
    pub rate: f64,
    pub connections: u32,
    pub seconds: u32,
    /// CPU the generator is pinned to.
    pub cpu: Option<u32>,
}

/// Connections for `rate`: one per 500 requests/s (each then sends every 2 ms, several times
/// the round trip of the servers measured here), at least 4 and at most 128.
pub fn connections_for(rate: f64) -> u32 {
    ((rate / 500.0).ceil() as u32).clamp(4, 128)
}

/// One keep-alive connection and where it is in its schedule.
struct Conn {
    stream: TcpStream,
    /// When its next request is due.
    next: Instant,
    /// The request on the wire was due at this time (`None`: idle).
    waiting: Option<Instant>,
    /// Bytes of the response read so far.
    buf: Vec<u8>,
}

/// Runs `load` (on the calling thread, pinned to `load.cpu` for the run) and reports it in
/// wrk's terms: requests completed, rate, p50/p99 from the due time.
pub fn run(load: &Load) -> Result<WrkRun> {
    if load.rate <= 0.0 || load.connections == 0 {
        bail!("load generator: rate and connections must be positive");
    }
    let interval = Duration::from_secs_f64(f64::from(load.connections) / load.rate);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        load.path, load.port
    )
    .into_bytes();
    let _pin = load.cpu.map(PinGuard::pin);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(u64::from(load.seconds));
    let mut conns = Vec::new();
    for i in 0..load.connections {
        let stream = TcpStream::connect(("127.0.0.1", load.port))
            .with_context(|| format!("connect :{}", load.port))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        conns.push(Conn {
            stream,
            next: start + interval.mul_f64(f64::from(i) / f64::from(load.connections)),
            waiting: None,
            buf: Vec::with_capacity(4096),
        });
    }
    let mut latencies: Vec<u32> =
        Vec::with_capacity((load.rate * f64::from(load.seconds)) as usize);
    let mut non_2xx = 0u64;
    let mut last_answer = start;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut which: Vec<usize> = Vec::with_capacity(conns.len());
    // Answers still awaited when the schedule ends get this long.
    let drain_deadline = end + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        for c in &mut conns {
            if c.waiting.is_none() && c.next <= now && c.next < end {
                write_request(&mut c.stream, &request)?;
                c.waiting = Some(c.next);
                c.next += interval;
            }
        }
        let busy = conns.iter().any(|c| c.waiting.is_some());
        let next_due = conns
            .iter()
            .filter(|c| c.waiting.is_none() && c.next < end)
            .map(|c| c.next)
            .min();
        if !busy && next_due.is_none() {
            break;
        }
        if Instant::now() > drain_deadline {
            bail!("load generator: answers still missing 10 s after the end of the schedule");
        }
        let timeout = next_due.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(Instant::now())
        });
        fds.clear();
        which.clear();
        for (i, c) in conns.iter().enumerate() {
            if c.waiting.is_some() {
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd; `ts` outlives the call.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("ppoll");
        }
        for (pfd, &i) in fds.iter().zip(&which) {
            if pfd.revents == 0 {
                continue;
            }
            let c = &mut conns[i];
            if let Some(status) = read_available(c)? {
                let due = c.waiting.take().unwrap_or(now);
                last_answer = Instant::now();
                let us = due.elapsed().as_micros();
                latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                if !(200..400).contains(&status) {
                    non_2xx += 1;
                }
            }
        }
    }
    let requests = latencies.len() as f64;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round().max(0.0) as usize)
            .map_or(0.0, |v| f64::from(*v))
    };
    // Over the schedule, or longer if the answers came in later: a server that cannot keep
    // up shows a lower rate than the one offered.
    let elapsed = last_answer
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(f64::from(load.seconds));
    Ok(WrkRun {
        requests,
        rps: requests / elapsed,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        non_2xx: non_2xx as f64,
        socket_errors: 0.0,
    })
}

/// Writes a whole request on an idle connection (a small write into an empty send buffer).
fn write_request(stream: &mut TcpStream, request: &[u8]) -> Result<()> {
    let n = stream.write(request).context("load generator: write")?;
    if n != request.len() {
        bail!(
            "load generator: short write ({n} of {} bytes)",
            request.len()
        );
    }
    Ok(())
}

/// Reads what is there; `Some(status)` once the response is complete (then the buffer is
/// emptied: no pipelining, so nothing follows it).
fn read_available(c: &mut Conn) -> Result<Option<u16>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => bail!("load generator: the server closed a connection"),
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("load generator: read"),
        }
    }
    let Some(status) = complete_response(&c.buf)? else {
        return Ok(None);
    };
    c.buf.clear();
    Ok(Some(status))
}

/// The status of `buf` if it holds one whole response with a `Content-Length` body.
fn complete_response(buf: &[u8]) -> Result<Option<u16>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("load generator: response head")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("load generator: bad status line in {head:?}"))?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("load generator: no Content-Length in {head:?}"))?;
    Ok((buf.len() >= head_end + 4 + length).then_some(status))
}

/// Pins the calling thread to a CPU, with no timer slack, until dropped.
struct PinGuard {
    old: Option<libc::cpu_set_t>,
}

impl PinGuard {
    fn pin(cpu: u32) -> Self {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read and write
        // these local sets and this thread's settings.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let got = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            let _ = libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
            Self {
                old: (got == 0).then_some(old),
            }
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: restores the affinity read in `pin`.
            unsafe {
                let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::complete_response;

    #[test]
    fn response_is_complete_only_with_its_whole_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(complete_response(r).ok().flatten(), None);
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(complete_response(r).ok().flatten(), Some(404));
        assert!(
            complete_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err()
        );
        assert_eq!(
            complete_response(b"HTTP/1.1 200 OK\r\n").ok().flatten(),
            None
        );
    }
}
