//! The one host setting xdpvs changes: IPv4 forwarding on the loopback interface.
//!
//! The program's next-hop fallback (`bpf_fib_lookup`, used only for a real whose next hop
//! the daemon has not resolved) starts its look-up from `lo`, and the kernel refuses any
//! look-up from an interface without forwarding. Forwarding on `lo` routes no transit
//! traffic: the kernel checks forwarding on the interface a packet *arrives* on, and
//! nothing arrives on `lo` from outside. The reals' interfaces are left alone, so the
//! director does not become a router.
//!
//! The value found is saved in a state file before it is changed. A clean stop puts it
//! back and removes the file; after a `kill -9` the next start finds the file and takes
//! the original value from it, so the host is repaired on the next stop.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Default directory of the state file.
pub const STATE_DIR: &str = "/run/xdpvs";

const LO_FORWARDING: &str = "/proc/sys/net/ipv4/conf/lo/forwarding";

/// Errors reading or writing the sysctl or the state file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct HostError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(path: &Path) -> impl Fn(io::Error) -> HostError + '_ {
    move |source| HostError {
        path: path.to_owned(),
        source,
    }
}

/// `<state_dir>/<stem>.<inode of this thread's network namespace>`: one file per
/// namespace, since each has its own `lo` and neighbour tables.
pub fn state_file(state_dir: &Path, stem: &str) -> PathBuf {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    state_dir.join(format!("{stem}.{netns}"))
}

/// Held while a daemon runs: one director per network namespace. An advisory lock
/// (`flock`) on `<state_dir>/lock.<netns inode>`, released by the kernel when the process
/// ends however it ends; the file holds the holder's pid for the message a second daemon
/// prints.
pub struct InstanceLock {
    _file: std::fs::File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another xdpvs daemon (pid {pid}) runs in this network namespace ({path}); \
         stop it first, or use `kill -HUP` to reload it"
    )]
    Held { pid: String, path: PathBuf },
    #[error(transparent)]
    Io(#[from] HostError),
}

impl InstanceLock {
    /// Takes the lock, or says who holds it. Call before touching anything.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, LockError> {
        use std::io::Write as _;
        std::fs::create_dir_all(state_dir).map_err(err(state_dir))?;
        let path = state_file(state_dir, "lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(LockError::Held {
                    pid: pid.trim().to_owned(),
                    path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(&path)(e).into()),
        }
        file.set_len(0).map_err(err(&path))?;
        write!(file, "{}", std::process::id()).map_err(err(&path))?;
        Ok(InstanceLock { _file: file })
    }
}

/// `lo` forwarding turned on by this daemon; [`LoForwarding::restore`] puts it back.
pub struct LoForwarding {
    state_file: PathBuf,
    original: Option<String>,
}

impl LoForwarding {
    /// Turns forwarding on for `lo`, saving the original value first.
    pub fn enable(state_dir: &Path) -> Result<LoForwarding, HostError> {
        let state_file = state_file(state_dir, "lo-forwarding");
        let sysctl = Path::new(LO_FORWARDING);
        let original = match std::fs::read_to_string(&state_file) {
            // A daemon that was killed left this: its value is the host's own.
            Ok(saved) => {
                log::info!(
                    "{} left by an earlier run: lo forwarding was {} before it",
                    state_file.display(),
                    saved.trim()
                );
                saved.trim().to_owned()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let now = std::fs::read_to_string(sysctl).map_err(err(sysctl))?;
                now.trim().to_owned()
            }
            Err(e) => return Err(err(&state_file)(e)),
        };
        if original == "1" {
            return Ok(LoForwarding {
                state_file,
                original: None,
            });
        }
        std::fs::create_dir_all(state_dir).map_err(err(state_dir))?;
        std::fs::write(&state_file, &original).map_err(err(&state_file))?;
        std::fs::write(sysctl, "1").map_err(err(sysctl))?;
        log::info!("enabled IPv4 forwarding on lo for the next-hop fallback (was {original})");
        Ok(LoForwarding {
            state_file,
            original: Some(original),
        })
    }

    /// Leaves forwarding on for a data path that outlives the daemon; the saved value
    /// stays in the state file for the next daemon or [`restore_lo_forwarding`].
    pub fn keep(mut self) {
        self.original = None;
    }

    /// Puts the original value back and removes the state file.
    pub fn restore(&mut self) {
        let Some(original) = self.original.take() else {
            return;
        };
        if let Err(e) = std::fs::write(LO_FORWARDING, &original) {
            log::warn!("restoring {LO_FORWARDING}: {e}");
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.state_file) {
            log::warn!("removing {}: {e}", self.state_file.display());
        }
    }
}

impl Drop for LoForwarding {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Puts back the `lo` forwarding value a daemon saved (and left, keeping its data path
/// running), and removes the state file; nothing saved, nothing to do.
pub fn restore_lo_forwarding(state_dir: &Path) -> Result<(), HostError> {
    let state_file = state_file(state_dir, "lo-forwarding");
    match std::fs::read_to_string(&state_file) {
        Ok(saved) => {
            let mut lo = LoForwarding {
                state_file,
                original: Some(saved.trim().to_owned()),
            };
            lo.restore();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(&state_file)(e)),
    }
}
