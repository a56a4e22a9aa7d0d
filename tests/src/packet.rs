//! Frames for packet-level tests, built byte by byte.

use std::net::Ipv4Addr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// An Ethernet frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header fields that tests vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// Flags and fragment offset, host order (0x2000 = more fragments).
    pub frag: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            proto,
            ttl: 64,
            frag: 0x4000, // don't fragment
            options: Vec::new(),
        }
    }

    /// The datagram: header (with checksum) and payload.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        let total = (ihl + payload.len()) as u16;
        let mut h = Vec::with_capacity(ihl + payload.len());
        h.push(0x40 | (ihl / 4) as u8);
        h.push(0);
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// A TCP header with the given flags (0x02 = SYN) and no options; checksum left zero
/// (the program neither checks nor changes it under direct routing).
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

/// A UDP datagram (header and payload); checksum left zero (allowed over IPv4).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// `struct xdp_md` for BPF_PROG_TEST_RUN's ctx_in: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex. The ingress interface must have an
/// XDP receive queue registered (on veth: any XDP program attached).
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// One BPF_PROG_TEST_RUN of `program` on `frame` arriving on `ingress` (whose XDP
/// receive queue must be registered, see [`xdp_md`]): the action and the output frame.
pub fn run(program: &aya::programs::Xdp, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
    use aya::programs::{TestRun, TestRunOptions};
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&xdp_md(frame.len(), ingress)),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {e}", frame.len()));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Recomputes the header checksum of the IPv4 datagram `d` (after a test changed a
/// header field), if the whole header is there.
pub fn reseal(d: &mut [u8]) {
    let ihl = usize::from(d.first().copied().unwrap_or(0) & 0x0f) * 4;
    if ihl < 20 || d.len() < ihl {
        return;
    }
    d[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&d[..ihl]);
    d[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = Ipv4::new([192, 0, 2, 1].into(), [192, 0, 2, 100].into(), 6).packet(&tcp(1, 80, 2));
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to zero");
        assert_eq!(p.len(), 40);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 40);
    }
}
