//! Direct routing (LVS `-g`), and the last step of NAT towards a real: the frame is re-addressed to the real server's MAC from the
//! director's own MAC on the interface towards the real, and the TTL is decremented as
//! IPVS does (so a routing loop between directors dies out).
//!
//! The next hop comes from the real's `REALS` entry, which the daemon keeps current from
//! rtnetlink (lb-userspace `nexthop`). Only when that entry is not resolved does the
//! program ask the kernel (`bpf_fib_lookup`), as an input look-up from the loopback
//! interface: the kernel checks forwarding on the interface a look-up starts from, and
//! forwarding on `lo` lets no transit traffic through (see docs/ARCHITECTURE.md).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
    },
    helpers::generated,
    programs::XdpContext,
};
use lb_common::{NH_OFFLINK, NH_RESOLVED, RealServer, event::Event, reason::Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    Verdict,
    parse::{Ipv4Meta, ptr_at_mut},
    stats,
};

const AF_INET: u8 = 2;
/// The loopback interface's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Where a packet for a real leaves: its MACs and interface.
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
}

/// The next hop towards `real`, and whether the datagram may take it (its MTU). Nothing
/// in the packet changes, so a refusal leaves it as it came.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, ip: &Ipv4Meta, real: &RealServer) -> Result<NextHop, Reason> {
    if real.nh_state == NH_RESOLVED {
        if u32::from(ip.tot_len) > real.mtu {
            return Err(Reason::DropFragNeeded);
        }
        Ok(NextHop {
            dmac: real.dmac,
            smac: real.smac,
            ifindex: real.ifindex,
        })
    } else if real.nh_state == NH_OFFLINK {
        Err(Reason::DropRealOfflink)
    } else {
        let (dmac, smac, ifindex) = fib_fallback(ctx, ip, real)?;
        Ok(NextHop {
            dmac,
            smac,
            ifindex,
        })
    }
}

/// TTL − 1 and the next hop's MACs; the verdict says which interface the frame leaves by.
#[inline(always)]
pub fn send(ctx: &XdpContext, ip: &Ipv4Meta, hop: &NextHop) -> Result<Verdict, Reason> {
    decrement_ttl(ctx, ip)?;
    set_macs(ctx, hop.dmac, hop.smac)?;
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        Ok(Verdict::Tx)
    } else {
        Ok(Verdict::Redirect(hop.ifindex))
    }
}

/// Re-addresses the Ethernet frame.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dmac: [u8; 6], smac: [u8; 6]) -> Result<(), Reason> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: `ptr_at_mut` checked the whole header is inside the packet.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
    }
    Ok(())
}

/// `ip_decrease_ttl`: TTL minus one, checksum patched incrementally (RFC 1624). The
/// caller has made sure the TTL is above 1.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, ip: &Ipv4Meta) -> Result<(), Reason> {
    let hdr = ptr_at_mut::<Ipv4Hdr>(ctx, ip.l3_offset).ok_or(Reason::DropInternal)?;
    // SAFETY: `ptr_at_mut` checked the fixed header is inside the packet.
    unsafe {
        let check = u32::from(u16::from_ne_bytes((*hdr).check)) + u32::from(0x0100u16.to_be());
        let check = check + u32::from(check >= 0xffff);
        (*hdr).check = (check as u16).to_ne_bytes();
        (*hdr).ttl = ip.ttl.wrapping_sub(1);
    }
    Ok(())
}

/// The kernel's FIB and neighbour table, for a real whose next hop the daemon has not
/// resolved. A route through a gateway is refused: direct routing needs the real on-link.
#[inline(always)]
fn fib_fallback(
    ctx: &XdpContext,
    ip: &Ipv4Meta,
    real: &RealServer,
) -> Result<([u8; 6], [u8; 6], u32), Reason> {
    stats::count_event(Event::NexthopFallback);
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its documented initial state.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = LOOPBACK_IFINDEX;
    fib.__bindgen_anon_1.tot_len = ip.tot_len;
    fib.__bindgen_anon_4.ipv4_dst = real.addr[0];
    // SAFETY: `ctx.ctx` is the program's xdp_md and `fib` a live, correctly sized struct.
    let rc = unsafe {
        generated::bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Reason::DropNoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Reason::DropFragNeeded),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Reason::DropForwardingOff),
        _ => return Err(Reason::DropNoRoute),
    }
    // SAFETY: reading a union field the helper wrote for an AF_INET look-up.
    if unsafe { fib.__bindgen_anon_4.ipv4_dst } != real.addr[0] {
        // The kernel replaced the destination with the route's gateway.
        return Err(Reason::DropRealOfflink);
    }
    Ok((fib.dmac, fib.smac, fib.ifindex))
}
