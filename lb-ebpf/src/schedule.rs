//! Picks the real server for a flow's first packet from its service's scheduling table
//! (`SCHED_TABLES`), which the daemon builds (lb-userspace `scheduler`):
//! - `sh`, `dh`, `mh`: a Maglev table; the hash of the client address (`dh`: the
//!   destination address; with `SVC_F_HASH_PORT`, and the client port) picks a position.
//!   The hash is `lb_common::hash`, so the daemon can predict every choice.
//! - `rr`, `wrr`: a sequence of reals (IPVS's weighted interleaving); each CPU walks it
//!   with its own cursor.
//! - `lc`, `wlc`, `sed`, `nq`: (real, weight) pairs; every real's live connections
//!   (`REAL_CONNS`) are compared.
//!
//! The table's length and its slots are read through one inner-map pointer, so a table
//! the daemon swaps in meanwhile is never half seen.

use lb_common::{
    AddrWords, MAX_LEAST_REALS, REAL_NONE, SCHED_DH, SCHED_LC, SCHED_NQ, SCHED_RR, SCHED_SED,
    SCHED_WLC, SCHED_WRR, SVC_F_HASH_PORT, SVC_F_PERSIST, SVC_F_QUORUM_LOST, ServiceValue,
    TABLE_LEN_SLOT,
    hash::{addr_hash, addr_port_hash, position},
    reason::Reason,
};

use crate::{
    conntrack,
    maps::{REAL_CONNS, RR_CURSORS, SCHED_TABLES, SCRATCH, SERVICE_PARAMS, SchedTable},
    persist,
};

/// `to_vip`'s `chosen` on a packet's first pass: no real chosen yet.
pub const UNCHOSEN: u64 = u64::MAX;

/// The real for the new flow of service id `service` whose addresses and port
/// `remember_flow` left in this CPU's scratch space: its client's persistence
/// template's, if it has a live one, else the scheduler's (and the template made). The
/// real index, or `NO_REAL | reason`.
///
/// A BPF function beside the forwarding path, not inside it: inlined there, its live
/// values would be spilled to a stack that has no room left. Its argument is a plain
/// number, so the compiler cannot rewrite its signature into one the verifier refuses.
#[inline(never)]
pub fn choose(service: u32) -> u64 {
    match try_choose(service) {
        Ok(index) => u64::from(index),
        Err(reason) => NO_REAL | reason as u64,
    }
}

/// Leaves a new flow's client address, virtual address and client port (network order)
/// for `choose`.
#[inline(always)]
pub fn remember_flow(src: u32, dst: u32, sport: u16) -> Result<(), Reason> {
    let at = SCRATCH.get_ptr_mut(0).ok_or(Reason::DropInternal)?;
    // SAFETY: this CPU's own element, valid for this program run.
    unsafe {
        (*at).src = src;
        (*at).dst = dst;
        (*at).sport = sport;
    }
    Ok(())
}

/// `choose`'s flag for "no real; the reason is in the low bits".
pub const NO_REAL: u64 = 1 << 32;

/// `choose`'s result as a `Result`.
#[inline(always)]
pub fn decode(chosen: u64) -> Result<u32, Reason> {
    if chosen & NO_REAL == 0 {
        Ok(chosen as u32)
    } else {
        Err(Reason::from_code(chosen as u32).unwrap_or(Reason::DropInternal))
    }
}

#[inline(always)]
fn try_choose(service: u32) -> Result<u32, Reason> {
    let at = SCRATCH.get_ptr_mut(0).ok_or(Reason::DropInternal)?;
    // SAFETY: this CPU's own element, valid for this program run; copied out before
    // `persist` reuses the element's other fields.
    let (src, dst, sport) = unsafe { ((*at).src, (*at).dst, (*at).sport) };
    let params = SERVICE_PARAMS.get(service).ok_or(Reason::DropInternal)?;
    let now = conntrack::now();
    let persistent = params.flags & SVC_F_PERSIST != 0;
    if persistent && let Some(index) = persist::kept(service, src, now) {
        return Ok(index);
    }
    let index = pick(params, &[src, 0, 0, 0], &[dst, 0, 0, 0], sport).map_err(|r| {
        if r == Reason::DropNoReal && params.flags & SVC_F_QUORUM_LOST != 0 {
            Reason::DropQuorumLost
        } else {
            r
        }
    })?;
    if persistent {
        persist::remember(service, src, index, now);
    }
    Ok(index)
}

/// The real index from the service's table.
#[inline(always)]
fn pick(
    service: &ServiceValue,
    src: &AddrWords,
    dst: &AddrWords,
    sport: u16,
) -> Result<u32, Reason> {
    let table = SCHED_TABLES.get(service.id).ok_or(Reason::DropNoReal)?;
    let len = table.get(TABLE_LEN_SLOT).ok_or(Reason::DropInternal)?[0];
    if len == 0 {
        return Err(Reason::DropNoReal);
    }
    let at = match service.scheduler {
        SCHED_LC | SCHED_WLC | SCHED_SED | SCHED_NQ => {
            return least(table, len, service.scheduler);
        }
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
        SCHED_DH => position(addr_hash(dst, service.hash_seed), len),
        _ if service.flags & SVC_F_HASH_PORT != 0 => position(
            addr_port_hash(src, u16::from_be(sport), service.hash_seed),
            len,
        ),
        _ => position(addr_hash(src, service.hash_seed), len),
    };
    let pair = table.get((at >> 1) + 1).ok_or(Reason::DropInternal)?;
    Ok(if at & 1 == 0 { pair[0] } else { pair[1] })
}

/// `lc`, `wlc`, `sed`, `nq`: the real whose live connections weigh least for its weight
/// (IPVS's overheads: `lc`, `wlc` active × 256 + inactive; `sed`, `nq` active + 1; `nq`
/// takes the first real with no active connection at once), comparing every (real,
/// weight) pair of the table; ties go to the earlier real, as in IPVS. The new flow is
/// added to the chosen real's inactive count at once, so the next new flow sees it.
#[inline(always)]
fn least(table: &SchedTable, len: u32, scheduler: u32) -> Result<u32, Reason> {
    let reals = len / 2;
    let mut best = REAL_NONE;
    let (mut best_load, mut best_weight) = (0u64, 1u64);
    for i in 0..MAX_LEAST_REALS {
        if i >= reals {
            break;
        }
        let Some(&[real, weight]) = table.get(i + 1) else {
            break;
        };
        let (active, inactive) = REAL_CONNS
            .get(real)
            .map_or((0, 0), |c| (u64::from(c.active), u64::from(c.inactive)));
        if scheduler == SCHED_NQ && active == 0 {
            best = real;
            break;
        }
        let (load, weight) = match scheduler {
            SCHED_LC => ((active << 8) + inactive, 1),
            SCHED_WLC => ((active << 8) + inactive, u64::from(weight)),
            _ => (active + 1, u64::from(weight)),
        };
        if best == REAL_NONE || load * best_weight < best_load * weight {
            best = real;
            best_load = load;
            best_weight = weight;
        }
    }
    if best == REAL_NONE {
        return Err(Reason::DropNoReal);
    }
    if let Some(conns) = REAL_CONNS.get_ptr_mut(best) {
        // SAFETY: a valid map value for this program run, 8-byte aligned (array values
        // are); other CPUs add to it too, so the add is atomic. The program has 64-bit
        // atomics only: `inactive` is the upper half of the value read as a u64
        // (little-endian).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                conns.cast::<u64>(),
                1 << 32,
            )
        };
    }
    Ok(best)
}
