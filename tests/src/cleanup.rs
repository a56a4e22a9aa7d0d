//! A process-wide record of what the rigs made, so a signal can undo it all and a later
//! run can sweep what a killed one left behind.

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{Mutex, Once},
};

static NAMESPACES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static DAEMONS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

pub(crate) fn register_netns(name: &str) {
    NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_owned());
}

pub(crate) fn unregister_netns(name: &str) {
    NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
}

pub(crate) fn register_daemon(pid: u32) {
    DAEMONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
}

pub(crate) fn unregister_daemon(pid: u32) {
    DAEMONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

/// Removes everything registered: daemons first (so XDP detaches), then namespaces.
pub fn cleanup_all() {
    for pid in std::mem::take(&mut *DAEMONS.lock().unwrap_or_else(|e| e.into_inner())) {
        // SAFETY: kill(2) on a pid we started; a stale pid fails harmlessly.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    for name in std::mem::take(&mut *NAMESPACES.lock().unwrap_or_else(|e| e.into_inner())) {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        crate::remove_pins(&name);
    }
}

/// On SIGINT or SIGTERM: clean up, then exit with 128 + signal. For binaries (the demo);
/// the test harness relies on guards and on [`sweep_stale`].
pub fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Block the signals in this thread (and so in every thread spawned later), and
        // take them synchronously in a dedicated thread.
        // SAFETY: sigset manipulation on a zeroed, owned set.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        };
        std::thread::spawn(move || {
            let mut sig = 0;
            // SAFETY: sigwait on a set this thread has blocked.
            unsafe { libc::sigwait(&set, &mut sig) };
            eprintln!("\nsignal {sig}: cleaning up");
            cleanup_all();
            std::process::exit(128 + sig);
        });
    });
}

/// Deletes `xdpvs-<pid>-...` namespaces whose creating process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("xdpvs-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    // Pins of namespaces whose creating process is gone.
    let Ok(dirs) = std::fs::read_dir(crate::TEST_BPFFS) else {
        return;
    };
    for dir in dirs.filter_map(Result::ok) {
        let name = dir.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("xdpvs-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            crate::remove_pins(&name);
        }
    }
}
