//! Picks the real server for a flow's first packet: the flow hash indexes the service's
//! row of `SCHED_TABLE`, which the daemon filled in proportion to the reals' weights
//! (lb-userspace `scheduler`). The hash is `lb_common::hash`, so the daemon can predict
//! every choice.

use lb_common::{
    REAL_NONE, SCHED_DH, SCHED_SLOTS, ServiceValue,
    hash::{addr_hash, slot_of},
    reason::Reason,
};

use crate::{maps::SCHED_TABLE, parse::Ipv4Meta};

/// The real index for this packet.
#[inline(always)]
pub fn pick(service: &ServiceValue, ip: &Ipv4Meta) -> Result<u32, Reason> {
    // sh hashes the client address, dh the destination address.
    let addr = if service.scheduler == SCHED_DH {
        &ip.dst
    } else {
        &ip.src
    };
    let slot = slot_of(addr_hash(addr, service.hash_seed));
    let index = service
        .id
        .checked_mul(SCHED_SLOTS)
        .and_then(|row| row.checked_add(slot))
        .ok_or(Reason::DropInternal)?;
    let real_index = *SCHED_TABLE.get(index).ok_or(Reason::DropInternal)?;
    if real_index == REAL_NONE {
        return Err(Reason::DropNoReal);
    }
    Ok(real_index)
}
