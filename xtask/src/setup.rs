//! `cargo xtask setup`: idempotent installation of what the build and tests need beyond a
//! fresh machine (Rust toolchains, gcc, Python, curl, iproute2). Versions are the ones
//! verified in ../shared/TOOLCHAIN.md.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run;

/// bpf-linker 0.10.0 loads rustc's own LLVM, so no system LLVM is needed.
const BPF_LINKER_VERSION: &str = "0.10.0";

/// Debian packages the test rigs and the benchmark call: ethtool (veth offloads),
/// iproute2 (namespaces), nftables (the kernel L4 balancing the benchmark compares with),
/// prometheus (the server the metrics test scrapes the daemon with; only its binary is
/// used, inside a test namespace).
const DEBIAN_PACKAGES: &[&str] = &["ethtool", "iproute2", "nftables", "prometheus"];

fn run_quiet(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ensure() -> Result<()> {
    let toolchains = run_quiet("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly Rust toolchain: the XDP program needs one (see ../shared/TOOLCHAIN.md)");
    }
    let components = run_quiet(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = run_quiet("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ]))?;
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !run_quiet("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}
