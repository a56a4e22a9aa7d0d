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
    /// version not 4): the kernel validates, drops and counts it (InHdrErrors).
    PassIpMalformed = 5, "pass_ip_malformed", Pass;
    /// IPv4 to an address that is not a virtual address.
    PassNotVip = 6, "pass_not_vip", Pass;
    /// To a virtual address, neither TCP nor UDP (ICMP echo, ...): the director answers.
    PassVipOtherProto = 7, "pass_vip_other_proto", Pass;
    /// TCP/UDP to a virtual address on a port with no virtual service: the director's
    /// stack answers (RST / port unreachable), as with LVS.
    PassVipNoService = 8, "pass_vip_no_service", Pass;
    /// An IPv4 fragment to a virtual address: fragments after the first carry no ports,
    /// so they cannot be scheduled consistently; dropped rather than mis-sent.
    DropFragment = 9, "drop_fragment", Drop;
    /// TCP/UDP header cut short, to a virtual address.
    DropL4Truncated = 10, "drop_l4_truncated", Drop;
    /// The virtual service has no real server with a weight above zero.
    DropNoReal = 11, "drop_no_real", Drop;
    /// The real's MAC address is not resolved yet (the daemon keeps a managed neighbour
    /// entry per real, so this is transient). Passing it would reach the director's own
    /// stack, which would reset the connection; a drop lets the client retransmit.
    DropNoNeighbour = 12, "drop_no_neighbour", Drop;
    /// No usable route to the real (unreachable, blackhole, prohibited, no source).
    DropNoRoute = 13, "drop_no_route", Drop;
    /// The packet is larger than the MTU towards the real.
    DropFragNeeded = 14, "drop_frag_needed", Drop;
    /// A map held an index out of range: a daemon bug, counted not crashed.
    DropInternal = 15, "drop_internal", Drop;
    /// IPv4 forwarding is off on the interface towards the real: `bpf_fib_lookup` refuses
    /// (BPF_FIB_LKUP_RET_FWD_DISABLED) even for output lookups. The daemon turns it on for
    /// the reals' interfaces; this counts packets while someone has turned it off again.
    DropForwardingOff = 16, "drop_forwarding_off", Drop;
}

/// Number of reason codes: the size of the `REASONS` array.
pub const REASON_COUNT: u32 = 17;

const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);
