//! Test rigs for xdpvs, shared by the packet-level tests, the end-to-end tests and the
//! demo. Everything happens inside network namespaces this process creates, named
//! `xdpvs-<pid>-<n>-<role>`, with documentation address ranges only; every namespace is
//! deleted when its guard drops (panics included), on SIGINT/SIGTERM through
//! [`cleanup::install_signal_handler`], and namespaces left by a dead process are swept
//! at the next start.

pub mod bench;
pub mod checked;
pub mod cleanup;
pub mod differential;
pub mod model;
pub mod nat_rig;
pub mod netns;
pub mod packet;
pub mod rig;
pub mod traffic;

use std::path::{Path, PathBuf};

/// The bpffs the rigs' daemons pin under (`--bpf-dir`), one directory per director
/// namespace, removed with the namespace. Not /sys/fs/bpf: `ip netns exec` mounts a
/// fresh /sys for each command, so pins there would not outlive the daemon.
pub const TEST_BPFFS: &str = "/run/xdpvs-test/bpffs";

/// The `--bpf-dir` of a daemon in namespace `netns`; mounts [`TEST_BPFFS`] if needed.
pub fn bpf_dir(netns: &str) -> PathBuf {
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| {
        std::fs::create_dir_all(TEST_BPFFS).unwrap_or_else(|e| panic!("{TEST_BPFFS}: {e}"));
        if !lb_userspace::pins::is_bpffs(Path::new(TEST_BPFFS)).unwrap_or(false) {
            netns::run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", TEST_BPFFS]));
        }
    });
    Path::new(TEST_BPFFS).join(netns)
}

/// Removes the pins of a namespace's daemon (a killed daemon leaves them).
pub fn remove_pins(netns: &str) {
    let _ = std::fs::remove_dir_all(Path::new(TEST_BPFFS).join(netns));
}

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

/// A single-threaded tokio runtime, for calling the daemon's API from a test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
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
