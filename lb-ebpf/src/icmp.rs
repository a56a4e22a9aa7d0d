//! ICMP errors about a tracked flow. Under NAT the error is translated as IPVS does
//! (`ip_vs_nat_icmp`): the quoted datagram's addresses and ports become what the
//! receiver sent, and the outer addresses the receiver's (see [`translate`]).
//!
//! Under direct routing the real answers the client
//! from the VIP, so a router between them that cannot deliver a reply (fragmentation
//! needed, unreachable, time exceeded) reports to the VIP, that is to the director. Like
//! IPVS (`ip_vs_in_icmp`), the director finds the flow from the quoted header and sends
//! the error on to the flow's real; path-MTU discovery then works for DR replies.

use aya_ebpf::programs::XdpContext;
use aya_ebpf::programs::XdpContext as Ctx;
use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    conntrack::{FLOW_F_REPLY, FLOW_F_SNAT, Flow, FlowKeyV4, flow_key_v4},
    reason::Reason,
};

use crate::{
    nat::{self, adjust, diff16, diff32},
    parse::{Ipv4Meta, ptr_at_mut, read_at},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP header bytes before the quoted datagram.
const ICMP_HDR: usize = 8;

/// The flow an ICMP error quotes, as the connection table keys it: the quoted datagram
/// reversed. An error to the VIP quotes an answer (VIP:port → client:port), so this is
/// the forward key; an error from a NAT real quotes a translated forward packet, so this
/// is the reply key. `Err` says what to do with an
/// ICMP message that is not an error about a TCP/UDP flow.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, ip: &Ipv4Meta) -> Result<FlowKeyV4, Reason> {
    if ip.is_fragment() {
        return Err(Reason::PassVipOtherProto);
    }
    // The bytes are read (bounds-checked against the packet) before they are checked
    // against the datagram's length: the other way round, LLVM proves the packet checks
    // redundant and drops them, and the verifier cannot follow its proof.
    let head =
        read_at::<[u8; ICMP_HDR + 20]>(ctx, ip.l4_offset).ok_or(Reason::PassVipOtherProto)?;
    if ip.l4_offset + ICMP_HDR + 20 > ip.end() {
        return Err(Reason::PassVipOtherProto);
    }
    let kind = head[0];
    // The types IPVS relays (ip_vs_in_icmp); others are the director's own business.
    if kind != ICMP_DEST_UNREACH && kind != ICMP_SOURCE_QUENCH && kind != ICMP_TIME_EXCEEDED {
        return Err(Reason::PassVipOtherProto);
    }
    let vihl = head[ICMP_HDR];
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::PassIcmpNoFlow);
    }
    let proto = head[ICMP_HDR + 9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Reason::PassIcmpNoFlow);
    }
    let inner = ip.l4_offset + ICMP_HDR;
    let ports = read_at::<[u16; 2]>(ctx, inner + ihl).ok_or(Reason::PassIcmpNoFlow)?;
    if inner + ihl + 4 > ip.end() {
        return Err(Reason::PassIcmpNoFlow);
    }
    let word = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (vip, client) = (
        [word(ICMP_HDR + 12), 0, 0, 0],
        [word(ICMP_HDR + 16), 0, 0, 0],
    );
    Ok(flow_key_v4(&client, &vip, ports[1], ports[0], proto))
}

/// Translates an ICMP error about the NAT flow whose entry is `flow` (the entry its key
/// found): the quoted datagram becomes what the error's receiver sent (the entry's
/// translation, reversed), the outer destination the receiver, and the outer source the
/// VIP towards a client, or a pool address towards a full-NAT real. The inner IP header
/// checksum, the ICMP checksum and the outer IP header checksum are patched
/// incrementally; the quoted TCP/UDP checksum, often cut off, is left as IPVS leaves it.
#[inline(always)]
pub fn translate(ctx: &Ctx, ip: &Ipv4Meta, flow: &Flow) -> Result<(), Reason> {
    let to = &flow.to;
    let outer_src = if flow.flags & (FLOW_F_REPLY | FLOW_F_SNAT) != 0 {
        to.src
    } else {
        ip.src[0]
    };
    // One pointer each for the ICMP header with the quoted IP header, and for the
    // quoted ports: read, changed and written back whole, so the verifier sees every
    // access through a pointer it has checked.
    let head = ptr_at_mut::<[u8; ICMP_HDR + 20]>(ctx, ip.l4_offset).ok_or(Reason::DropInternal)?;
    // SAFETY: `ptr_at_mut` checked the bytes are inside the packet.
    let mut h = unsafe { head.read_unaligned() };
    let ihl = ((h[ICMP_HDR] & 0x0f) as usize) * 4;
    let ports =
        ptr_at_mut::<[u16; 2]>(ctx, ip.l4_offset + ICMP_HDR + ihl).ok_or(Reason::DropInternal)?;
    let word = |h: &[u8; ICMP_HDR + 20], i: usize| {
        u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
    };
    let half = |h: &[u8; ICMP_HDR + 20], i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
    let (src, dst) = (word(&h, ICMP_HDR + 12), word(&h, ICMP_HDR + 16));
    let old_check = half(&h, ICMP_HDR + 10);
    // The quote becomes the datagram the receiver sent: the translation reversed.
    let header = diff32(src, to.dst) + diff32(dst, to.src);
    let new_check = adjust(old_check, header);
    h[ICMP_HDR + 12..ICMP_HDR + 16].copy_from_slice(&to.dst.to_ne_bytes());
    h[ICMP_HDR + 16..ICMP_HDR + 20].copy_from_slice(&to.src.to_ne_bytes());
    h[ICMP_HDR + 10..ICMP_HDR + 12].copy_from_slice(&new_check.to_ne_bytes());
    // SAFETY: as above, for the ports.
    let [sport, dport] = unsafe { ports.read_unaligned() };
    let body =
        header + diff16(sport, to.dport) + diff16(dport, to.sport) + diff16(old_check, new_check);
    let icmp_check = adjust(half(&h, 2), body);
    h[2..4].copy_from_slice(&icmp_check.to_ne_bytes());
    // SAFETY: both pointers were checked above.
    unsafe {
        head.write_unaligned(h);
        ports.write_unaligned([to.dport, to.sport]);
    }
    nat::addresses(ctx, ip, outer_src, to.dst)?;
    Ok(())
}
