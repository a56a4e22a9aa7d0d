//! The connection table: a flow's first packet is scheduled and remembered; every later
//! packet follows the entry, whatever changed in the configuration since. Expiry is
//! checked on look-up against the entry's last-seen second, which a busy flow rewrites at
//! most once a second. The TCP state rules are `lb_common::conntrack`'s.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    SVC_F_EXPIRE_NODEST, SVC_F_PERSIST, ServiceValue,
    conntrack::{
        self, DEFAULT_TIMEOUTS, FLOW_F_EXPIRE_NODEST, FLOW_F_PERSIST, FLOW_F_REPLY, Flow,
        FlowKeyV4, STATES, WINDOW_INSERTS,
    },
    event::Event,
    reason::Reason,
};

use crate::{
    maps::{CONNTRACK_V4, SERVICE_PARAMS, SETTINGS},
    stats, window,
};

/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;

/// Seconds of CLOCK_MONOTONIC_COARSE: cheap, and fine-grained enough for timeouts.
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// What the connection table says about a packet.
pub enum Lookup {
    /// The flow's entry as this packet leaves it; `touched` when the packet changed its
    /// state or last-seen second (a NAT flow copies those to its other entry).
    Hit { flow: Flow, touched: bool },
    /// No entry.
    Miss,
    /// An entry that no longer holds (expired, or a new connection on a finished
    /// 5-tuple), already counted: schedule as new. Its NAT twin is the caller's to drop.
    Stale(Flow),
}

/// The idle timeout of `flow` in its state, from its service's parameters.
#[inline(always)]
fn timeout(flow: &Flow) -> u32 {
    let timeouts = SERVICE_PARAMS
        .get(u32::from(flow.service))
        .map_or(DEFAULT_TIMEOUTS, |p| p.timeouts);
    timeouts[flow.state as usize & (STATES - 1)]
}

/// Whether `flow` has outlived its idle timeout at `now`.
#[inline(always)]
pub fn is_expired(flow: &Flow, now: u32) -> bool {
    conntrack::expired(flow.last_seen, now, timeout(flow))
}

/// The flow's entry. Its service parameters (timeouts, flags) come from
/// `SERVICE_PARAMS` by the id the entry holds, an array read. A hit updates the entry's
/// state by the client's flags and, once a second, its last-seen time.
#[inline(always)]
pub fn lookup(key: &FlowKeyV4, tcp_flags: u8, now: u32) -> Lookup {
    let Some((entry, flow)) = find(key) else {
        return Lookup::Miss;
    };
    if is_expired(&flow, now) {
        stats::count_event(Event::CtExpired);
        return Lookup::Stale(flow);
    }
    // A reply entry under a client's key is the caller's to refuse; its state stays.
    let state = if flow.flags & FLOW_F_REPLY != 0 {
        flow.state
    } else {
        match conntrack::next_state(flow.state, tcp_flags) {
            Some(state) => state,
            None => {
                stats::count_event(Event::CtReused);
                return Lookup::Stale(flow);
            }
        }
    };
    let (flow, touched) = touch(entry, flow, state, now);
    Lookup::Hit { flow, touched }
}

/// The entry for `key`: a pointer to change it in place, and a copy.
#[inline(always)]
pub fn find(key: &FlowKeyV4) -> Option<(*mut Flow, Flow)> {
    let entry = CONNTRACK_V4.get_ptr_mut(key)?;
    // SAFETY: the pointer is valid for this program run (RCU); fields are plain integers,
    // and a racing update from another CPU can only leave another valid state or time.
    Some((entry, unsafe { *entry }))
}

/// Sets the entry's state and, once a second, its last-seen time; `touched` when either
/// changed.
#[inline(always)]
pub fn touch(entry: *mut Flow, mut flow: Flow, state: u8, now: u32) -> (Flow, bool) {
    let touched = state != flow.state || now != flow.last_seen;
    if touched {
        // SAFETY: as in `find`.
        unsafe {
            (*entry).state = state;
            (*entry).last_seen = now;
        }
        flow.state = state;
        flow.last_seen = now;
    }
    (flow, touched)
}

/// Whether the flood guard lets this CPU make another entry this second.
#[inline(always)]
pub fn admit(now: u32) -> bool {
    let rate = SETTINGS.get(0).map_or(0, |s| s.flood_rate);
    if rate != 0 && !window::admit(WINDOW_INSERTS, rate, now) {
        stats::count_event(Event::CtInsertRefused);
        return false;
    }
    true
}

/// A new entry for a flow scheduled to `real` (flags `FLOW_F_*` beyond the service's).
#[inline(always)]
pub fn entry(service: &ServiceValue, real: u32, real_gen: u32, state: u8, now: u32) -> Flow {
    Flow {
        real,
        real_gen,
        last_seen: now,
        state,
        flags: if service.flags & SVC_F_EXPIRE_NODEST != 0 {
            FLOW_F_EXPIRE_NODEST
        } else {
            0
        } | if service.flags & SVC_F_PERSIST != 0 {
            FLOW_F_PERSIST
        } else {
            0
        },
        // Service ids are below 65,536 (`limits.max_services`).
        service: service.id as u16,
        ..Flow::default()
    }
}

/// Writes an entry (`BPF_ANY` or `BPF_NOEXIST`); counts the outcome.
#[inline(always)]
pub fn store(key: &FlowKeyV4, flow: &Flow, flags: u64) -> bool {
    match CONNTRACK_V4.insert(key, flow, flags) {
        Ok(()) => {
            stats::count_event(Event::CtInsert);
            true
        }
        Err(_) => false,
    }
}

/// Remembers a newly scheduled direct-routing flow, unless the flood guard says this CPU
/// has made too many entries this second (the flow is forwarded all the same).
#[inline(always)]
pub fn insert(
    key: &FlowKeyV4,
    service: &ServiceValue,
    real: u32,
    real_gen: u32,
    state: u8,
    now: u32,
) {
    if !admit(now) {
        return;
    }
    if !store(key, &entry(service, real, real_gen, state, now), BPF_ANY) {
        stats::count_event(Event::CtInsertFailed);
    }
}

/// Deletes an entry (a NAT flow's twin when the flow ends early).
#[inline(always)]
pub fn remove(key: &FlowKeyV4) {
    let _ = CONNTRACK_V4.remove(key);
}

/// The entry's real server is gone (removed, or its index given to another real): LVS
/// `expire_nodest_conn`. The packet is dropped; with the service's flag the entry goes
/// too, so the flow's next packet is scheduled afresh.
#[inline(always)]
pub fn orphaned(key: &FlowKeyV4, expire_nodest: bool) -> Reason {
    if expire_nodest && CONNTRACK_V4.remove(key).is_ok() {
        stats::count_event(Event::CtNodestExpired);
    }
    Reason::DropRealRemoved
}

/// The entry for `key`, read only (for ICMP errors, which neither refresh nor change a
/// flow).
#[inline(always)]
pub fn peek(key: &FlowKeyV4) -> Option<Flow> {
    // SAFETY: the value is copied out at once.
    unsafe { CONNTRACK_V4.get(key) }.copied()
}

/// A pointer to the entry for `key`, to change it in place.
#[inline(always)]
pub fn entry_mut(key: &FlowKeyV4) -> Option<*mut Flow> {
    CONNTRACK_V4.get_ptr_mut(key)
}
