//! The connection table: keys, entries, TCP states and the rules that move between them,
//! shared so the daemon and tests read entries as the program writes them.
//!
//! Under direct routing the director sees only the client's half of a connection, so the
//! TCP state is the one LVS keeps for "input only" connections: it follows the SYN, ACK,
//! FIN and RST flags the client sends. A closed connection's entry expires on a short
//! timer; an established one on the long one (`ipvsadm --set` defaults: 900 s / 120 s /
//! 300 s for tcp / tcpfin / udp).

use crate::AddrWords;

/// `Flow::state`: a TCP SYN was seen, no ACK yet (LVS SYN_RECV).
pub const STATE_TCP_SYN: u8 = 1;
/// `Flow::state`: the client has acknowledged; data flows (LVS ESTABLISHED).
pub const STATE_TCP_ESTABLISHED: u8 = 2;
/// `Flow::state`: the client sent FIN (LVS FIN_WAIT; timeout `tcpfin`).
pub const STATE_TCP_FIN: u8 = 3;
/// `Flow::state`: the client sent RST (LVS CLOSE).
pub const STATE_TCP_CLOSE: u8 = 4;
/// `Flow::state`: a UDP flow.
pub const STATE_UDP: u8 = 5;
/// Size of `ServiceValue::timeouts` (indexed by state; a power of two so the program can
/// mask the index).
pub const STATES: usize = 8;

/// Default timeouts in seconds, by state: LVS's (`ipvsadm --set 900 120 300`; SYN_RECV
/// 60 s and CLOSE 10 s from ip_vs_proto_tcp.c).
pub const DEFAULT_TIMEOUTS: [u32; STATES] = [0, 60, 900, 120, 10, 300, 0, 0];

/// TCP flags as in the header's 14th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Key of `CONNTRACK_V4`: one flow, as the client sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    /// Client address, network order.
    pub src: u32,
    /// Virtual address, network order.
    pub dst: u32,
    /// Client port, network order.
    pub sport: u16,
    /// Virtual port, network order.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `CONNTRACK_V4`: where the flow goes and how long it may stay idle.
///
/// A direct-routing flow has one entry, keyed as the client sends. A NAT or full-NAT
/// flow has two, made together: the forward entry (keyed as the client sends) and the
/// reply entry (keyed as the real sends its answers, `FLOW_F_REPLY`). Each holds the
/// tuple its packets are rewritten to; the other entry's key is that tuple reversed
/// ([`peer_key`]), so either direction finds its twin to keep state and time in step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Real index (key of `REALS`).
    pub real: u32,
    /// `RealServer::generation` when the entry was made: a different one means the real
    /// was removed and the index reused.
    pub real_gen: u32,
    /// Last packet, in seconds of `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE),
    /// refreshed at most once a second.
    pub last_seen: u32,
    /// `STATE_*`.
    pub state: u8,
    /// `FLOW_F_*` bits.
    pub flags: u8,
    /// Id of the virtual service the flow was scheduled for: its row of
    /// `SERVICE_PARAMS` gives the timeouts and flags, so a hit needs no `SERVICES`
    /// look-up (service ids are below 65,536).
    pub service: u16,
    /// With `FLOW_F_NAT`: the packet's tuple after translation (addresses and ports in
    /// network order). Zero under direct routing.
    pub to: Tuple,
    /// With `FLOW_F_NAT`: the hop towards the client, learnt from the client's frames
    /// (the interface they came in by, the MAC they came from and the director's MAC
    /// they went to). A reply leaves by it; a forward packet from another hop moves it.
    pub hop_ifindex: u32,
    pub hop_mac: [u8; 6],
    pub hop_own_mac: [u8; 6],
    pub _pad: u32,
}

/// A flow's addresses and ports, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

/// `Flow::flags`: the service had `expire_nodest_conn` when the entry was made. Kept in
/// the entry because a removed service's id (and its `SERVICE_PARAMS` row) may go to
/// another service while its orphaned entries remain.
pub const FLOW_F_EXPIRE_NODEST: u8 = 1;
/// `Flow::flags`: the entry rewrites addresses and ports to `Flow::to` (NAT, full-NAT).
pub const FLOW_F_NAT: u8 = 2;
/// `Flow::flags`: the reply entry of a NAT flow (keyed as the real sends).
pub const FLOW_F_REPLY: u8 = 4;
/// `Flow::flags`: a full-NAT flow (the client's source is rewritten to a pool address).
pub const FLOW_F_SNAT: u8 = 8;
/// `Flow::flags`: the flow's service is persistent; while the flow carries packets it
/// keeps its client's template alive.
pub const FLOW_F_PERSIST: u8 = 16;

