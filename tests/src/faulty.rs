//! A fault-injecting front for an OTLP endpoint: a TCP listener that, by its current
//! [`Fault`], forwards each new connection to a real receiver (any protocol: the bytes are
//! copied both ways) or misbehaves: closes in the middle of reading the request body, answers
//! half a response and closes, or reads and never answers. It can also go down (its port
//! refuses connections) and come back on the same port. It counts what it did, so that a test
//! knows each fault really happened.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};

use anyhow::Result;

/// What the front does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward it to the real receiver.
    Forward = 0,
    /// Read the request head and half of its body, then close (a crash mid-read: unread
    /// bytes make the kernel answer with a reset).
    DieMidBody = 1,
    /// Read the whole request, write half a response head, close.
    HalfResponse = 2,
    /// Read whatever comes and never answer, until the peer gives up.
    Hang = 3,
}

impl Fault {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::DieMidBody,
            2 => Self::HalfResponse,
            3 => Self::Hang,
            _ => Self::Forward,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    fault: AtomicU8,
    down: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    died_mid_body: AtomicU64,
    half_responses: AtomicU64,
    hung: AtomicU64,
    /// Hung connections the peer has not closed yet.
    hung_open: AtomicU64,
}

/// The running front (a thread per connection); stopped when dropped.
#[derive(Debug)]
pub struct FaultyFront {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultyFront {
    /// Listens on a free port; connections go to 127.0.0.1:`target` when forwarded.
    pub fn start(target: u16, fault: Fault) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        shared.fault.store(fault as u8, SeqCst);
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(Some(listener), port, target, &s));
        Ok(Self { port, shared })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What new connections get from now on.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.store(fault as u8, SeqCst);
    }

    /// Stops listening: the port refuses connections until [`FaultyFront::up`].
    pub fn down(&self) {
        self.shared.down.store(true, SeqCst);
        // Let the accept loop see it and drop the listener.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        self.shared.down.store(false, SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }

    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(SeqCst)
    }
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(SeqCst)
    }
    pub fn died_mid_body(&self) -> u64 {
        self.shared.died_mid_body.load(SeqCst)
    }
    pub fn half_responses(&self) -> u64 {
        self.shared.half_responses.load(SeqCst)
    }
    /// Connections that sent bytes and got no answer.
    pub fn hung(&self) -> u64 {
        self.shared.hung.load(SeqCst)
    }
    /// Of those, the ones still open (the client has not closed them).
    pub fn hung_open(&self) -> u64 {
        self.shared.hung_open.load(SeqCst)
    }
}

impl Drop for FaultyFront {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
    }
}

fn accept_loop(mut listener: Option<TcpListener>, port: u16, target: u16, s: &Arc<Shared>) {
    while !s.stop.load(SeqCst) {
        if s.down.load(SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // std sets SO_REUSEADDR: the port can be bound again at once.
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    let _ = l.set_nonblocking(true);
                    listener = Some(l);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        let _ = l.set_nonblocking(true);
        match l.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                s.accepted.fetch_add(1, SeqCst);
                let fault = Fault::from_u8(s.fault.load(SeqCst));
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, fault, target, &s);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads an HTTP/1 request head; returns it and the body bytes read past it.
fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("closed before the head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until `have` holds `want` bytes (or the peer stops).
fn read_body(stream: &mut TcpStream, have: &mut Vec<u8>, want: usize) -> Result<()> {
    let mut chunk = [0u8; 4096];
    while have.len() < want {
        let n = stream.read(&mut chunk[..(want - have.len()).min(4096)])?;
        if n == 0 {
            break;
        }
        have.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn handle(mut stream: TcpStream, fault: Fault, target: u16, s: &Shared) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    match fault {
        Fault::Forward => {
            let upstream = TcpStream::connect(("127.0.0.1", target))?;
            s.forwarded.fetch_add(1, SeqCst);
            let (mut a, mut b) = (stream.try_clone()?, upstream.try_clone()?);
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(Shutdown::Write);
            });
            let (mut up, mut down) = (upstream, stream);
            let _ = std::io::copy(&mut up, &mut down);
            let _ = down.shutdown(Shutdown::Write);
            let _ = t.join();
        }
        Fault::DieMidBody => {
            let (head, mut body) = read_head(&mut stream)?;
            let len = content_length(&head);
            read_body(&mut stream, &mut body, (len / 2).max(1))?;
            s.died_mid_body.fetch_add(1, SeqCst);
            // Dropped with the rest of the body unread: the kernel resets the connection.
        }
        Fault::HalfResponse => {
            let (head, mut body) = read_head(&mut stream)?;
            read_body(&mut stream, &mut body, content_length(&head))?;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: applicat")?;
            s.half_responses.fetch_add(1, SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Fault::Hang => {
            let mut chunk = [0u8; 4096];
            let mut counted = false;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if !counted => {
                        counted = true;
                        s.hung.fetch_add(1, SeqCst);
                        s.hung_open.fetch_add(1, SeqCst);
                    }
                    Ok(_) => {}
                }
                if s.stop.load(SeqCst) {
                    break;
                }
            }
            if counted {
                s.hung_open.fetch_sub(1, SeqCst);
            }
        }
    }
    Ok(())
}
