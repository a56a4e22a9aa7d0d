//! Builds the XDP program (lb-ebpf) with the nightly toolchain for bpfel-unknown-none and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. Its own target directory
//! (`target/bpf`) keeps the eBPF build incremental and separate from this stable build.

#[path = "build/btf_names.rs"]
mod btf_names;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("lb-userspace sits in the workspace root");
    let ebpf_dir = root.join("lb-ebpf");
    for watched in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            ebpf_dir.join(watched).display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("lb-common/src").display()
    );

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer (stable) build's compiler and flags must not leak into the nightly one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the XDP program ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the XDP program failed ({status}); if nightly rust-src or bpf-linker \
             is missing, run `cargo xtask setup`"
        );
    }
    let objects = target_dir.join("bpfel-unknown-none/release");
    copy(&objects.join("xdpvs"), &out_dir.join("xdpvs.bpf.o"));
    sanitize(&out_dir.join("xdpvs.bpf.o"));
    copy(
        &objects.join("xdpvs-bench"),
        &out_dir.join("xdpvs-bench.bpf.o"),
    );
}

/// Rewrites the BTF type names the kernel would refuse (see `btf_names`).
fn sanitize(object: &Path) {
    let mut bytes =
        std::fs::read(object).unwrap_or_else(|e| panic!("reading {}: {e}", object.display()));
    btf_names::sanitize(&mut bytes).unwrap_or_else(|e| panic!("{}: BTF: {e}", object.display()));
    std::fs::write(object, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", object.display()));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