/// Key of `PERSIST_V4`: a persistent service's client (address under the service's
/// persistence mask), as LVS's persistence template names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKeyV4 {
    /// Service id.
    pub service: u32,
    /// Client address under `ServiceValue::persist_mask`, network order.
    pub client: u32,
}

/// Value of `SCRATCH` (per CPU, one entry): the program's working space beside its stack,
/// which the forwarding path fills. The daemon never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scratch {
    /// A persistence template's key and value, as they are looked up or written.
    pub persist_key: PersistKeyV4,
    pub template: Persist,
    /// A new flow's client address, virtual address (network order) and client port
    /// (network order), from the packet's first pass to the scheduler.
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub _pad: [u8; 6],
}

/// Value of `PERSIST_V4`: the real a persistent client is kept on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// Real index.
    pub real: u32,
    /// The real's generation when the template was made (another: the real was removed).
    pub real_gen: u32,
    /// Last new connection or packet of one of the client's flows, in seconds as
    /// `Flow::last_seen` (refreshed at most once a second per flow).
    pub last_seen: u32,
    pub _pad: u32,
}

/// Full-NAT sources tried for a new flow before it is refused (`drop_snat_exhausted`),
/// each on the next pool address: the first from the flow's hash, try `i` from the hash
/// of (flow hash, `i`). A pool half full fails one flow in 4 × 10^9; 90 % full, one in 30.
pub const SNAT_TRIES: u32 = 32;

/// The key of the other direction's entry: the translated tuple, reversed.
#[inline(always)]
pub fn peer_key(to: &Tuple, proto: u8) -> FlowKeyV4 {
    FlowKeyV4 {
        src: to.dst,
        dst: to.src,
        sport: to.dport,
        dport: to.sport,
        proto,
        _pad: [0; 3],
    }
}

/// Key of `FRAGMENTS_V4`: one fragmented datagram (RFC 791's reassembly key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKeyV4 {
    /// Source address, network order.
    pub src: u32,
    /// Destination (virtual) address, network order.
    pub dst: u32,
    /// IP identification, network order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `FRAGMENTS_V4`: the real the datagram's first fragment went to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub real: u32,
    pub real_gen: u32,
    /// Service id of the first fragment (for the service counters).
    pub service: u32,
    /// When the first fragment passed, in seconds (as `Flow::last_seen`).
    pub created: u32,
    /// Under NAT, the source and destination addresses the first fragment was given
    /// (network order); 0 and 0 under direct routing.
    pub src: u32,
    pub dst: u32,
    /// `FRAG_F_*` bits.
    pub flags: u32,
    /// With `FRAG_F_REPLY`: the hop towards the client (as `Flow::hop_*`).
    pub hop_ifindex: u32,
    pub hop_mac: [u8; 6],
    pub hop_own_mac: [u8; 6],
}

/// `FragValue::flags`: a NAT real's fragmented answer, which goes back to the client by
/// the hop; without it the datagram went to `real`.
pub const FRAG_F_REPLY: u32 = 1;

/// The single value of `SETTINGS`: director-wide knobs the daemon sets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// New connection-table entries per second per CPU above which new flows are still
    /// forwarded but not inserted (the flood guard); 0 means no limit.
    pub flood_rate: u32,
    /// Seconds a fragment-tracking entry stays usable.
    pub frag_timeout: u32,
    /// ICMP errors the program may send per second per CPU (time exceeded); 0 sends none.
    pub icmp_rate: u32,
    /// The generation the daemon gives the next new real. The program does not read it;
    /// a daemon adopting pinned maps continues from it, so a new real never takes a
    /// generation that entries of a removed one may still carry.
    pub next_generation: u32,
    /// Cookie of the network namespace whose daemon owns the maps (`SO_NETNS_COOKIE`).
    /// The program does not read it; a daemon refuses pinned maps another namespace's
    /// director owns.
    pub owner_netns: u64,
}

/// `FLOOD` slot of the connection-table flood guard.
pub const WINDOW_INSERTS: u32 = 0;
/// `FLOOD` slot of the ICMP error rate limit.
pub const WINDOW_ICMP: u32 = 1;
/// Number of `FLOOD` slots.
pub const WINDOWS: u32 = 2;

