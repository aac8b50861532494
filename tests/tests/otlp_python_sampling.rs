//! Head sampling at ratio 0 drops every ordinary request, yet errors and slow requests are
//! always exported (decided when they complete): checked at an independent receiver.
use std::time::Duration;

use anyhow::Result;
use tests::{
    agent::Agent,
    net::free_port,
    pyotlp::{PyReceiver, attr, kind, status_code},
    require_root,
    servers::{app_server, curl},
    unique,
};

const WAIT: Duration = Duration::from_secs(20);
const FAST: usize = 40;
const ERRORS: usize = 5;
const SLOW: usize = 3;

#[test]
fn ratio_zero_keeps_only_errors_and_slow_requests() -> Result<()> {
    if !require_root("ratio_zero_keeps_only_errors_and_slow_requests") {
        return Ok(());
    }
    let receiver = PyReceiver::start()?;
    let agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.http_endpoint(),
        "--traces-sampler",
        "traceidratio",
        "--traces-sampler-arg",
        "0",
        "--traces-slow-ms",
        "300",
    ])?;
    let port = free_port();
    let service = unique("it-pysampling");
    let _app = app_server(port, &service)?;
    let base = format!("http://127.0.0.1:{port}");
    for i in 0..FAST {
        curl(&["-o", "/dev/null", &format!("{base}/users/{i}")])?;
        // Not-found is not a server error: dropped too.
        if i % 10 == 0 {
            curl(&["-o", "/dev/null", &format!("{base}/nothing-here")])?;
        }
    }
    for _ in 0..ERRORS {
        curl(&["-o", "/dev/null", &format!("{base}/error")])?;
    }
    for i in 0..SLOW {
        curl(&["-o", "/dev/null", &format!("{base}/slow/s{i}?ms=700")])?;
    }
    for i in 0..FAST {
        curl(&["-o", "/dev/null", &format!("{base}/users/{i}")])?;
    }

    receiver.wait_spans(&service, ERRORS + SLOW, WAIT);
    // Spans wait up to a second for pairing and half a second for a batch: anything that
    // should not be exported would have arrived by now.
    std::thread::sleep(Duration::from_secs(3));
    let spans = receiver.service_spans(&service);
    let dump = || {
        let lines: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {:?}",
                    s["name"],
                    status_code(s),
                    attr(s, "http.response.status_code")
                )
            })
            .collect();
        format!("{lines:#?}\nagent log:\n{}", agent.log())
    };
    let errors: Vec<_> = spans.iter().filter(|s| s["name"] == "GET /error").collect();
    let slow: Vec<_> = spans
        .iter()
        .filter(|s| attr(s, "url.path").is_some_and(|p| p.starts_with("/slow/")))
        .collect();
    assert_eq!(errors.len(), ERRORS, "every error is kept: {}", dump());
    assert_eq!(slow.len(), SLOW, "every slow request is kept: {}", dump());
    assert_eq!(
        spans.len(),
        ERRORS + SLOW,
        "nothing else at ratio 0: {}",
        dump()
    );
    for s in &errors {
        assert_eq!(kind(s), "SPAN_KIND_SERVER");
        assert_eq!(status_code(s), "STATUS_CODE_ERROR", "{s:#}");
    }
    for s in &slow {
        assert_eq!(kind(s), "SPAN_KIND_SERVER");
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
        let ns = tests::pyotlp::nanos(s, "end_time_unix_nano")
            - tests::pyotlp::nanos(s, "start_time_unix_nano");
        assert!(ns >= 300_000_000, "slow: {ns} ns {s:#}");
    }
    Ok(())
}
