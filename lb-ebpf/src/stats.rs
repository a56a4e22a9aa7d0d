//! Per-CPU counters: no atomics on the packet path; the daemon sums the CPUs.

use lb_common::{Counters, reason::Reason};

use crate::maps::{REAL_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(n) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU, and the pointer is valid.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
pub fn count_service(id: u32, bytes: u64) {
    add(SERVICE_STATS.get_ptr_mut(id), bytes);
}

#[inline(always)]
pub fn count_real(index: u32, bytes: u64) {
    add(REAL_STATS.get_ptr_mut(index), bytes);
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u64) {
    if let Some(c) = counters {
        // SAFETY: as in `count_reason`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
