//! The CPU profiler end to end, on a workload with a known CPU split (tests/workloads/split.c)
//! built with frame pointers: attribution and sample counts against the workload's own CPU
//! time, kernel frames under user frames, stripped binaries, each output format read by the
//! tool it is for (Chromium + OCR for the SVG, `go tool pprof`, a folded parser), and the
//! continuous store and its budget behind the web UI.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use tests::{
    agent::Agent,
    net::{http_get, http_get_bytes},
    profile::{ProfileRun, of_service, read_folded, roots_summary},
    require_root,
    servers::temp_dir,
    unique,
    workloads::{self, build_id, function_at, workload},
};

const FREQUENCY: f64 = 99.0;
const FINISH: Duration = Duration::from_secs(90);

fn samples(stacks: &[(Vec<String>, u64)], pred: impl Fn(&[String]) -> bool) -> u64 {
    stacks.iter().filter(|(f, _)| pred(f)).map(|(_, n)| n).sum()
}

fn has(frame: &'static str) -> impl Fn(&[String]) -> bool {
    move |frames| frames.iter().any(|f| f == frame)
}

/// How far (in percentage points) a share measured from `samples` samples may sit from the
/// true `percent`: four standard deviations of a binomial proportion, at least 5 points.
fn share_tolerance(percent: f64, samples: u64) -> f64 {
    let p = (percent / 100.0).clamp(0.0, 1.0);
    let sd = (p * (1.0 - p) / samples.max(1) as f64).sqrt() * 100.0;
    (4.0 * sd).max(5.0)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn known_split_and_sample_count_match_the_workloads_cpu_time() -> Result<()> {
    if !require_root("known_split_and_sample_count_match_the_workloads_cpu_time") {
        return Ok(());
    }
    let w = workload()?;
    let dir = temp_dir("prof-split")?;
    let out = dir.join("split.folded");
    let run = ProfileRun::start(&[
        "--all",
        "--duration",
        "14s",
        "--format",
        "folded",
        "-o",
        s(&out),
    ])?;
    let service = unique("it-split");
    // The workload starts after sampling began and ends before it stops, then exits: its
    // last samples are symbolized after it is gone.
    let figures = workloads::run_figures(&w.binary, "cpu", 6.0, &service)?;
    let (cpu, in_alpha, in_beta) = match figures[..] {
        [cpu, _, a, b, ..] => (cpu, a, b),
        _ => bail!("the workload printed {figures:?}"),
    };
    // 75/25 on real hardware; what the workload itself measured wherever it runs (an
    // emulated CPU, as in the kernel matrix, does not run the two loops at the same speed).
    let want_alpha = in_alpha / cpu * 100.0;
    let want_beta = in_beta / cpu * 100.0;
    run.finish(FINISH)?;
    let folded = read_folded(&out)?;
    let mine = of_service(&folded, &service);
    let total: u64 = mine.iter().map(|(_, n)| n).sum();
    let expected = FREQUENCY * cpu;
    if total == 0 {
        eprintln!(
            "no sample under {service:?}; the profile's roots:\n{}",
            roots_summary(&folded, "hot_alpha")
        );
    }
    let alpha = samples(&mine, has("hot_alpha")) as f64 / total as f64 * 100.0;
    let beta = samples(&mine, has("hot_beta")) as f64 / total as f64 * 100.0;
    eprintln!(
        "cpu {cpu:.2} s, {total} samples (expected {expected:.0}), alpha {alpha:.1}% \
         (measured {want_alpha:.1}%), beta {beta:.1}% (measured {want_beta:.1}%)"
    );
    assert!(
        (total as f64 - expected).abs() <= expected * 0.10,
        "{total} samples for {cpu:.2} s of CPU at {FREQUENCY} Hz"
    );
    // A share read from n samples is off by sqrt(p(1-p)/n) at one standard deviation (1.8
    // points at 75% of 594 samples): a fixed ± 5 is 2.8 of those, and CI saw 80.1% against a
    // measured 74.7% on a shared machine. Four standard deviations, and never under 5 points.
    let alpha_tol = share_tolerance(want_alpha, total);
    let beta_tol = share_tolerance(want_beta, total);
    assert!(
        (alpha - want_alpha).abs() <= alpha_tol,
        "hot_alpha {alpha:.1}% (the workload measured {want_alpha:.1}%: want that ± \
         {alpha_tol:.1})"
    );
    assert!(
        (beta - want_beta).abs() <= beta_tol,
        "hot_beta {beta:.1}% (the workload measured {want_beta:.1}%: want that ± {beta_tol:.1})"
    );
    Ok(())
}

#[test]
fn syscall_heavy_workload_shows_kernel_frames_under_user_frames() -> Result<()> {
    if !require_root("syscall_heavy_workload_shows_kernel_frames_under_user_frames") {
        return Ok(());
    }
    let w = workload()?;
    let dir = temp_dir("prof-sys")?;
    let out = dir.join("sys.folded");
    let run = ProfileRun::start(&[
        "--all",
        "--duration",
        "8s",
        "--format",
        "folded",
        "-o",
        s(&out),
    ])?;
    let service = unique("it-syscalls");
    workloads::run(&w.binary, "syscalls", 3.0, &service)?;
    run.finish(FINISH)?;
    let mine = of_service(&read_folded(&out)?, &service);
    let total: u64 = mine.iter().map(|(_, n)| n).sum();
    // syscall_spin, then only kernel frames below it.
    let kernel_under_user = samples(&mine, |frames| {
        frames
            .iter()
            .position(|f| f == "syscall_spin")
            .is_some_and(|i| {
                frames.len() > i + 1 && frames[i + 1..].iter().all(|f| f.ends_with("_[k]"))
            })
    });
    assert!(total > 100, "only {total} samples");
    assert!(
        kernel_under_user * 2 >= total,
        "{kernel_under_user} of {total} samples have kernel frames under syscall_spin:\n{mine:?}"
    );
    Ok(())
}

#[test]
fn stripped_binary_keeps_build_id_and_offsets_that_resolve_later() -> Result<()> {
    if !require_root("stripped_binary_keeps_build_id_and_offsets_that_resolve_later") {
        return Ok(());
    }
    let w = workload()?;
    let dir = temp_dir("prof-strip")?;
    let folded = dir.join("stripped.folded");
    let pprof = dir.join("stripped.pb.gz");
    let a = ProfileRun::start(&[
        "--all",
        "--duration",
        "8s",
        "--format",
        "folded",
        "-o",
        s(&folded),
    ])?;
    let b = ProfileRun::start(&[
        "--all",
        "--duration",
        "8s",
        "--format",
        "pprof",
        "-o",
        s(&pprof),
    ])?;
    let service = unique("it-stripped");
    workloads::run(&w.stripped, "cpu", 3.0, &service)?;
    a.finish(FINISH)?;
    b.finish(FINISH)?;

    // Leaf frames are `[unknown] split-stripped+0x...`.
    let all = read_folded(&folded)?;
    let mine = of_service(&all, &service);
    let total: u64 = mine.iter().map(|(_, n)| n).sum();
    let roots: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|(f, _)| f.first().map(String::as_str))
        .collect();
    assert!(total > 0, "no samples under {service}; roots: {roots:?}");
    let mut by_offset: Vec<(u64, u64)> = Vec::new();
    for (frames, n) in &mine {
        let Some(leaf) = frames.last() else { continue };
        if let Some(off) = leaf.strip_prefix("[unknown] split-stripped+0x") {
            by_offset.push((u64::from_str_radix(off, 16)?, *n));
        }
    }
    let unknown: u64 = by_offset.iter().map(|(_, n)| n).sum();
    assert!(
        unknown * 10 >= total * 9,
        "{unknown} of {total} leaves are module+offset frames: {mine:?}"
    );

    // Symbolizing those offsets against the unstripped file (binutils) names the functions.
    let offsets: Vec<u64> = by_offset.iter().map(|(o, _)| *o).collect();
    let names = function_at(&w.binary, &offsets)?;
    let weight = |name: &str| -> u64 {
        names
            .iter()
            .zip(&by_offset)
            .filter(|(n, _)| *n == name)
            .map(|(_, (_, c))| c)
            .sum()
    };
    let (alpha, beta) = (weight("hot_alpha"), weight("hot_beta"));
    assert!(
        (alpha + beta) * 100 >= unknown * 85,
        "alpha {alpha} + beta {beta} of {unknown}: {names:?}"
    );
    let share = alpha as f64 / (alpha + beta) as f64 * 100.0;
    assert!((share - 75.0).abs() <= 7.0, "hot_alpha share {share:.1}%");

    // The pprof mapping carries the build id (the same in the stripped and unstripped file).
    let id = build_id(&w.stripped)?;
    assert_eq!(id, build_id(&w.binary)?);
    let raw = Command::new("gzip").arg("-dc").arg(&pprof).output()?.stdout;
    assert!(
        raw.windows(id.len()).any(|win| win == id.as_bytes()),
        "build id {id} not in the pprof file"
    );
    Ok(())
}

