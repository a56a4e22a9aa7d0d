//! Picks the real server for a flow's first packet from its service's scheduling table
//! (`SCHED_TABLES`), which the daemon builds (lb-userspace `scheduler`):
//! - `sh`, `dh`, `mh`: a Maglev table; the hash of the client address (`dh`: the
//!   destination address; with `SVC_F_HASH_PORT`, and the client port) picks a position.
//!   The hash is `lb_common::hash`, so the daemon can predict every choice.
//! - `rr`, `wrr`: a sequence of reals (IPVS's weighted interleaving); each CPU walks it
//!   with its own cursor.
//!
//! The table's length and its slots are read through one inner-map pointer, so a table
//! the daemon swaps in meanwhile is never half seen.

use lb_common::{
    SCHED_DH, SCHED_RR, SCHED_WRR, SVC_F_HASH_PORT, ServiceValue, TABLE_LEN_SLOT,
    hash::{addr_hash, addr_port_hash, position},
    reason::Reason,
};

use crate::{
    maps::{RR_CURSORS, SCHED_TABLES},
    parse::Ipv4Meta,
};

/// The real index for this packet (`sport`: the client's port, network order).
#[inline(always)]
pub fn pick(service: &ServiceValue, ip: &Ipv4Meta, sport: u16) -> Result<u32, Reason> {
    let table = SCHED_TABLES.get(service.id).ok_or(Reason::DropNoReal)?;
    let len = table.get(TABLE_LEN_SLOT).ok_or(Reason::DropInternal)?[0];
    if len == 0 {
        return Err(Reason::DropNoReal);
    }
    let at = match service.scheduler {
        SCHED_RR | SCHED_WRR => {
            let cursor = RR_CURSORS
                .get_ptr_mut(service.id)
                .ok_or(Reason::DropInternal)?;
            // SAFETY: this CPU's own element; no other CPU writes it.
            unsafe {
                let at = *cursor % len;
                *cursor = at.wrapping_add(1);
                at
            }
        }
        SCHED_DH => position(addr_hash(&ip.dst, service.hash_seed), len),
        _ if service.flags & SVC_F_HASH_PORT != 0 => position(
            addr_port_hash(&ip.src, u16::from_be(sport), service.hash_seed),
            len,
        ),
        _ => position(addr_hash(&ip.src, service.hash_seed), len),
    };
    let pair = table.get((at >> 1) + 1).ok_or(Reason::DropInternal)?;
    Ok(if at & 1 == 0 { pair[0] } else { pair[1] })
}
