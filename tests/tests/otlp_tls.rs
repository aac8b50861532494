//! OTLP/HTTP over TLS: the agent exports spans and metrics to an `https://` endpoint whose
//! certificate is signed by a private CA given with `--otlp-certificate`; without that CA the
//! exports fail (certificate not trusted), are counted, and nothing arrives.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use tests::{
    agent::Agent,
    net::free_port,
    otlp::str_attr,
    require_root,
    servers::{app_server, curl, python, temp_dir},
    servers_dir, unique,
};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed (`cert.pem`,
/// `key.pem`).
fn certificates(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=apm-agent-test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    )
}

/// Span names of `service` and metric names received so far in `dir`.
fn received(dir: &Path, service: &str) -> Result<(Vec<String>, Vec<String>)> {
    let (mut spans, mut metrics) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".bin") {
            continue;
        }
        let body = std::fs::read(&path)?;
        if name.ends_with("-traces.bin") {
            let req = ExportTraceServiceRequest::decode(body.as_slice())?;
            for rs in req.resource_spans {
                let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
                if str_attr(&attrs, "service.name").as_deref() == Some(service) {
                    spans.extend(
                        rs.scope_spans
                            .into_iter()
                            .flat_map(|s| s.spans)
                            .map(|s| s.name),
                    );
                }
            }
        } else if name.ends_with("-metrics.bin") {
            let req = ExportMetricsServiceRequest::decode(body.as_slice())?;
            for rm in req.resource_metrics {
                let attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
                if str_attr(&attrs, "service.name").as_deref() == Some(service) {
                    metrics.extend(
                        rm.scope_metrics
                            .into_iter()
                            .flat_map(|s| s.metrics)
                            .map(|m| m.name),
                    );
                }
            }
        }
    }
    Ok((spans, metrics))
}

#[test]
fn exports_over_https_with_a_private_ca_and_refuses_an_untrusted_one() -> Result<()> {
    if !require_root("exports_over_https_with_a_private_ca_and_refuses_an_untrusted_one") {
        return Ok(());
    }
    let dir = temp_dir("otlp-tls")?;
    certificates(&dir)?;
    let out = dir.join("received");
    std::fs::create_dir_all(&out)?;
    let sink_port = free_port();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let _sink = python(
        &[
            "tls_sink.py",
            &sink_port.to_string(),
            &cert.to_string_lossy(),
            &key.to_string_lossy(),
            &out.to_string_lossy(),
        ],
        &[],
        &servers_dir(),
        sink_port,
    )?;
    let endpoint = format!("https://127.0.0.1:{sink_port}");
    let app_port = free_port();
    let service = unique("it-tls");
    let _app = app_server(app_port, &service)?;
    let url = format!("http://127.0.0.1:{app_port}/users/1");

    // Without the CA: the certificate is not trusted, exports fail and are counted.
    {
        let agent = Agent::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--metric-export-interval-ms",
            "500",
        ])?;
        curl(&["-s", "-o", "/dev/null", &url])?;
        let failures = agent.settle(1.0, Duration::from_secs(20), |m| {
            m.sum("apm_export_failures_total", &[("signal", "metrics")])
                .min(1.0)
        })?;
        assert_eq!(
            failures,
            1.0,
            "untrusted certificate must fail\n{}",
            agent.log()
        );
        assert_eq!(
            received(&out, &service)?,
            (Vec::new(), Vec::new()),
            "nothing may arrive over an untrusted connection"
        );
    }

    let agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-certificate",
        &dir.join("ca.pem").to_string_lossy(),
        "--metric-export-interval-ms",
        "500",
    ])?;
    for _ in 0..3 {
        curl(&["-s", "-o", "/dev/null", &url])?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (spans, metrics) = loop {
        let got = received(&out, &service)?;
        if (got.0.len() >= 3 && !got.1.is_empty()) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        spans,
        vec!["GET /users/{id}"; 3],
        "spans over TLS\n{}",
        agent.log()
    );
    assert!(
        metrics.iter().any(|m| m == "http.server.request.duration"),
        "{metrics:?}"
    );
    Ok(())
}
