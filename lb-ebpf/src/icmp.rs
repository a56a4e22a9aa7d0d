//! ICMP errors about a tracked flow. Under direct routing the real answers the client
//! from the VIP, so a router between them that cannot deliver a reply (fragmentation
//! needed, unreachable, time exceeded) reports to the VIP, that is to the director. Like
//! IPVS (`ip_vs_in_icmp`), the director finds the flow from the quoted header and sends
//! the error on to the flow's real; path-MTU discovery then works for DR replies.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    IPPROTO_TCP, IPPROTO_UDP,
    conntrack::{FlowKeyV4, flow_key_v4},
    reason::Reason,
};

use crate::parse::{Ipv4Meta, read_at};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP header bytes before the quoted datagram.
const ICMP_HDR: usize = 8;

/// The forward flow an ICMP error quotes: the quoted datagram is the real's reply
/// (VIP:port → client:port), so the flow is its reverse. `Err` says what to do with an
/// ICMP message that is not an error about a TCP/UDP flow.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, ip: &Ipv4Meta) -> Result<FlowKeyV4, Reason> {
    if ip.is_fragment() || ip.l4_offset + ICMP_HDR + 20 > ip.end() {
        return Err(Reason::PassVipOtherProto);
    }
    // Reads are at least two bytes wide: LLVM turns a one-byte bound check into a form
    // the verifier cannot use for a variable offset.
    let [kind, _code] = read_at::<[u8; 2]>(ctx, ip.l4_offset).ok_or(Reason::PassVipOtherProto)?;
    // The types IPVS relays (ip_vs_in_icmp); others are the director's own business.
    if kind != ICMP_DEST_UNREACH && kind != ICMP_SOURCE_QUENCH && kind != ICMP_TIME_EXCEEDED {
        return Err(Reason::PassVipOtherProto);
    }
    let inner = ip.l4_offset + ICMP_HDR;
    let [vihl, _tos] = read_at::<[u8; 2]>(ctx, inner).ok_or(Reason::PassIcmpNoFlow)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::PassIcmpNoFlow);
    }
    let [_ttl, proto] = read_at::<[u8; 2]>(ctx, inner + 8).ok_or(Reason::PassIcmpNoFlow)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Reason::PassIcmpNoFlow);
    }
    let addrs = read_at::<[u32; 2]>(ctx, inner + 12).ok_or(Reason::PassIcmpNoFlow)?;
    if inner + ihl + 4 > ip.end() {
        return Err(Reason::PassIcmpNoFlow);
    }
    let ports = read_at::<[u16; 2]>(ctx, inner + ihl).ok_or(Reason::PassIcmpNoFlow)?;
    let (vip, client) = ([addrs[0], 0, 0, 0], [addrs[1], 0, 0, 0]);
    Ok(flow_key_v4(&client, &vip, ports[1], ports[0], proto))
}
