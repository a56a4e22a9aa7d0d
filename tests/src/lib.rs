//! Test rigs for xdpvs, shared by the packet-level tests, the end-to-end tests and the
//! demo. Everything happens inside network namespaces this process creates, named
//! `xdpvs-<pid>-<n>-<role>`, with documentation address ranges only; every namespace is
//! deleted when its guard drops (panics included), on SIGINT/SIGTERM through
//! [`cleanup::install_signal_handler`], and namespaces left by a dead process are swept
//! at the next start.

pub mod bench;
pub mod cleanup;
pub mod differential;
pub mod model;
pub mod nat_rig;
pub mod netns;
pub mod packet;
pub mod rig;
pub mod traffic;

use std::path::PathBuf;

/// The `xdpvs` binary under test: `$XDPVS_BIN`, or the workspace's debug build.
pub fn xdpvs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPVS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/xdpvs");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo xtask test` does) or set XDPVS_BIN",
        bin.display()
    );
    bin
}

/// Fails clearly when the tests cannot work here.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and load XDP programs: run them as root"
    );
}
