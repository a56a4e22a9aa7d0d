//! What the kernel would refuse is not forwarded: frames for another host's MAC, martian
//! sources, bad header checksums. Run only on traffic that may be for a VIP, so the
//! director's own traffic pays nothing here and the kernel judges it as usual.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords, event::Event, reason::Reason};

use crate::{
    lookup,
    maps::{IFACE_INDEX, IFACES},
    parse::{self, Ipv4Meta},
    stats,
};

/// Checks the frame and the IPv4 header of a packet that may be for a VIP.
#[inline(always)]
pub fn check(ctx: &XdpContext, ip: &Ipv4Meta) -> Result<(), Reason> {
    our_mac(ctx)?;
    martian_source(&ip.src)?;
    if !parse::header_checksum_ok(ctx, ip) {
        return Err(Reason::DropIpChecksum);
    }
    Ok(())
}

/// The frame must be addressed to the ingress interface's own MAC: a unicast frame for
/// another MAC reached us only through promiscuous mode (the kernel's PACKET_OTHERHOST),
/// and a unicast datagram in a broadcast or multicast frame is refused by the kernel too.
#[inline(always)]
fn our_mac(ctx: &XdpContext) -> Result<(), Reason> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = IFACE_INDEX
        .get(ifindex)
        .copied()
        .filter(|i| i.mac != [0; 6]);
    // SAFETY: the value is copied out at once; the daemon replaces values whole.
    let Some(iface) = slot.or_else(|| unsafe { IFACES.get(ifindex) }.copied()) else {
        stats::count_event(Event::IfaceUnknown);
        return Ok(());
    };
    let dst = parse::read_at::<[u8; 6]>(ctx, 0).ok_or(Reason::DropInternal)?;
    if dst != iface.mac {
        return Err(Reason::DropOtherHost);
    }
    Ok(())
}

/// The kernel's martian sources (ip_route_input_slow): multicast, limited broadcast,
/// 0.0.0.0/8, loopback (127/8, without `route_localnet`); and a virtual address itself
/// (the kernel's "local source"; the director's other addresses are not checked).
#[inline(always)]
fn martian_source(src: &AddrWords) -> Result<(), Reason> {
    let first = (src[0] & 0xff) as u8; // first octet: the word holds network order
    let martian = src[0] == u32::MAX
        || first == 0
        || first == 127
        || (first & 0xf0) == 0xe0
        || (lookup::maybe_vip(src) && lookup::is_vip(src));
    if martian {
        Err(Reason::DropMartianSource)
    } else {
        Ok(())
    }
}
