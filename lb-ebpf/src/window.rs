//! Per-CPU rate limits in one-second windows (the connection-table flood guard, ICMP
//! errors): no atomics, each CPU counts its own, so the director-wide limit is the rate
//! times the CPUs that receive traffic.

use crate::maps::FLOOD;

/// Whether one more event fits in this CPU's `slot` window for second `now` at `rate`
/// per second; counts it if so. A missing slot (a daemon bug) admits nothing.
#[inline(always)]
pub fn admit(slot: u32, rate: u32, now: u32) -> bool {
    let Some(window) = FLOOD.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a per-CPU slot, only written by this CPU, and the pointer is valid.
    unsafe {
        if (*window).second != now {
            (*window).second = now;
            (*window).count = 0;
        }
        if (*window).count >= rate {
            return false;
        }
        (*window).count += 1;
    }
    true
}
