//! Real servers and clients started by the tests: Python servers, nginx, curl.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::net::{wait_addr, wait_port};

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Proc {
    /// Stops the process now (SIGTERM, then SIGKILL after 2 s), as dropping it does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..40 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(crate::unique(name));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `python3 args...` with `env`, and waits for `port` (of 127.0.0.1).
pub fn python(args: &[&str], env: &[(&str, &str)], cwd: &Path, port: u16) -> Result<Proc> {
    python_at(args, env, cwd, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Like [`python`], waiting for `addr` (an IPv6 listener: `[::1]:port`).
pub fn python_at(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    addr: SocketAddr,
) -> Result<Proc> {
    let child = Command::new("python3")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3")?;
    let proc = Proc::new(child);
    wait_addr(addr, Duration::from_secs(20))?;
    Ok(proc)
}

/// The test application server (`tests/servers/app.py`): HTTP/1.1 keep-alive, routes with
/// known statuses, bodies and timings. Runs as service `service`.
pub fn app_server(port: u16, service: &str) -> Result<Proc> {
    let dir = crate::servers_dir();
    python(
        &["app.py", &port.to_string()],
        &[("OTEL_SERVICE_NAME", service)],
        &dir,
        port,
    )
}

/// [`app_server`] listening on `addr` only (`--bind`: an IPv6 address such as `[::1]:port`).
pub fn app_server_at(addr: SocketAddr, service: &str) -> Result<Proc> {
    let dir = crate::servers_dir();
    let ip = addr.ip().to_string();
    python_at(
        &["app.py", &addr.port().to_string(), "--bind", &ip],
        &[("OTEL_SERVICE_NAME", service)],
        &dir,
        addr,
    )
}

/// nginx (Debian's) serving `www` on 127.0.0.1:`port`, one worker, in the foreground.
pub struct Nginx {
    pub proc: Proc,
    pub dir: PathBuf,
}

/// Settings of [`Nginx::start_tuned`] beyond the defaults of [`Nginx::start`].
#[derive(Debug, Clone)]
pub struct NginxTuning {
    pub workers: u32,
    /// `worker_connections` (every connection, client or upstream, of one worker).
    pub worker_connections: u32,
    /// `worker_rlimit_nofile`, when set (the soft fd limit of the workers).
    pub rlimit_nofile: Option<u64>,
    /// Directives added inside the `server` block, e.g. `location / { try_files ... }`.
    pub server_extra: String,
    /// Serve HTTP/2 (nginx 1.22's `listen ... http2`): with prior knowledge in cleartext,
    /// negotiated by ALPN over TLS.
    pub http2: bool,
}

impl Default for NginxTuning {
    fn default() -> Self {
        Self {
            workers: 1,
            worker_connections: 4096,
            rlimit_nofile: None,
            server_extra: String::new(),
            http2: false,
        }
    }
}

impl Nginx {
    /// Starts nginx with `files` (name, content) in its document root.
    pub fn start(port: u16, files: &[(&str, &[u8])], workers: u32) -> Result<Self> {
        let tuning = NginxTuning {
            workers,
            ..NginxTuning::default()
        };
        Self::start_with(port, files, &tuning, None)
    }

    /// Like [`Nginx::start`], with more connections, a higher fd limit or extra directives.
    pub fn start_tuned(port: u16, files: &[(&str, &[u8])], tuning: &NginxTuning) -> Result<Self> {
        Self::start_with(port, files, tuning, None)
    }

    /// Like [`Nginx::start`], serving HTTPS with the certificate and key at `tls`.
    pub fn start_https(port: u16, files: &[(&str, &[u8])], tls: &SelfSigned) -> Result<Self> {
        Self::start_with(port, files, &NginxTuning::default(), Some(tls))
    }

    /// HTTP/2 only: with prior knowledge (`tls` None), or over TLS with ALPN h2.
    pub fn start_http2(
        port: u16,
        files: &[(&str, &[u8])],
        tls: Option<&SelfSigned>,
    ) -> Result<Self> {
        let tuning = NginxTuning {
            http2: true,
            ..NginxTuning::default()
        };
        Self::start_with(port, files, &tuning, tls)
    }

    fn start_with(
        port: u16,
        files: &[(&str, &[u8])],
        tuning: &NginxTuning,
        tls: Option<&SelfSigned>,
    ) -> Result<Self> {
        let dir = temp_dir("nginx")?;
        let h2 = if tuning.http2 { " http2" } else { "" };
        let listen = match tls {
            Some(t) => format!(
                "listen 127.0.0.1:{port} ssl{h2}; ssl_certificate {}; ssl_certificate_key {};",
                t.cert.display(),
                t.key.display()
            ),
            None => format!("listen 127.0.0.1:{port}{h2};"),
        };
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        for (name, content) in files {
            std::fs::write(www.join(name), content)?;
        }
        let conf = dir.join("nginx.conf");
        let NginxTuning {
            workers,
            worker_connections,
            rlimit_nofile,
            server_extra,
            http2: _,
        } = tuning;
        let rlimit =
            rlimit_nofile.map_or(String::new(), |n| format!("worker_rlimit_nofile {n};\n"));
        std::fs::write(
            &conf,
            format!(
                "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n{rlimit}\
                 events {{ worker_connections {worker_connections}; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n\
                   proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   server {{ {listen} root {d}/www; {server_extra} }}\n}}\n",
                d = dir.display()
            ),
        )?;
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        let proc = Proc::new(child);
        wait_port(port, Duration::from_secs(20))?;
        Ok(Self { proc, dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for `localhost` and its key, made by the openssl command.
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSigned {
    /// Generates one in `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { cert, key })
    }
}

/// Runs curl with `args` (silent, output discarded unless asked) and checks it succeeded.
pub fn curl(args: &[&str]) -> Result<Output> {
    let out = Command::new("curl")
        .args(["-s", "-S"])
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