/// Default `Settings::icmp_rate`: the kernel's `icmp_msgs_per_sec`.
pub const DEFAULT_ICMP_RATE: u32 = 1000;

/// Value of the per-CPU `FLOOD` array: events (inserts, ICMP errors) in the current
/// second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodWindow {
    pub second: u32,
    /// Events counted in `second`.
    pub count: u32,
}

/// Value of `IFACES`: an interface the program is attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// Its MAC address: unicast frames for any other are another host's.
    pub mac: [u8; 6],
    pub _pad: u16,
}

/// Default flood-guard rate (Katran's, per CPU).
pub const DEFAULT_FLOOD_RATE: u32 = 125_000;
/// Default fragment-tracking lifetime: the kernel's `ipfrag_time`.
pub const DEFAULT_FRAG_TIMEOUT: u32 = 30;

/// What a packet does to an entry's state. `flags` are the TCP flags (0 for UDP).
/// Returns the new state, or `None` when the packet starts a new connection on a
/// finished entry's 5-tuple (a SYN after FIN or RST: the port was reused), which must be
/// scheduled afresh as LVS does.
#[inline(always)]
pub fn next_state(state: u8, flags: u8) -> Option<u8> {
    if state == STATE_UDP {
        return Some(STATE_UDP);
    }
    if flags & TCP_RST != 0 {
        return Some(STATE_TCP_CLOSE);
    }
    let syn_only = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if syn_only && (state == STATE_TCP_FIN || state == STATE_TCP_CLOSE) {
        return None;
    }
    if flags & TCP_FIN != 0 {
        return Some(STATE_TCP_FIN);
    }
    if state == STATE_TCP_SYN && flags & TCP_ACK != 0 {
        return Some(STATE_TCP_ESTABLISHED);
    }
    Some(state)
}

/// The state of a flow's first packet seen by this director. A TCP packet that is not a
/// bare SYN is mid-connection (after a restart, or moved from another director).
#[inline(always)]
pub fn first_state(is_tcp: bool, flags: u8) -> u8 {
    if !is_tcp {
        return STATE_UDP;
    }
    if flags & TCP_RST != 0 {
        STATE_TCP_CLOSE
    } else if flags & TCP_FIN != 0 {
        STATE_TCP_FIN
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        STATE_TCP_SYN
    } else {
        STATE_TCP_ESTABLISHED
    }
}

/// What a packet the real sends does to a NAT entry's state: its FIN and RST close the
/// connection as the client's do, but its SYN-ACK does not establish it; the client's
/// ACK does (as LVS's state table, where only the client's ACK leaves SYN_RECV).
#[inline(always)]
pub fn next_state_reply(state: u8, flags: u8) -> u8 {
    if state == STATE_UDP {
        STATE_UDP
    } else if flags & TCP_RST != 0 {
        STATE_TCP_CLOSE
    } else if flags & TCP_FIN != 0 {
        STATE_TCP_FIN
    } else {
        state
    }
}

/// Whether an entry last seen at `last_seen` has timed out at `now` (seconds).
#[inline(always)]
pub fn expired(last_seen: u32, now: u32, timeout: u32) -> bool {
    now.wrapping_sub(last_seen) > timeout
}

