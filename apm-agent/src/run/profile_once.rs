//! `apm-agent profile`: a one-shot CPU profile of one or more processes (or all), written as
//! an SVG flame graph, folded stacks or pprof, with a progress indicator on stderr.
use std::{
    fs::File,
    io::{BufWriter, IsTerminal as _, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    cli::{Format, ProfileArgs},
    ebpf::{LoadError, LoadOptions, Probes, ProfilerLoad, profiler::SamplingOptions},
    os::unix_now,
    privileges,
    profiles::{flamegraph, folded, model::Profile, pprof},
};

use super::stack_sampler::{ProcessFilter, StackSampler};

/// Why a profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("insufficient privileges: missing {0}; run as root (sudo apm-agent profile ...)")]
    Privileges(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--pid {0}: no such process")]
    NoSuchProcess(u32),
}

/// How often samples are drained (and processes symbolized while they live).
const DRAIN_EVERY: Duration = Duration::from_secs(1);

pub fn run(args: &ProfileArgs) -> Result<(), ProfileError> {
    let needed = [
        privileges::REQUIRED[0],
        privileges::REQUIRED[1],
        privileges::REQUIRED[2],
    ];
    let missing = privileges::missing(privileges::effective(), &needed);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|n| n.name).collect();
        return Err(ProfileError::Privileges(names.join(", ")));
    }
    if let Some(&pid) = args
        .pids
        .iter()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        return Err(ProfileError::NoSuchProcess(pid));
    }
    let mut probes = Probes::load(&LoadOptions {
        agent_tgid: std::process::id(),
        capture_bytes: 1,
        ring_buffer_bytes: 4096,
        wakeup_bytes: 4096,
        max_sockets: 1,
        listen: None,
        library_events: false,
        profiler: Some(ProfilerLoad {
            count_entries: 16_384,
            stack_entries: 8192,
            kernel_stacks: !args.no_kernel_stacks,
            pid_filter: !args.pids.is_empty(),
        }),
    })?;
    let mut maps = probes.attach_profiler(SamplingOptions {
        frequency_hz: args.frequency,
        hardware_cycles: args.cycles,
    })?;
    maps.set_pids(&args.pids)?;
    let mut sampler = StackSampler::new(
        maps,
        16_384,
        ProcessFilter {
            pids: args.pids.clone(),
            executables: args.executables.clone(),
            services: args.services.clone(),
        },
        args.debug_info,
    );
    let mut profile = Profile::new(args.frequency, unix_now() * 1_000_000_000);
    let started = Instant::now();
    let mut progress = Progress::new(args.duration);
    eprintln!(
        "sampling {} at {} Hz for {:.1} s",
        if args.pids.is_empty() {
            "all processes".to_owned()
        } else {
            format!("pid {:?}", args.pids)
        },
        args.frequency,
        args.duration.as_secs_f64()
    );
    let mut next = started + DRAIN_EVERY;
    loop {
        let now = Instant::now();
        let end = started + args.duration;
        if now >= end {
            break;
        }
        if now < next {
            sampler.wait((next.min(end) - now).min(Duration::from_millis(200)));
            continue;
        }
        next = now + DRAIN_EVERY;
        for s in sampler.collect()? {
            profile.add(s.stack, s.count);
        }
        progress.show(started.elapsed(), profile.total());
    }
    for s in sampler.collect()? {
        profile.add(s.stack, s.count);
    }
    profile.duration_ns = started.elapsed().as_nanos() as u64;
    drop(probes);
    progress.finish(started.elapsed(), profile.total());

    let write_err = |source| ProfileError::Write {
        path: args.output.clone(),
        source,
    };
    let file = File::create(&args.output).map_err(write_err)?;
    let mut out = BufWriter::new(file);
    match args.format {
        Format::Svg => flamegraph::write_svg(&profile, "CPU profile (apm-agent)", &mut out),
        Format::Folded => folded::write(&profile, &mut out),
        Format::Pprof => pprof::write(&profile, &mut out),
    }
    .and_then(|()| out.flush())
    .map_err(write_err)?;
    eprintln!(
        "wrote {} ({} samples, {} distinct stacks, {} symbolization ms)",
        args.output.display(),
        profile.total(),
        profile.stacks.len(),
        sampler.symbolize_ns / 1_000_000
    );
    Ok(())
}

/// The progress line: rewritten in place on a terminal, a line every 5 s otherwise.
struct Progress {
    total: Duration,
    tty: bool,
    last_line: Instant,
}

impl Progress {
    fn new(total: Duration) -> Self {
        Self {
            total,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
        }
    }

    fn show(&mut self, elapsed: Duration, samples: u64) {
        let line = format!(
            "sampling {:>5.1}/{:.1} s  {samples} samples",
            elapsed.as_secs_f64().min(self.total.as_secs_f64()),
            self.total.as_secs_f64()
        );
        if self.tty {
            eprint!("\r{line}");
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("{line}");
        }
    }

    fn finish(&mut self, elapsed: Duration, samples: u64) {
        if self.tty {
            eprintln!();
        }
        eprintln!(
            "sampled {:.1} s: {samples} samples; symbolizing and writing",
            elapsed.as_secs_f64()
        );
    }
}
