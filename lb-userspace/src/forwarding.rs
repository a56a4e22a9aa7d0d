//! IPv4 forwarding on the interfaces towards the reals.
//!
//! `bpf_fib_lookup` answers FWD_DISABLED unless `net.ipv4.conf.<iface>.forwarding` is 1 on
//! the interface it looks up, even for output lookups, so direct routing needs it on each
//! real's egress interface. The daemon turns it on where it is off, says so, and puts the
//! old value back when it stops. (Replies do not come back through the director under
//! direct routing, so this does not put the director in the reply path.)

use std::{ffi::CStr, io, path::PathBuf};

/// Errors reading or writing the sysctl.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ForwardingError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Interfaces whose forwarding this daemon turned on; turned off again when dropped.
#[derive(Default)]
pub struct ForwardingGuard {
    changed: Vec<PathBuf>,
}

impl ForwardingGuard {
    /// Makes sure forwarding is on for the interface with this index.
    pub fn ensure(&mut self, ifindex: u32) -> Result<(), ForwardingError> {
        let name = interface_name(ifindex).map_err(|source| ForwardingError {
            path: PathBuf::from(format!("ifindex {ifindex}")),
            source,
        })?;
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{name}/forwarding"));
        if self.changed.contains(&path) {
            return Ok(());
        }
        let err = |source| ForwardingError {
            path: path.clone(),
            source,
        };
        let now = std::fs::read_to_string(&path).map_err(err)?;
        if now.trim() != "1" {
            std::fs::write(&path, "1").map_err(err)?;
            log::info!("enabled IPv4 forwarding on {name} (bpf_fib_lookup needs it)");
            self.changed.push(path);
        }
        Ok(())
    }

    /// Puts back every value this guard changed.
    pub fn restore(&mut self) {
        for path in std::mem::take(&mut self.changed) {
            if let Err(e) = std::fs::write(&path, "0") {
                log::warn!("restoring {}: {e}", path.display());
            }
        }
    }
}

impl Drop for ForwardingGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}
