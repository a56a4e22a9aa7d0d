//! Bounds-checked parsing. `ptr_at` is the only place that turns packet offsets into
//! pointers; everything else goes through it.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords, IPPROTO_TCP, reason::Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

/// EtherType values in network byte order, as read from the frame.
const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();

/// IPv4 "more fragments" flag and fragment offset mask in the host-order `frags` field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// A pointer to a `T` at `offset` bytes into the packet, if all of it is inside.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Checks the Ethernet header; returns the offset of the IPv4 header.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<usize, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassEthTruncated)?;
    // SAFETY: `ptr_at` checked the whole header is inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    match ether_type {
        ETH_P_IPV4 => Ok(EthHdr::LEN),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::PassVlan),
        _ => Err(Reason::PassNotIpv4),
    }
}

/// What the later stages need from the IPv4 header.
pub struct Ipv4Meta {
    /// Source address, network order.
    pub src: AddrWords,
    /// Destination address, network order.
    pub dst: AddrWords,
    /// IP protocol number.
    pub proto: u8,
    /// A fragment (first or later).
    pub is_fragment: bool,
    /// Offset of the L4 header (options skipped).
    pub l4_offset: usize,
    /// Total length from the header (host order), checked against the frame.
    pub tot_len: u16,
}

/// Parses and checks the IPv4 header at `offset`.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, offset: usize) -> Result<Ipv4Meta, Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, offset).ok_or(Reason::PassIpMalformed)?;
    // SAFETY: `ptr_at` checked the fixed header is inside the packet.
    let ip = unsafe { &*ip };
    let vihl = ip.vihl;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Reason::PassIpMalformed);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len);
    // The frame may carry Ethernet padding after the datagram, never less than it.
    if (tot_len as usize) < ihl || offset + tot_len as usize > ctx.data_end() - ctx.data() {
        return Err(Reason::PassIpMalformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    Ok(Ipv4Meta {
        src: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
        dst: [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0],
        proto: ip.proto,
        is_fragment: frags & (IP_MF | IP_OFFSET) != 0,
        l4_offset: offset + ihl,
        tot_len,
    })
}

/// The destination port (network order) of a whole TCP or UDP header at `offset`.
#[inline(always)]
pub fn dst_port(ctx: &XdpContext, offset: usize, proto: u8) -> Result<u16, Reason> {
    if proto == IPPROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, offset).ok_or(Reason::DropL4Truncated)?;
        // SAFETY: `ptr_at` checked the whole header is inside the packet.
        Ok(u16::from_ne_bytes(unsafe { (*tcp).dest }))
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, offset).ok_or(Reason::DropL4Truncated)?;
        // SAFETY: as above.
        Ok(u16::from_ne_bytes(unsafe { (*udp).dst }))
    }
}