/// Screenshot of `svg` in headless Chromium, read back with OCR. The flame graph's palette
/// puts black text on warm colours: the red channel alone makes it black on light.
fn screenshot_text(svg: &Path, dir: &Path) -> Result<String> {
    let png_path = dir.join("flamegraph.png");
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=3",
            "--window-size=1400,600",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", svg.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running chromium")?;
    if !status.success() || !png_path.exists() {
        bail!("chromium made no screenshot ({status})");
    }
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf)?;
    let channels = info.color_type.samples();
    let red: Vec<u8> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|px| px[0])
        .collect();
    let pgm = dir.join("flamegraph-red.pgm");
    let mut data = format!("P5\n{} {}\n255\n", info.width, info.height).into_bytes();
    data.extend_from_slice(&red);
    std::fs::write(&pgm, data)?;
    let out = Command::new("tesseract")
        .arg(&pgm)
        .args(["-", "--psm", "11"])
        .output()
        .context("running tesseract")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn each_output_opens_in_the_tool_it_is_for() -> Result<()> {
    if !require_root("each_output_opens_in_the_tool_it_is_for") {
        return Ok(());
    }
    let w = workload()?;
    let dir = temp_dir("prof-out")?;
    let (svg, pprof, folded) = (dir.join("p.svg"), dir.join("p.pb.gz"), dir.join("p.folded"));
    let service = unique("it-outputs");
    let runs = [
        ProfileRun::start(&[
            "--all",
            "--service",
            &service,
            "--duration",
            "8s",
            "--format",
            "svg",
            "-o",
            s(&svg),
        ])?,
        ProfileRun::start(&[
            "--all",
            "--duration",
            "8s",
            "--format",
            "pprof",
            "-o",
            s(&pprof),
        ])?,
        ProfileRun::start(&[
            "--all",
            "--duration",
            "8s",
            "--format",
            "folded",
            "-o",
            s(&folded),
        ])?,
    ];
    workloads::run(&w.binary, "cpu", 3.0, &service)?;
    for run in runs {
        run.finish(FINISH)?;
    }

    // OCR often reads `_` as a space: compare letters and digits only.
    let letters = |s: &str| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
    };
    let text = screenshot_text(&svg, &dir)?;
    let read = letters(&text);
    for name in ["hot_alpha", "hot_beta", "main"] {
        assert!(
            read.contains(&letters(name)),
            "{name} not read in the screenshot: {text:?}"
        );
    }

    let out = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            &format!("-tagfocus=service={service}"),
        ])
        .arg(&pprof)
        .env("HOME", &dir)
        .output()
        .context("running go tool pprof")?;
    let top = String::from_utf8_lossy(&out.stdout);
    let first = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .with_context(|| format!("no rows: {top}{}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(
        first.ends_with(" hot_alpha"),
        "top function: {first:?}\n{top}"
    );

    let mine = of_service(&read_folded(&folded)?, &service);
    let top_leaf = mine
        .iter()
        .max_by_key(|(_, n)| *n)
        .and_then(|(f, _)| f.last().cloned());
    assert_eq!(top_leaf.as_deref(), Some("hot_alpha"));
    Ok(())
}

