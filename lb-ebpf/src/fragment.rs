//! Fragments to a virtual service. The first fragment carries the ports, so it is
//! scheduled like any packet and its real remembered under the datagram's reassembly key
//! (source, destination, protocol, IP id), as Cilium does; later fragments carry no ports
//! and follow that entry (under NAT, with the addresses the first fragment was given). A later fragment that arrives before its first (or after the
//! entry expired) cannot be placed: it is dropped and counted.

use lb_common::{
    conntrack::{self, FragKeyV4, FragValue},
    event::Event,
    reason::Reason,
};

use crate::{
    maps::{FRAGMENTS_V4, SETTINGS},
    parse::Ipv4Meta,
    stats,
};

#[inline(always)]
fn key(ip: &Ipv4Meta) -> FragKeyV4 {
    FragKeyV4 {
        src: ip.src[0],
        dst: ip.dst[0],
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// Remembers where a first fragment went.
#[inline(always)]
pub fn remember(ip: &Ipv4Meta, placed: FragValue) {
    let value = placed;
    if FRAGMENTS_V4.insert(key(ip), value, 0).is_ok() {
        stats::count_event(Event::FragFirst);
    }
}

/// Where a later fragment goes: its first fragment's real, while the entry lives.
#[inline(always)]
pub fn follow(ip: &Ipv4Meta, now: u32) -> Result<FragValue, Reason> {
    // SAFETY: the value is copied out at once.
    let value = unsafe { FRAGMENTS_V4.get(key(ip)) }
        .copied()
        .ok_or(Reason::DropFragmentUnknown)?;
    let timeout = SETTINGS
        .get(0)
        .map_or(conntrack::DEFAULT_FRAG_TIMEOUT, |s| s.frag_timeout);
    if conntrack::expired(value.created, now, timeout) {
        return Err(Reason::DropFragmentUnknown);
    }
    stats::count_event(Event::FragFollowed);
    Ok(value)
}
