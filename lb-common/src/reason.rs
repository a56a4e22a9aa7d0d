//! Why a packet left the program the way it did. Every packet is counted under exactly
//! one reason in the `REASONS` per-CPU array; the daemon reports them by name.

/// What the program does with a packet for a given reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    /// Hand the packet to the kernel stack unchanged (XDP_PASS).
    Pass = 2,
    /// Drop the packet (XDP_DROP).
    Drop = 1,
    /// Send it back out of the interface it came in on (XDP_TX).
    Tx = 3,
    /// Send it out of another interface (XDP_REDIRECT).
    Redirect = 4,
}

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $text:literal, $action:ident;)+) => {
        /// Outcome codes; the value indexes the `REASONS` counter array.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Reason {
            $($(#[doc = $doc])* $name = $code,)+
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)+];

            /// The name reported by the daemon and in metrics.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$name => $text,)+ }
            }

            /// The reason with this code.
            pub const fn from_code(code: u32) -> Option<Reason> {
                match code { $($code => Some(Reason::$name),)+ _ => None }
            }

            /// What the program does with the packet.
            pub const fn action(self) -> Action {
                match self { $(Reason::$name => Action::$action,)+ }
            }
        }
    };
}

reasons! {
    /// Forwarded to a real server out of the ingress interface.
    ForwardTx = 0, "forward_tx", Tx;
    /// Forwarded to a real server out of another interface.
    ForwardRedirect = 1, "forward_redirect", Redirect;
    /// Not IPv4 (ARP, IPv6, LLDP, ...): not ours yet.
    PassNotIpv4 = 2, "pass_not_ipv4", Pass;
    /// 802.1Q / 802.1ad tagged frame: VLANs are not parsed yet; the kernel decides.
    PassVlan = 3, "pass_vlan", Pass;
    /// Frame shorter than an Ethernet header: the kernel drops and counts it.
    PassEthTruncated = 4, "pass_eth_truncated", Pass;
    /// IPv4 header truncated or inconsistent (IHL < 5, total length beyond the frame,
    /// version not 4), to a virtual address or too short to name one: the kernel
    /// validates, drops and counts it (InHdrErrors).
    PassIpMalformed = 5, "pass_ip_malformed", Pass;
    /// IPv4 to an address that is not a virtual address.
    PassNotVip = 6, "pass_not_vip", Pass;
    /// To a virtual address, neither TCP nor UDP nor an ICMP error (ICMP echo, ...): the
    /// director answers.
    PassVipOtherProto = 7, "pass_vip_other_proto", Pass;
    /// TCP/UDP to a virtual address on a port with no virtual service: the director's
    /// stack answers (RST / port unreachable), as with LVS.
    PassVipNoService = 8, "pass_vip_no_service", Pass;
    /// A later fragment to a virtual address whose first fragment was not seen (it
    /// arrived out of order, or its tracking entry expired): it cannot be placed.
    DropFragmentUnknown = 9, "drop_fragment_unknown", Drop;
    /// TCP/UDP header missing from the IP datagram (cut short, or only in the Ethernet
    /// padding after it), to a virtual address.
    DropL4Truncated = 10, "drop_l4_truncated", Drop;
    /// The virtual service has no real server with a weight above zero.
    DropNoReal = 11, "drop_no_real", Drop;
    /// The real's MAC address is not resolved (the daemon keeps a managed neighbour
    /// entry per real, so this is transient). Passing it would reach the director's own
    /// stack, which would reset the connection; a drop lets the client retransmit.
    DropNoNeighbour = 12, "drop_no_neighbour", Drop;
    /// No usable route to the real (unreachable, blackhole, prohibited, no source).
    DropNoRoute = 13, "drop_no_route", Drop;
    /// The packet is larger than the MTU towards the real.
    DropFragNeeded = 14, "drop_frag_needed", Drop;
    /// A map held an index out of range: a daemon bug, counted not crashed.
    DropInternal = 15, "drop_internal", Drop;
    /// The next-hop cache had no entry and the `bpf_fib_lookup` fallback was refused
    /// because IPv4 forwarding is off on the loopback interface it looks up from (see
    /// docs/OPERATIONS.md, "host settings").
    DropForwardingOff = 16, "drop_forwarding_off", Drop;
    /// The flow's real server was removed from the service (LVS `expire_nodest_conn`).
    DropRealRemoved = 17, "drop_real_removed", Drop;
    /// The IPv4 header checksum is wrong (the kernel would count InCsumErrors and drop).
    DropIpChecksum = 18, "drop_ip_checksum", Drop;
    /// TTL 0 or 1 where no ICMP time exceeded is sent: beyond `icmp_rate`, a later
    /// fragment or an ICMP error (the kernel answers neither), or no room to build it.
    DropTtlExceeded = 19, "drop_ttl_exceeded", Drop;
    /// A martian source address (a virtual address, loopback, multicast, broadcast or
    /// 0.0.0.0/8), as the kernel's input route check drops.
    DropMartianSource = 20, "drop_martian_source", Drop;
    /// A unicast frame addressed to another host's MAC (a promiscuous port) or an
    /// IPv4 unicast datagram in an Ethernet broadcast or multicast frame.
    DropOtherHost = 21, "drop_other_host", Drop;
    /// The route to the real now goes through a gateway: direct routing cannot reach it.
    DropRealOfflink = 22, "drop_real_offlink", Drop;
    /// An ICMP error to a virtual address that quotes no tracked flow: the director's
    /// own stack handles it (it may be about the director's own traffic).
    PassIcmpNoFlow = 23, "pass_icmp_no_flow", Pass;
    /// TTL 0 or 1 on a packet to a virtual service: as IPVS does (`decrement_ttl`), the
    /// director answers with an ICMP time exceeded from the VIP, within `icmp_rate`.
    TxIcmpTimeExceeded = 24, "tx_icmp_time_exceeded", Tx;
    /// TCP/UDP from a NAT real's address (by its reply-filter bit) to an address that is
    /// not a VIP, with no live reply entry: the real's own traffic, or an answer to a
    /// flow the table no longer holds. The kernel decides, as IPVS leaves such packets to
    /// routing (`nat_icmp_send = 0`).
    PassReplyNoFlow = 25, "pass_reply_no_flow", Pass;
    /// A full-NAT flow found no free source port in its pool within the bounded tries:
    /// refused, so no two flows ever share one.
    DropSnatExhausted = 26, "drop_snat_exhausted", Drop;
    /// A NAT flow's first packet, when the flood guard refused the entries its replies
    /// need: dropped, as forwarding it would strand the answer.
    DropInsertRefused = 27, "drop_insert_refused", Drop;
    /// A new flow of a service that lost its quorum and has no sorry server
    /// (docs/HEALTH.md).
    DropQuorumLost = 28, "drop_quorum_lost", Drop;
}

/// Number of reason codes: the size of the `REASONS` array.
pub const REASON_COUNT: u32 = 29;

const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for &r in Reason::ALL {
            assert_eq!(Reason::from_code(r as u32), Some(r));
        }
        assert_eq!(Reason::from_code(REASON_COUNT), None);
    }
}