#[test]
fn continuous_store_stays_within_its_budget_under_many_distinct_stacks() -> Result<()> {
    if !require_root("continuous_store_stays_within_its_budget_under_many_distinct_stacks") {
        return Ok(());
    }
    let w = workload()?;
    let budget = 64 * 1024;
    let agent = Agent::start(&["--profile-store-bytes", &budget.to_string()])?;
    let deep = unique("it-deep");
    let binary = w.binary.clone();
    let stress = std::thread::spawn(move || workloads::run(&binary, "deep", 6.0, &deep));
    let mut peak = 0.0f64;
    let mut overflowed = 0.0;
    // Watch the store while the workload runs and a few drains after it.
    let until = std::time::Instant::now() + Duration::from_secs(14);
    while std::time::Instant::now() < until {
        let m = agent.metrics()?;
        peak = peak.max(m.value("apm_profile_store_bytes"));
        overflowed = m.sum("apm_profile_lost_total", &[("reason", "store_full")])
            + m.value("apm_profile_store_evicted_total");
        std::thread::sleep(Duration::from_millis(250));
    }
    stress
        .join()
        .map_err(|_| anyhow::anyhow!("workload thread panicked"))??;
    eprintln!("peak {peak} bytes of {budget}; overflow counted {overflowed}");
    assert!(peak > 0.0, "nothing was stored");
    assert!(
        peak <= budget as f64,
        "store grew to {peak} bytes, budget {budget}"
    );
    assert!(
        overflowed > 0.0,
        "the workload never reached the budget: the test proves nothing"
    );
    Ok(())
}