/// A flow key from a packet's fields (addresses as `AddrWords` word 0).
#[inline(always)]
pub fn flow_key_v4(
    src: &AddrWords,
    dst: &AddrWords,
    sport: u16,
    dport: u16,
    proto: u8,
) -> FlowKeyV4 {
    FlowKeyV4 {
        src: src[0],
        dst: dst[0],
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);
const _: () = assert!(core::mem::size_of::<Flow>() == 48);
const _: () = assert!(core::mem::size_of::<Tuple>() == 12);
const _: () = assert!(core::mem::size_of::<FragKeyV4>() == 12);
const _: () = assert!(core::mem::size_of::<FragValue>() == 44);
const _: () = assert!(core::mem::size_of::<Settings>() == 24);
const _: () = assert!(core::mem::size_of::<FloodWindow>() == 8);
const _: () = assert!(core::mem::size_of::<Iface>() == 8);
const _: () = assert!(core::mem::size_of::<PersistKeyV4>() == 8);
const _: () = assert!(core::mem::size_of::<Persist>() == 16);
const _: () = assert!(core::mem::size_of::<Scratch>() == 40);
const _: () = assert!(STATES.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), integers only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Tuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FragValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FloodWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Iface {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PersistKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Persist {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Scratch {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_follow_the_clients_flags() {
        let syn = first_state(true, TCP_SYN);
        assert_eq!(syn, STATE_TCP_SYN);
        assert_eq!(
            next_state(syn, TCP_SYN),
            Some(STATE_TCP_SYN),
            "a retransmitted SYN"
        );
        assert_eq!(next_state(syn, TCP_ACK), Some(STATE_TCP_ESTABLISHED));
        assert_eq!(
            next_state(STATE_TCP_ESTABLISHED, TCP_ACK | 0x08),
            Some(STATE_TCP_ESTABLISHED)
        );
        assert_eq!(
            next_state(STATE_TCP_ESTABLISHED, TCP_FIN | TCP_ACK),
            Some(STATE_TCP_FIN)
        );
        assert_eq!(next_state(STATE_TCP_FIN, TCP_ACK), Some(STATE_TCP_FIN));
        assert_eq!(
            next_state(STATE_TCP_ESTABLISHED, TCP_RST),
            Some(STATE_TCP_CLOSE)
        );
        // A new SYN on a finished 5-tuple is a new connection; on a live one it is not.
        assert_eq!(next_state(STATE_TCP_FIN, TCP_SYN), None);
        assert_eq!(next_state(STATE_TCP_CLOSE, TCP_SYN), None);
        assert_eq!(
            next_state(STATE_TCP_ESTABLISHED, TCP_SYN),
            Some(STATE_TCP_ESTABLISHED)
        );
        assert_eq!(next_state(STATE_UDP, 0), Some(STATE_UDP));
    }

    #[test]
    fn the_reals_flags_close_but_do_not_establish() {
        assert_eq!(
            next_state_reply(STATE_TCP_SYN, TCP_SYN | TCP_ACK),
            STATE_TCP_SYN
        );
        assert_eq!(
            next_state_reply(STATE_TCP_ESTABLISHED, TCP_FIN | TCP_ACK),
            STATE_TCP_FIN
        );
        assert_eq!(next_state_reply(STATE_TCP_SYN, TCP_RST), STATE_TCP_CLOSE);
        assert_eq!(next_state_reply(STATE_UDP, 0), STATE_UDP);
    }

    #[test]
    fn each_entrys_peer_key_is_its_translation_reversed() {
        // Full-NAT: client 1:1000 -> VIP 2:80 becomes pool 3:5000 -> real 4:8080.
        let to = Tuple {
            src: 3,
            dst: 4,
            sport: 5000,
            dport: 8080,
        };
        let reply = peer_key(&to, 6);
        assert_eq!(
            (reply.src, reply.dst, reply.sport, reply.dport),
            (4, 3, 8080, 5000)
        );
        let back = Tuple {
            src: 2,
            dst: 1,
            sport: 80,
            dport: 1000,
        };
        let forward = peer_key(&back, 6);
        assert_eq!(
            (forward.src, forward.dst, forward.sport, forward.dport),
            (1, 2, 1000, 80)
        );
    }

    #[test]
    fn mid_connection_packets_start_established() {
        assert_eq!(first_state(true, TCP_ACK), STATE_TCP_ESTABLISHED);
        assert_eq!(first_state(true, TCP_SYN | TCP_ACK), STATE_TCP_ESTABLISHED);
        assert_eq!(first_state(true, TCP_FIN | TCP_ACK), STATE_TCP_FIN);
        assert_eq!(first_state(true, TCP_RST), STATE_TCP_CLOSE);
        assert_eq!(first_state(false, 0), STATE_UDP);
    }

    #[test]
    fn expiry_is_strictly_after_the_timeout_and_survives_wrapping() {
        assert!(!expired(100, 160, 60));
        assert!(expired(100, 161, 60));
        assert!(!expired(u32::MAX - 5, 10, 60), "the clock wrapped");
        assert_eq!(DEFAULT_TIMEOUTS[STATE_TCP_ESTABLISHED as usize], 900);
        assert_eq!(DEFAULT_TIMEOUTS[STATE_TCP_FIN as usize], 120);
        assert_eq!(DEFAULT_TIMEOUTS[STATE_UDP as usize], 300);
    }
}
