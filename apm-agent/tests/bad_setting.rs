//! A bad setting stops `apm-agent run` before anything happens to the host: the release or
//! debug binary, given a misspelled trace sampler in the environment, exits non-zero with a
//! message that names the key, the value and what is allowed. It fails in configuration
//! checking, before the privilege check, so it runs without root.
use std::process::Command;

#[test]
fn a_bad_sampler_in_the_environment_exits_naming_key_value_and_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_apm-agent"))
        .args(["run", "--no-console"])
        .env("OTEL_TRACES_SAMPLER", "parentbased_sometimes")
        // Not exporting at all: the sampler is checked even so.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .expect("the agent binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for part in ["traces_sampler", "parentbased_sometimes", "always_on"] {
        assert!(stderr.contains(part), "{part} missing from: {stderr}");
    }
}

#[test]
fn a_bad_selector_exits_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_apm-agent"))
        .args(["run", "--no-console", "--include", "port=http"])
        .output()
        .expect("the agent binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("include") && stderr.contains("port=http"),
        "{stderr}"
    );
}
