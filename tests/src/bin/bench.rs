//! `xdpvs-bench`, run by `cargo xtask bench`: per-packet cost, forwarding rate and
//! control-plane costs, printed as tables and optionally written to docs/PERFORMANCE.md.

use std::{path::PathBuf, process::ExitCode};

use xdpvs_testbed::{
    bench::{self, bench_cpu, control, per_packet, rate, report},
    cleanup, differential,
};

const USAGE: &str = "\
usage: xdpvs-bench [--quick] [--only per-packet,lru,rate,control,health,differential] [--rounds N]
                   [--iterations N] [--frames N] [--services N,N] [--write FILE]

  --quick       a smoke run: 1 round, few iterations, 100 services; figures mean little
  --only        parts to run (default: all)
  --rounds      rounds per figure (default 5)
  --iterations  BPF_PROG_TEST_RUN repeats per per-packet round (default 1000000)
  --frames      frames per forwarding-rate round (default 4000000)
  --services    service counts for the control-plane figures (default 1000,10000)
  --random N    frames of the differential run (default 20000000; quick 1000000)
  --write       replace the results block of this Markdown file";

/// The parts a run may make, in the order it makes them.
const PARTS: [&str; 6] = [
    "per-packet",
    "lru",
    "rate",
    "control",
    "health",
    "differential",
];

struct Options {
    parts: Vec<String>,
    rounds: usize,
    iterations: u32,
    frames: u32,
    services: Vec<usize>,
    random: u64,
    write: Option<PathBuf>,
    quick: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        parts: PARTS.map(str::to_owned).to_vec(),
        rounds: 5,
        iterations: 1_000_000,
        frames: 4_000_000,
        services: vec![1000, 10_000],
        random: 20_000_000,
        write: None,
        quick: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{arg}: {v:?} is not a positive number"))
        };
        match arg.as_str() {
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.iterations = 20_000;
                o.frames = 200_000;
                o.services = vec![100];
                o.random = 1_000_000;
            }
            "--only" => {
                o.parts = value()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: unknown part {bad:?}"));
                }
            }
            "--rounds" => o.rounds = number(value()?)? as usize,
            "--iterations" => {
                o.iterations =
                    u32::try_from(number(value()?)?).map_err(|_| format!("{arg}: too large"))?
            }
            "--frames" => {
                o.frames =
                    u32::try_from(number(value()?)?).map_err(|_| format!("{arg}: too large"))?
            }
            "--services" => {
                o.services = value()?
                    .split(',')
                    .map(|v| number(v.to_owned()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--random" => o.random = number(value()?)?,
            "--write" => o.write = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if !per_packet::fits_new_flows(o.rounds, o.iterations) {
        return Err(format!(
            "--rounds {} × --iterations {} is too many packets for a new-flow row: flows would \
             repeat (at most {} packets in all, two runs per round)",
            o.rounds,
            o.iterations,
            per_packet::NEW_FLOW_PACKETS
        ));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    xdpvs_testbed::require_root();
    cleanup::install_signal_handler();
    let cpu = bench_cpu();
    let command = std::env::var("XDPVS_BENCH_COMMAND")
        .unwrap_or_else(|_| format!("xdpvs-bench {}", args.join(" ")));
    let mut results = report::Results {
        command,
        settings: format!(
            "{} rounds; {} iterations per per-packet round; {} frames per rate round; \
             pinned to CPU {cpu}{}",
            options.rounds,
            options.iterations,
            options.frames,
            if options.quick {
                "; QUICK (smoke) run"
            } else {
                ""
            }
        ),
        ..Default::default()
    };
    let wants = |part: &str| options.parts.iter().any(|p| p == part);
    if wants("per-packet") {
        eprintln!("xdpvs-bench: per-packet cost …");
        results.per_packet = per_packet::measure(options.rounds, options.iterations, cpu);
    }
    if wants("lru") {
        eprintln!("xdpvs-bench: connection-table inserts …");
        results.lru = bench::lru::measure(options.rounds, options.iterations);
    }
    if wants("rate") || wants("control") {
        let rig = rate::Rig::new();
        if wants("rate") {
            eprintln!("xdpvs-bench: forwarding rate …");
            results.rate = rate::measure(&rig, options.rounds, options.frames, cpu);
        }
        if wants("control") {
            eprintln!("xdpvs-bench: control plane …");
            results.control = control::measure(&rig, &options.services);
        }
    }
    if wants("health") {
        eprintln!("xdpvs-bench: health checks of 1,000 reals …");
        results.health = bench::health::measure(options.quick);
    }
    if wants("differential") {
        eprintln!("xdpvs-bench: differential run …");
        let director = per_packet::Director::new();
        let started = std::time::Instant::now();
        let report = director.ns.enter(|| {
            let _rx_queue = xdpvs_testbed::rig::attach_pass(&director.ns, "xa0");
            differential::run(&director, options.random, 0x0078_6470_7673)
        });
        for d in &report.described {
            eprintln!("{d}");
        }
        results.differential = Some((
            report.frames,
            report.mismatches,
            report.counters.len(),
            started.elapsed().as_secs_f64(),
        ));
    }
    let block = results.markdown();
    println!("{block}");
    if let Some(path) = &options.write {
        if let Err(e) = report::write_block(path, &block) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("xdpvs-bench: results written to {}", path.display());
    }
    if results
        .differential
        .is_some_and(|(_, frames, counters, _)| frames + counters as u64 > 0)
    {
        eprintln!("xdpvs-bench: the program differs from its reference model (above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
