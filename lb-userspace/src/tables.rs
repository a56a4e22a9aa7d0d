//! Scheduling tables in the kernel (`SCHED_TABLES`): each service's table is a map of its
//! own, created at the size it needs, filled through a memory mapping of it (one copy; a
//! batch update costs about 90 ns per element) and put in the service's row of the outer
//! map, which swaps it atomically. The kernel frees the old table once no program run
//! holds it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{MapData, MapError};
use aya_obj::generated::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, bpf_map_type::BPF_MAP_TYPE_ARRAY};

/// The flags of the program's inner-map template, which a table must have exactly:
/// `BPF_F_INNER_MAP` (tables of any size fit the outer map) and `BPF_F_MMAPABLE`.
const TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// A new table map holding `table` (real indices, two per element) after its length
/// (`lb_common::TABLE_LEN_SLOT`).
pub fn create(table: &[u32]) -> Result<MapData, MapError> {
    let mut values: Vec<[u32; 2]> = Vec::with_capacity(table.len().div_ceil(2) + 1);
    values.push([table.len() as u32, 0]);
    values.extend(
        table
            .chunks(2)
            .map(|c| [c[0], c.get(1).copied().unwrap_or(0)]),
    );
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<[u32; 2]>() as u32,
        values.len() as u32,
        TABLE_FLAGS,
    );
    let map = MapData::create(def, "xdpvs_table", None)?;
    write_mapped(map.fd().as_fd(), &values).map_err(|e| {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "mmap",
            io_error: e,
        })
    })?;
    Ok(map)
}

/// Copies `values` into a new mmapable array map from its first element (an array's
/// mapping starts at its values, each `[u32; 2]` in 8 bytes).
fn write_mapped(fd: BorrowedFd<'_>, values: &[[u32; 2]]) -> std::io::Result<()> {
    let bytes = size_of_val(values);
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let length = bytes.div_ceil(page).max(1) * page;
    // SAFETY: a fresh shared mapping of the map's own memory, of the length the kernel
    // gives an array of this many 8-byte values (rounded up to pages); nothing else
    // refers to it, and it is unmapped below.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), at.cast::<u8>(), bytes);
        libc::munmap(at, length);
    }
    Ok(())
}
