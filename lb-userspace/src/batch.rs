//! The `bpf(2)` map commands aya 0.14 has no wrapper for: `BPF_MAP_UPDATE_BATCH` (a
//! whole scheduling table, or many rows of the map of tables, in one call) and
//! `BPF_MAP_LOOKUP_BATCH` (a walk of the connection table in a few calls rather than two
//! per entry).

use std::os::fd::{AsRawFd, BorrowedFd};

use aya::{Pod, maps::MapError};
use aya_obj::generated::{
    bpf_attr__bindgen_ty_3 as BatchAttr,
    bpf_cmd::{self, BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH},
};

/// A batch command's attributes, all zero but `fill`'s.
fn batch_attr(fill: impl FnOnce(&mut BatchAttr)) -> BatchAttr {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: 0,
        values: 0,
        count: 0,
        map_fd: 0,
        elem_flags: 0,
        flags: 0,
    };
    fill(&mut attr);
    attr
}

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: `attr` is a live, initialised bpf_attr prefix of the size passed; the
    // pointers inside it point at buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn syscall_error(call: &'static str, io_error: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

/// Writes `values` under `keys` in one call; every element or an error.
pub fn update<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), MapError> {
    update_each(map, keys, values, 1)
}

/// As [`update`] for a per-CPU map: `values` holds `cpus` values (the possible CPUs) per
/// key, key after key.
pub fn update_each<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    cpus: usize,
) -> Result<(), MapError> {
    if keys.is_empty() {
        return Ok(());
    }
    let count = keys.len().min(values.len() / cpus.max(1));
    let mut attr = batch_attr(|a| {
        a.keys = keys.as_ptr() as u64;
        a.values = values.as_ptr() as u64;
        a.count = count as u32;
        a.map_fd = map.as_raw_fd() as u32;
    });
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| syscall_error("bpf_map_update_batch", e))?;
    if attr.count as usize != count {
        return Err(syscall_error(
            "bpf_map_update_batch",
            std::io::Error::other(format!("wrote {} of {count}", attr.count)),
        ));
    }
    Ok(())
}

/// Every element of a hash map, read in batches. Entries changed meanwhile may be seen
/// before or after the change, as with any walk of a live map.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
) -> Result<Vec<(K, V)>, MapError> {
    let mut out = Vec::new();
    let mut chunk = 4096usize;
    // The position token: a bucket number for hash maps (a u32; room for a key-sized one).
    let mut token_in = [0u8; 64];
    let mut token_out = [0u8; 64];
    let mut first = true;
    // One pair of buffers for the whole walk (grown only when a bucket overflows them).
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    loop {
        keys.resize(chunk, K::default());
        values.resize(chunk, V::default());
        let mut attr = batch_attr(|a| {
            a.in_batch = if first { 0 } else { token_in.as_ptr() as u64 };
            a.out_batch = token_out.as_mut_ptr() as u64;
            a.keys = keys.as_mut_ptr() as u64;
            a.values = values.as_mut_ptr() as u64;
            a.count = chunk as u32;
            a.map_fd = map.as_raw_fd() as u32;
        });
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(chunk);
        out.extend(keys.iter().copied().zip(values.iter().copied()).take(got));
        match result {
            Ok(()) => {
                token_in = token_out;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            // A bucket holds more entries than the buffers: larger ones, same position.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => chunk *= 4,
            Err(e) => return Err(syscall_error("bpf_map_lookup_batch", e)),
        }
    }
}
