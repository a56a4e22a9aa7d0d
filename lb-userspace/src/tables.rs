//! Scheduling tables in the kernel (`SCHED_TABLES`): each service's table is a map of its
//! own, created at the size it needs, filled in one `BPF_MAP_UPDATE_BATCH` call and put in
//! the service's row of the outer map with one update, which swaps it atomically. The
//! kernel frees the old table once no program run holds it. aya 0.14 has neither the batch
//! command nor a delete for map-of-maps rows, so both are plain `bpf(2)` calls here.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{MapData, MapError};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use lb_common::TABLE_LEN_SLOT;

/// `BPF_F_INNER_MAP`: the flag the program's inner-map template carries, so tables of any
/// size fit the outer map. A table must be created with exactly the template's flags.
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `bpf(2)` commands.
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr` as the map commands used here read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
    // SAFETY: `attr` is a live, initialised bpf_attr prefix of the size passed; the
    // pointers inside it point at buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
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

/// A new table map holding `table` (real indices, two per element) after its length,
/// written in one call (`lb_common::TABLE_LEN_SLOT`).
pub fn create(table: &[u32]) -> Result<MapData, MapError> {
    let mut values: Vec<[u32; 2]> = Vec::with_capacity(table.len().div_ceil(2) + 1);
    values.push([table.len() as u32, 0]);
    values.extend(
        table
            .chunks(2)
            .map(|c| [c[0], c.get(1).copied().unwrap_or(0)]),
    );
    let keys: Vec<u32> = (TABLE_LEN_SLOT..).take(values.len()).collect();
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<[u32; 2]>() as u32,
        values.len() as u32,
        BPF_F_INNER_MAP,
    );
    let map = MapData::create(def, "xdpvs_table", None)?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| syscall_error("bpf_map_update_batch", e))?;
    if attr.count as usize != values.len() {
        return Err(syscall_error(
            "bpf_map_update_batch",
            std::io::Error::other(format!("wrote {} of {}", attr.count, values.len())),
        ));
    }
    Ok(map)
}

/// Empties row `index` of a map of maps (absent already is fine).
pub fn clear(outer: BorrowedFd<'_>, index: u32) -> Result<(), MapError> {
    let mut attr = ElemAttr {
        map_fd: outer.as_raw_fd() as u32,
        key: std::ptr::from_ref(&index) as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(syscall_error("bpf_map_delete_elem", e)),
    }
}
