//! `cargo xtask`: set-up, build, test and demo for xdpvs.
//!
//! xtask depends on nothing of xdpvs itself, so `cargo xtask setup` runs on a fresh machine
//! before the eBPF toolchain exists.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo xdpvs")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (nightly rust-src, bpf-linker, Debian packages).
    Setup,
    /// Build the XDP program (nightly) and the daemon (stable) with the program embedded.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run every check and test: formatting, lints, unit, packet and end-to-end tests.
    Test {
        /// Arguments passed on to `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, start a client, a director and three reals in namespaces, send traffic
    /// through xdpvs and show which real answered, with the counters.
    Demo,
    /// Measure per-packet cost, connection-table inserts, forwarding rate and control-plane
    /// costs next to baselines and peers, run the differential check, print the tables and
    /// write them to docs/PERFORMANCE.md (not with --quick, a smoke run, nor with --only,
    /// a partial one). Arguments go to xdpvs-bench (`cargo xtask bench -- --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::ensure(),
        Task::Build { release } => {
            setup::ensure()?;
            let mut args = vec!["build", "--workspace", "--bins"];
            if release {
                args.push("--release");
            }
            cargo(&root, &args)
        }
        Task::Test { args } => test(&root, &args),
        Task::Bench { args } => bench(&root, &args),
        Task::Demo => {
            setup::ensure()?;
            build_tools(&root, false)?;
            let target = target_dir(&root);
            run(Command::new(target.join("debug/xdpvs-demo"))
                .env("XDPVS_BIN", target.join("debug/xdpvs")))
        }
    }
}

/// Builds the `xdpvs` binary and the testbed's binaries (demo, bench).
fn build_tools(root: &Path, release: bool) -> Result<()> {
    let mut args = vec![
        "build",
        "-p",
        "lb-userspace",
        "-p",
        "xdpvs-testbed",
        "--bins",
    ];
    if release {
        args.push("--release");
    }
    cargo(root, &args)
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    setup::ensure()?;
    build_tools(root, true)?;
    let target = target_dir(root);
    let mut cmd = Command::new(target.join("release/xdpvs-bench"));
    cmd.current_dir(root)
        .args(args)
        .env("XDPVS_BIN", target.join("release/xdpvs"))
        .env(
            "XDPVS_BENCH_COMMAND",
            format!("cargo xtask bench {}", args.join(" ")).trim_end(),
        );
    // A smoke or partial run would replace the full results with less.
    let smoke = args
        .iter()
        .any(|a| a == "--quick" || a == "--only" || a == "--help" || a == "-h");
    if !smoke && !args.iter().any(|a| a == "--write") {
        cmd.arg("--write").arg(root.join("docs/PERFORMANCE.md"));
    }
    run(&mut cmd)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    setup::ensure()?;
    step("formatting");
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    run(Command::new("cargo")
        .current_dir(root.join("lb-ebpf"))
        .args(["fmt", "--", "--check"]))?;
    step("lints (userspace, stable)");
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("lints (XDP program, nightly)");
    run(Command::new("rustup")
        .current_dir(root.join("lb-ebpf"))
        .args(["run", "nightly", "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir(root).join("bpf"))
        .args(["--", "-D", "warnings"])
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    step("build");
    cargo(root, &["build", "--workspace", "--all-targets"])?;
    step("tests");
    let bin = target_dir(root).join("debug/xdpvs");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--workspace"])
        .env("XDPVS_BIN", &bin);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let (passed, failed, status) = run_tallied(&mut cmd)?;
    // One closing line over every test binary (cargo's own last line is only the last
    // binary's, often the empty doc-test run).
    println!("\nxtask test: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_tallied(cmd: &mut Command) -> Result<(u64, u64, std::process::ExitStatus)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count_before(rest, " passed");
                failed += count_before(rest, " failed");
            }
        }
    }
    Ok((passed, failed, child.wait()?))
}

/// In "ok. 3 passed; 0 failed; ...", the number before `word`.
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| part.trim().strip_suffix(word))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args(args))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
