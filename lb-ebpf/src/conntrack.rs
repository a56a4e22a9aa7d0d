//! The connection table: a flow's first packet is scheduled and remembered; every later
//! packet follows the entry, whatever changed in the configuration since. Expiry is
//! checked on look-up against the entry's last-seen second, which a busy flow rewrites at
//! most once a second. The TCP state rules are `lb_common::conntrack`'s.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    SVC_F_EXPIRE_NODEST, ServiceValue,
    conntrack::{
        self, DEFAULT_TIMEOUTS, FLOW_F_EXPIRE_NODEST, Flow, FlowKeyV4, STATES, WINDOW_INSERTS,
    },
    event::Event,
    reason::Reason,
};

use crate::{
    maps::{CONNTRACK_V4, SERVICE_PARAMS, SETTINGS},
    stats, window,
};

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;

/// Seconds of CLOCK_MONOTONIC_COARSE: cheap, and fine-grained enough for timeouts.
#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// What the connection table says about a packet.
pub enum Lookup {
    /// The flow's entry: its real, its service's id, and whether an orphaned entry
    /// goes at once (`expire_nodest_conn` of its service when it was made).
    Hit {
        real: u32,
        real_gen: u32,
        service: u32,
        expire_nodest: bool,
    },
    /// No entry.
    Miss,
    /// An entry that no longer holds (expired, or a new connection on a finished
    /// 5-tuple), already counted: schedule as new.
    Stale,
}

/// The flow's entry. Its service parameters (timeouts, flags) come from
/// `SERVICE_PARAMS` by the id the entry holds, an array read. A hit updates the entry's
/// state and, once a second, its last-seen time.
#[inline(always)]
pub fn lookup(key: &FlowKeyV4, tcp_flags: u8, now: u32) -> Lookup {
    let Some(entry) = CONNTRACK_V4.get_ptr_mut(key) else {
        return Lookup::Miss;
    };
    // SAFETY: the pointer is valid for this program run (RCU); fields are plain integers,
    // and a racing update from another CPU can only leave another valid state or time.
    let flow = unsafe { *entry };
    let timeouts = SERVICE_PARAMS
        .get(u32::from(flow.service))
        .map_or(DEFAULT_TIMEOUTS, |p| p.timeouts);
    let timeout = timeouts[flow.state as usize & (STATES - 1)];
    if conntrack::expired(flow.last_seen, now, timeout) {
        stats::count_event(Event::CtExpired);
        return Lookup::Stale;
    }
    let Some(state) = conntrack::next_state(flow.state, tcp_flags) else {
        stats::count_event(Event::CtReused);
        return Lookup::Stale;
    };
    if state != flow.state || now != flow.last_seen {
        // SAFETY: as above.
        unsafe {
            (*entry).state = state;
            (*entry).last_seen = now;
        }
    }
    stats::count_event(Event::CtHit);
    Lookup::Hit {
        real: flow.real,
        real_gen: flow.real_gen,
        service: u32::from(flow.service),
        expire_nodest: flow.flags & FLOW_F_EXPIRE_NODEST != 0,
    }
}

/// Remembers a newly scheduled flow, unless the flood guard says this CPU has made too
/// many entries this second (the flow is forwarded all the same).
#[inline(always)]
pub fn insert(
    key: &FlowKeyV4,
    service: &ServiceValue,
    real: u32,
    real_gen: u32,
    state: u8,
    now: u32,
) {
    let rate = SETTINGS.get(0).map_or(0, |s| s.flood_rate);
    if rate != 0 && !window::admit(WINDOW_INSERTS, rate, now) {
        stats::count_event(Event::CtInsertRefused);
        return;
    }
    let flow = Flow {
        real,
        real_gen,
        last_seen: now,
        state,
        flags: if service.flags & SVC_F_EXPIRE_NODEST != 0 {
            FLOW_F_EXPIRE_NODEST
        } else {
            0
        },
        // Service ids are below 65,536 (`limits.max_services`).
        service: service.id as u16,
    };
    match CONNTRACK_V4.insert(key, flow, BPF_ANY) {
        Ok(()) => stats::count_event(Event::CtInsert),
        Err(_) => stats::count_event(Event::CtInsertFailed),
    }
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
