//! The independent receiver itself, without the agent: traces and metrics over gRPC and
//! HTTP, sent by the official Python client stubs, read back through the harness; a body that
//! does not decode is recorded as such. (The agent's tests trust this receiver.)
use anyhow::{Result, bail};
use tests::{
    pyotlp::{PyReceiver, attr, id, kind, python},
    require_root,
    servers::curl,
};

/// Sends one trace request and one metrics request over gRPC and over HTTP.
const CLIENT: &str = r#"
import sys, urllib.request, grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as t, trace_service_pb2_grpc as tg
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as m, metrics_service_pb2_grpc as mg
grpc_port, http_port = sys.argv[1], sys.argv[2]
def traces(transport):
    r = t.ExportTraceServiceRequest()
    rs = r.resource_spans.add()
    kv = rs.resource.attributes.add(); kv.key = "service.name"; kv.value.string_value = "self-" + transport
    s = rs.scope_spans.add().spans.add()
    s.name = "GET /x"; s.kind = 2; s.trace_id = bytes(range(16)); s.span_id = bytes(range(8))
    a = s.attributes.add(); a.key = "http.response.status_code"; a.value.int_value = 200
    a = s.attributes.add(); a.key = "secret"; a.value.string_value = "NEEDLE-" + transport
    return r
def metrics(transport):
    r = m.ExportMetricsServiceRequest()
    rm = r.resource_metrics.add()
    kv = rm.resource.attributes.add(); kv.key = "service.name"; kv.value.string_value = "self-" + transport
    kv = rm.resource.attributes.add(); kv.key = "process.pid"; kv.value.int_value = 42
    metric = rm.scope_metrics.add().metrics.add()
    metric.name = "http.server.request.duration"
    p = metric.histogram.data_points.add(); p.count = 3; p.sum = 0.5
    return r
ch = grpc.insecure_channel("127.0.0.1:" + grpc_port)
tg.TraceServiceStub(ch).Export(traces("grpc"), timeout=10)
mg.MetricsServiceStub(ch).Export(metrics("grpc"), timeout=10)
for path, msg, resp in (("traces", traces("http"), t.ExportTraceServiceResponse),
                        ("metrics", metrics("http"), m.ExportMetricsServiceResponse)):
    req = urllib.request.Request("http://127.0.0.1:%s/v1/%s" % (http_port, path),
                                 data=msg.SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200, r.status
        resp.FromString(r.read())
print("sent")
"#;

#[test]
fn receiver_decodes_traces_and_metrics_over_grpc_and_http() -> Result<()> {
    if !require_root("receiver_decodes_traces_and_metrics_over_grpc_and_http") {
        return Ok(());
    }
    let receiver = PyReceiver::start()?;
    let out = std::process::Command::new(python())
        .args(["-c", CLIENT])
        .arg(receiver.grpc_port.to_string())
        .arg(receiver.http_port.to_string())
        .output()?;
    if !out.status.success() {
        bail!(
            "client failed: {}\nreceiver:\n{}",
            String::from_utf8_lossy(&out.stderr),
            receiver.stderr()
        );
    }
    let mut transports = receiver.transports("traces");
    transports.sort();
    assert_eq!(transports, ["grpc", "http"]);
    let mut transports = receiver.transports("metrics");
    transports.sort();
    assert_eq!(transports, ["grpc", "http"]);

    let mut spans = receiver.spans();
    spans.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for ((service, s), want) in spans.iter().zip(["self-grpc", "self-http"]) {
        assert_eq!(service, want);
        assert_eq!(s["name"], "GET /x");
        assert_eq!(kind(s), "SPAN_KIND_SERVER");
        assert_eq!(id(s, "trace_id"), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(id(s, "span_id"), "0001020304050607");
        assert_eq!(id(s, "parent_span_id"), "");
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    }
    let metrics = receiver.metrics();
    assert_eq!(metrics.len(), 2, "{metrics:#?}");
    for (service, res, metric) in &metrics {
        assert!(service.starts_with("self-"), "{service}");
        assert_eq!(res.get("process.pid").map(String::as_str), Some("42"));
        assert_eq!(metric["name"], "http.server.request.duration");
        assert_eq!(metric["histogram"]["data_points"][0]["count"], "3");
    }
    assert!(receiver.raw_contains(b"NEEDLE-grpc"));
    assert!(receiver.raw_contains(b"NEEDLE-http"));
    assert!(!receiver.raw_contains(b"NEEDLE-none"));
    assert!(receiver.decode_errors().is_empty());

    // Garbage is answered 400 and recorded as a decode error.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        "\u{7f}not protobuf",
        &format!("{}/v1/traces", receiver.http_endpoint()),
    ])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    assert_eq!(receiver.decode_errors().len(), 1);
    Ok(())
}
