//! ICMP time exceeded for a packet to a virtual service whose TTL would expire here.
//!
//! Forwarding decrements the TTL, so IPVS answers a TTL of 0 or 1 as a router does
//! (`decrement_ttl` → `icmp_send`): type 11 code 0 from the virtual address (the kernel's
//! source for an error about a datagram to a local address), quoting the IP header and
//! the first 8 bytes of the datagram (RFC 792). The frame is turned around in place:
//! 28 bytes are added in front for the new IP and ICMP headers, the tail is cut after
//! the quote, and the Ethernet addresses are swapped. Like the kernel's
//! `icmp_msgs_per_sec`, the errors are rate-limited (`icmp_rate` per CPU per second; the
//! kernel also limits per destination host, which this does not).

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    conntrack::{DEFAULT_ICMP_RATE, WINDOW_ICMP},
    reason::Reason,
};
use network_types::eth::EthHdr;

use crate::{
    maps::SETTINGS,
    parse::{self, Ipv4Meta, ptr_at_mut, read_at},
    window,
};

const ICMP_TIME_EXCEEDED: u8 = 11;
const IPPROTO_ICMP: u8 = 1;
const IP_HDR: usize = 20;
const ICMP_HDR: usize = 8;
/// Bytes of the datagram's payload quoted after its IP header.
const QUOTED_PAYLOAD: usize = 8;
/// Longest quote: an IP header with 40 bytes of options, and the payload bytes.
const MAX_QUOTE: usize = 60 + QUOTED_PAYLOAD;
/// `IPTOS_PREC_INTERNETCONTROL`: the kernel sends an ICMP error with this precedence
/// and the datagram's own TOS bits (`RT_TOS`, mask `IPTOS_TOS_MASK`).
const TOS_INTERNETCONTROL: u8 = 0xc0;
const TOS_MASK: u8 = 0x1e;
/// `net.ipv4.ip_default_ttl`.
const DEFAULT_TTL: u8 = 64;

/// Turns the packet into an ICMP time exceeded for its sender. `TxIcmpTimeExceeded`
/// when the frame is ready to go back out, else `DropTtlExceeded`. The caller has
/// checked the datagram holds its L4 header, so the quote is inside it.
#[inline(always)]
pub fn reply(ctx: &XdpContext, ip: &Ipv4Meta) -> Reason {
    let rate = SETTINGS.get(0).map_or(DEFAULT_ICMP_RATE, |s| s.icmp_rate);
    if rate == 0 || !window::admit(WINDOW_ICMP, rate, crate::conntrack::now()) {
        return Reason::DropTtlExceeded;
    }
    match build(ctx, ip) {
        Some(()) => Reason::TxIcmpTimeExceeded,
        None => Reason::DropTtlExceeded,
    }
}

#[inline(always)]
fn build(ctx: &XdpContext, ip: &Ipv4Meta) -> Option<()> {
    let macs = read_at::<[u8; 12]>(ctx, 0)?;
    let [_vihl, tos] = read_at::<[u8; 2]>(ctx, ip.l3_offset)?;
    let quote = ip.ihl + QUOTED_PAYLOAD;
    let grow = (IP_HDR + ICMP_HDR) as i32;
    // SAFETY: helper calls on the program's own context; every pointer is re-checked
    // against the new bounds afterwards (`ptr_at`, `read_at`).
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -grow) != 0 {
            return None;
        }
        let len = (ctx.data_end() - ctx.data()) as i32;
        let keep = (EthHdr::LEN + IP_HDR + ICMP_HDR + quote) as i32;
        if keep < len && bpf_xdp_adjust_tail(ctx.ctx, keep - len) != 0 {
            return None;
        }
    }
    // The datagram's own header now starts after the two new ones.
    let quoted = EthHdr::LEN + IP_HDR + ICMP_HDR;
    let mut sum: u64 = u64::from(u16::from_ne_bytes([ICMP_TIME_EXCEEDED, 0]));
    let mut i = 0;
    while i < MAX_QUOTE / 4 {
        if i * 4 >= quote {
            break;
        }
        sum += u64::from(read_at::<u32>(ctx, quoted + i * 4)?);
        i += 1;
    }
    let icmp_sum = !parse::fold(sum);

    let total = ((IP_HDR + ICMP_HDR + quote) as u16).to_be_bytes();
    let (vip, client) = (ip.dst[0].to_ne_bytes(), ip.src[0].to_ne_bytes());
    let mut hdr = [
        0x45,
        TOS_INTERNETCONTROL | (tos & TOS_MASK),
        total[0],
        total[1],
        0,
        0,
        0,
        0,
        DEFAULT_TTL,
        IPPROTO_ICMP,
        0,
        0,
        vip[0],
        vip[1],
        vip[2],
        vip[3],
        client[0],
        client[1],
        client[2],
        client[3],
    ];
    let mut ip_sum: u64 = 0;
    let mut w = 0;
    while w < IP_HDR {
        ip_sum += u64::from(u16::from_ne_bytes([hdr[w], hdr[w + 1]]));
        w += 2;
    }
    let ip_sum = (!parse::fold(ip_sum)).to_ne_bytes();
    hdr[10] = ip_sum[0];
    hdr[11] = ip_sum[1];

    let eth = ptr_at_mut::<[u8; EthHdr::LEN]>(ctx, 0)?;
    let out_ip = ptr_at_mut::<[u8; IP_HDR]>(ctx, EthHdr::LEN)?;
    let icmp = ptr_at_mut::<[u8; ICMP_HDR]>(ctx, EthHdr::LEN + IP_HDR)?;
    let icmp_sum = icmp_sum.to_ne_bytes();
    // SAFETY: `ptr_at_mut` checked each range is inside the packet.
    unsafe {
        *eth = [
            macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2],
            macs[3], macs[4], macs[5], 0x08, 0x00,
        ];
        *out_ip = hdr;
        *icmp = [ICMP_TIME_EXCEEDED, 0, icmp_sum[0], icmp_sum[1], 0, 0, 0, 0];
    }
    Some(())
}
