//! Persistence (LVS `-p timeout -M netmask`): a persistent service keeps each client (its
//! address under the service's mask) on one real. The client's template in `PERSIST_V4`
//! names the real; a new flow follows it while it is live, and a flow's packets keep it
//! live (at most one write a second per flow, when the flow's own entry is touched). A
//! template expires `timeout` seconds after the last of them, and is not followed to a
//! real that was removed or takes no new clients.
//!
//! Keys and values are built in a per-CPU scratch map value, not on the stack, which the
//! forwarding path has filled; they are passed to the map helpers by reference on
//! purpose (by value, the compiler would copy them to the stack first).
#![allow(clippy::needless_borrows_for_generic_args)]

use lb_common::{
    REAL_F_QUIESCENT,
    conntrack::{self, Persist, PersistKeyV4, Scratch},
    event::Event,
};

use crate::{
    maps::{PERSIST_PARAMS, PERSIST_V4, REALS, SCRATCH},
    stats,
};

/// This CPU's scratch space with its template key set for `client` of service
/// `service`, and the service's timeout.
#[inline(always)]
fn scratch(service: u32, client: u32) -> Option<(*mut Scratch, u32)> {
    let params = PERSIST_PARAMS.get(service)?;
    let at = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own element, valid for this program run.
    unsafe {
        (*at).persist_key = PersistKeyV4 {
            service,
            client: client & params.mask,
        };
    }
    Some((at, params.timeout))
}

/// The real index this client's template keeps it on, if the template is live and its
/// real still the same and taking new clients. Refreshes it.
#[inline(always)]
pub fn kept(service: u32, client: u32, now: u32) -> Option<u32> {
    let real = kept_inner(service, client, now)?;
    stats::count_event(Event::PersistHit);
    Some(real)
}

#[inline(always)]
fn kept_inner(service: u32, client: u32, now: u32) -> Option<u32> {
    let (at, timeout) = scratch(service, client)?;
    // SAFETY: `at` is valid for this program run (see `scratch`).
    let entry = PERSIST_V4.get_ptr_mut(unsafe { &(*at).persist_key })?;
    // SAFETY: a valid map value for this program run (RCU); plain integers, and a racing
    // writer on another CPU leaves another valid template.
    let template = unsafe { *entry };
    if conntrack::expired(template.last_seen, now, timeout) {
        return None;
    }
    // SAFETY: read in place, not copied to the stack; the daemon replaces values whole.
    let r = unsafe { REALS.get(template.real) }?;
    if r.generation != template.real_gen || r.flags & REAL_F_QUIESCENT != 0 {
        return None;
    }
    if template.last_seen != now {
        // SAFETY: as above.
        unsafe { (*entry).last_seen = now };
    }
    Some(template.real)
}

/// Makes (or replaces) the client's template: it is kept on `real` from now on.
#[inline(always)]
pub fn remember(service: u32, client: u32, real: u32, now: u32) {
    // SAFETY: read in place; the daemon replaces values whole.
    let Some(real_gen) = (unsafe { REALS.get(real) }).map(|r| r.generation) else {
        return;
    };
    let Some((at, _)) = scratch(service, client) else {
        return;
    };
    stats::count_event(Event::PersistNew);
    // SAFETY: as in `kept`.
    unsafe {
        (*at).template = Persist {
            real,
            real_gen,
            last_seen: now,
            _pad: 0,
        };
        // A full table evicts its least recently used template; a failed write only
        // means the client's next flow is scheduled afresh.
        let _ = PERSIST_V4.insert(&(*at).persist_key, &(*at).template, 0);
    }
}

/// A packet of a persistent service's flow (on `real`) keeps its client's template live,
/// if the template still names that real.
#[inline(always)]
pub fn refresh(service: u16, client: u32, real: u32, now: u32) {
    let Some((at, _)) = scratch(u32::from(service), client) else {
        return;
    };
    // SAFETY: as in `kept`.
    let Some(entry) = PERSIST_V4.get_ptr_mut(unsafe { &(*at).persist_key }) else {
        return;
    };
    // SAFETY: as in `kept`.
    unsafe {
        if (*entry).real == real && (*entry).last_seen != now {
            (*entry).last_seen = now;
        }
    }
}