#[test]
fn continuous_profiles_are_served_by_the_web_ui() -> Result<()> {
    if !require_root("continuous_profiles_are_served_by_the_web_ui") {
        return Ok(());
    }
    let w = workload()?;
    let agent = Agent::start(&[])?;
    let service = unique("it-cont");
    let figures = workloads::run_figures(&w.binary, "cpu", 3.0, &service)?;
    let (cpu, in_alpha) = match figures[..] {
        [cpu, _, a, ..] => (cpu, a),
        _ => bail!("the workload printed {figures:?}"),
    };
    // Samples reach the store at each drain (every 2 s): wait until the count settles.
    let expected = FREQUENCY * cpu;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut previous = None;
    let listed_samples = loop {
        let (_, body) = http_get(agent.port, "/api/profiles/services?minutes=5")?;
        let listing: serde_json::Value = serde_json::from_str(&body)?;
        let n = listing["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["service"] == service.as_str()))
            .and_then(|s| s["samples"].as_u64());
        let settled = n.is_some() && n == previous;
        if settled || std::time::Instant::now() > deadline {
            break n.with_context(|| format!("{service} not listed: {body}"))?;
        }
        previous = n;
        std::thread::sleep(Duration::from_millis(2500));
    };
    assert!(
        (listed_samples as f64 - expected).abs() <= expected * 0.15,
        "{listed_samples} samples for 3 s of CPU"
    );
    let (status, page) = http_get(agent.port, "/profiles?minutes=5")?;
    assert_eq!(status, 200);
    assert!(page.contains(&service), "service not on the page");
    let q = format!("service={service}&minutes=5");
    let (status, svg) = http_get(agent.port, &format!("/profiles/flamegraph.svg?{q}"))?;
    assert_eq!(status, 200);
    assert!(
        svg.contains("<svg") && svg.contains("hot_alpha"),
        "no hot_alpha in the SVG"
    );
    let (_, folded) = http_get(agent.port, &format!("/profiles/folded?{q}"))?;
    let dir = temp_dir("prof-cont")?;
    std::fs::write(dir.join("c.folded"), &folded)?;
    let stacks = read_folded(&dir.join("c.folded"))?;
    assert!(!stacks.is_empty());
    assert!(
        stacks.iter().all(|(f, _)| f.first() == Some(&service)),
        "other services leaked in"
    );
    let alpha = samples(&stacks, has("hot_alpha")) as f64;
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    // The share the workload measured itself, within four binomial standard deviations (as in
    // the split test): CI saw a fixed 75 ± 7 fail on a shared machine.
    let want_alpha = in_alpha / cpu * 100.0;
    let share = alpha / total as f64 * 100.0;
    let tolerance = share_tolerance(want_alpha, total);
    eprintln!("hot_alpha {share:.1}% of {total} samples, measured {want_alpha:.1}%");
    if (share - want_alpha).abs() > tolerance {
        eprintln!("folded:\n{folded}");
    }
    assert!(
        (share - want_alpha).abs() <= tolerance,
        "hot_alpha {share:.1}% of {total} samples (the workload measured {want_alpha:.1}%: \
         want that ± {tolerance:.1})"
    );
    let (status, pprof) = http_get_bytes(agent.port, &format!("/profiles/pprof?{q}"))?;
    assert_eq!(status, 200);
    let path = dir.join("c.pb.gz");
    std::fs::write(&path, &pprof)?;
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&path)
        .env("HOME", &dir)
        .output()?;
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(top.contains(" hot_alpha"), "go tool pprof:\n{top}");
    Ok(())
}
