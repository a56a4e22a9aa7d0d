//! Bounds-checked parsing. `ptr_at` is the only place that turns packet offsets into
//! pointers; everything else goes through it.

use aya_ebpf::programs::XdpContext;
use lb_common::{AddrWords, IPPROTO_TCP, reason::Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// EtherType values in network byte order, as read from the frame.
const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();

/// IPv4 "more fragments" flag and fragment offset mask in the host-order `frags` field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Bytes of a TCP header without options, and of a UDP header.
const TCP_HDR: usize = 20;
const UDP_HDR: usize = 8;

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

/// A copy of the `T` at `offset`, if all of it is inside the packet. Read at least two
/// bytes: for a one-byte `T` at a variable offset LLVM rewrites `p + 1 > end` as
/// `p >= end`, which the verifier does not take as a bound.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked the bytes are inside the packet; packet data has no
    // alignment guarantee, hence the unaligned read.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
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

/// The destination address of the IPv4 header at `offset`, read before anything else
/// is checked: traffic that is not for a VIP is the kernel's to judge, and should cost
/// as little as possible.
#[inline(always)]
pub fn ipv4_destination(ctx: &XdpContext, offset: usize) -> Result<AddrWords, Reason> {
    let dst = read_at::<u32>(ctx, offset + 16).ok_or(Reason::PassIpMalformed)?;
    Ok([dst, 0, 0, 0])
}

/// The source address of the IPv4 header at `offset`, read before anything else is
/// checked (as [`ipv4_destination`], which has made sure the bytes are there).
#[inline(always)]
pub fn ipv4_source(ctx: &XdpContext, offset: usize) -> Result<AddrWords, Reason> {
    let src = read_at::<u32>(ctx, offset + 12).ok_or(Reason::PassNotVip)?;
    Ok([src, 0, 0, 0])
}

/// What the later stages need from the IPv4 header.
pub struct Ipv4Meta {
    /// Source address, network order.
    pub src: AddrWords,
    /// Destination address, network order.
    pub dst: AddrWords,
    /// IP protocol number.
    pub proto: u8,
    pub ttl: u8,
    /// Identification, network order.
    pub id: u16,
    /// Fragment offset in 8-byte units (0 for the first fragment or a whole datagram).
    pub frag_offset: u16,
    /// The "more fragments" flag.
    pub more_fragments: bool,
    /// Offset of the IPv4 header.
    pub l3_offset: usize,
    /// Header length in bytes (20..=60).
    pub ihl: usize,
    /// Offset of the L4 header (options skipped).
    pub l4_offset: usize,
    /// Total length from the header (host order), checked against the frame.
    pub tot_len: u16,
}

impl Ipv4Meta {
    /// A fragment, first or later.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// Offset just past the datagram (the frame may carry Ethernet padding after it).
    #[inline(always)]
    pub fn end(&self) -> usize {
        self.l3_offset + self.tot_len as usize
    }
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
        ttl: ip.ttl,
        id: u16::from_ne_bytes(ip.id),
        frag_offset: frags & IP_OFFSET,
        more_fragments: frags & IP_MF != 0,
        l3_offset: offset,
        ihl,
        l4_offset: offset + ihl,
        tot_len,
    })
}

/// Whether the IPv4 header checksum at `ip` verifies (RFC 1071: the ones'-complement sum
/// of the header, checksum included, is all ones). Summed as 32-bit words in memory
/// order, which gives the same folded sum as big-endian 16-bit words.
#[inline(always)]
pub fn header_checksum_ok(ctx: &XdpContext, ip: &Ipv4Meta) -> bool {
    let mut sum: u64 = 0;
    let words = ip.ihl / 4;
    let mut i = 0;
    while i < 15 {
        if i >= words {
            break;
        }
        match read_at::<u32>(ctx, ip.l3_offset + i * 4) {
            Some(w) => sum += w as u64,
            None => return false,
        }
        i += 1;
    }
    fold(sum) == 0xffff
}

/// Folds a ones'-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Ports (network order) and TCP flags (0 for UDP) of a TCP or UDP datagram.
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

/// Reads the L4 header at `ip.l4_offset`; the whole header must be inside the datagram
/// (not only in the Ethernet padding after it) and inside the frame.
#[inline(always)]
pub fn l4(ctx: &XdpContext, ip: &Ipv4Meta) -> Result<L4, Reason> {
    let is_tcp = ip.proto == IPPROTO_TCP;
    let len = if is_tcp { TCP_HDR } else { UDP_HDR };
    if ip.l4_offset + len > ip.end() {
        return Err(Reason::DropL4Truncated);
    }
    let ports = read_at::<[u8; 4]>(ctx, ip.l4_offset).ok_or(Reason::DropL4Truncated)?;
    let flags = if is_tcp {
        // Two bytes (data offset, flags): see `read_at` on one-byte reads.
        read_at::<[u8; 2]>(ctx, ip.l4_offset + 12).ok_or(Reason::DropL4Truncated)?[1]
    } else {
        0
    };
    Ok(L4 {
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        flags,
    })
}
