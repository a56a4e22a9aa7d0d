//! Per-CPU counters: no atomics on the packet path; the daemon sums the CPUs.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Counters,
    conntrack::{TCP_ACK, TCP_RST, TCP_SYN},
    event::Event,
    reason::Reason,
};

use crate::maps::{EVENTS, REAL_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    bump(REASONS.get_ptr_mut(reason as u32));
}

#[inline(always)]
pub fn count_event(event: Event) {
    bump(EVENTS.get_ptr_mut(event as u32));
}

/// A packet forwarded for service `id` to or from real `index`: its frame's bytes.
#[inline(always)]
pub fn count_forward(ctx: &XdpContext, id: u32, index: u32) {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count_service(id, bytes);
    count_real(index, bytes);
}

/// A new flow scheduled for service `id` to real `index`. (The VIP path's stack is at
/// the verifier's limit: called where `id` and `index` are live anyway, it adds none.)
#[inline(always)]
pub fn count_new_flow(id: u32, index: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: as in `bump`.
        unsafe { (*c).flows += 1 };
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(index) {
        // SAFETY: as in `bump`.
        unsafe { (*c).flows += 1 };
    }
}

/// A new flow's SYN sent on to real `index` of service `id` (the passive health
/// signal's handshakes: counted once forwarded, so a SYN the director dropped is not
/// taken for one the real left unanswered).
#[inline(always)]
pub fn count_syn(id: u32, index: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: as in `bump`.
        unsafe { (*c).syns += 1 };
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(index) {
        // SAFETY: as in `bump`.
        unsafe { (*c).syns += 1 };
    }
}

/// A NAT real's TCP answer with `flags`: its SYN-ACKs and RSTs, the passive health
/// signals (docs/HEALTH.md).
#[inline(always)]
pub fn count_answer(index: u32, flags: u8) {
    if flags & (TCP_RST | TCP_SYN) == 0 {
        return;
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(index) {
        // SAFETY: as in `bump`.
        unsafe {
            if flags & TCP_RST != 0 {
                (*c).resets += 1;
            } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                (*c).synacks += 1;
            }
        }
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
fn bump(n: Option<*mut u64>) {
    if let Some(n) = n {
        // SAFETY: a per-CPU slot is only written by this CPU, and the pointer is valid.
        unsafe { *n += 1 };
    }
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u64) {
    if let Some(c) = counters {
        // SAFETY: as in `bump`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
