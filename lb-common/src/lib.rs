//! The xdpvs map ABI: every key and value the XDP program and the daemon exchange.
//!
//! Rules (see docs/ARCHITECTURE.md): `#[repr(C)]`, no implicit padding, no `bool`,
//! `Option` or enums in map values (integers plus named constants), addresses and ports in
//! network byte order as noted per field, and a size assertion per type. Map names and
//! capacities are defined here once. When a value layout changes, the map name gets a new
//! version suffix so an old pinned map is never read with a new layout.
#![no_std]

pub mod bench;
pub mod conntrack;
pub mod event;
pub mod hash;
pub mod maps;
pub mod reason;

/// `ServiceKey::family` / `RealServer::family` for IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// `ServiceKey::family` / `RealServer::family` for IPv6 (keys are ready; the path is not).
pub const FAMILY_IPV6: u8 = 6;

/// IANA protocol numbers used in `ServiceKey::proto`.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// LVS `sh`: hash of the client (source) address.
pub const SCHED_SH: u32 = 1;
/// LVS `dh`: hash of the destination address.
pub const SCHED_DH: u32 = 2;
/// LVS `rr`: the service's reals in turn (a per-CPU cursor over the table).
pub const SCHED_RR: u32 = 3;
/// LVS `wrr`: IPVS's weighted interleaving, precomputed by the daemon (a per-CPU cursor
/// over the table).
pub const SCHED_WRR: u32 = 4;
/// LVS `mh`: Maglev hashing of the client address.
pub const SCHED_MH: u32 = 5;
/// LVS `lc`: the fewest connections (active × 256 + inactive).
pub const SCHED_LC: u32 = 6;
/// LVS `wlc`: the fewest connections per unit of weight.
pub const SCHED_WLC: u32 = 7;
/// LVS `sed`: the shortest expected delay, (active + 1) / weight.
pub const SCHED_SED: u32 = 8;
/// LVS `nq`: an idle real (no active connection) if there is one, else as `sed`.
pub const SCHED_NQ: u32 = 9;
/// Most reals in the table of an `lc`-family service (the program compares them all for
/// each new flow).
pub const MAX_LEAST_REALS: u32 = 256;

/// A scheduling table is an array of `[u32; 2]` elements (an array map rounds every value
/// up to 8 bytes, so two positions per element halve its memory). Element 0 holds the
/// number of positions (word 0); position `n` is word `n % 2` of element `1 + n / 2`.
/// One map holds both, so a table swap never pairs one table's length with another's
/// positions.
pub const TABLE_LEN_SLOT: u32 = 0;
/// Most positions in one scheduling table (Maglev's largest size is 131,071; a `wrr`
/// sequence is the sum of the weights over their greatest common divisor).
pub const MAX_TABLE_LEN: u32 = 1 << 20;

/// LVS direct routing ("gatewaying", `ipvsadm -g`): only the MAC addresses are rewritten.
pub const FWD_DR: u32 = 1;
/// LVS masquerading (`ipvsadm -m`): the destination becomes the real's address and port;
/// the real's replies come back through the director, which puts the VIP back.
pub const FWD_NAT: u32 = 2;
/// Full NAT: as `FWD_NAT`, and the source becomes an address and port of the service's
/// SNAT pool, so the reals need no route back through the director.
pub const FWD_FULLNAT: u32 = 3;

/// `REPLY_FILTER` bit of a NAT real's address: the same hash as [`vip_filter_bit`]. A
/// packet to an address that is not a VIP is looked up as a NAT reply only when its
/// source's bit is set.
#[inline(always)]
pub const fn reply_filter_bit(addr_word: u32) -> u32 {
    vip_filter_bit(addr_word)
}

/// `VIP_FILTER` bit of an IPv4 address (network order, as in `AddrWords` word 0): a
/// Fibonacci hash to 16 bits. The program tests this bit before any hash-map look-up, so
/// traffic that is not for a virtual address costs one array read.
#[inline(always)]
pub const fn vip_filter_bit(addr_word: u32) -> u32 {
    addr_word.wrapping_mul(0x9e37_79b1) >> 16
}

/// Number of 64-bit words in `VIP_FILTER` (65,536 bits).
pub const VIP_FILTER_WORDS: u32 = 1024;

/// A real index that names no real server (in the daemon's tables; the program never
/// finds one in a scheduling table, which holds only weighted reals).
pub const REAL_NONE: u32 = u32::MAX;

/// An address as four 32-bit words holding the address bytes in network order (word 0 is
/// bytes 0..4 read in memory order). IPv4 uses word 0; words 1..3 are zero.
pub type AddrWords = [u32; 4];

/// Converts an IPv4 address to `AddrWords`.
pub const fn ipv4_words(octets: [u8; 4]) -> AddrWords {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Converts an IPv6 address to `AddrWords`.
pub const fn ipv6_words(o: [u8; 16]) -> AddrWords {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Key of `SERVICES`: one virtual service (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual address, network order (see [`AddrWords`]).
    pub addr: AddrWords,
    /// Virtual port, network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index in `SCHED_TABLES`, `RR_CURSORS` and `SERVICE_STATS`; below `MAX_SERVICES`.
    pub id: u32,
    /// `SCHED_*`.
    pub scheduler: u32,
    /// `FWD_DR`, `FWD_NAT` or `FWD_FULLNAT`.
    pub forwarding: u32,
    /// Seed of the flow hash (host order). Equal seeds and configs give equal choices
    /// on every director.
    pub hash_seed: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// Row of `SNAT_POOLS` for `FWD_FULLNAT`; unused otherwise.
    pub pool: u32,
    /// Idle timeout in seconds of a connection-table entry, indexed by its state
    /// (`conntrack::STATE_*`); index 0 is unused.
    pub timeouts: [u32; conntrack::STATES],
}

/// Value of `PERSIST_PARAMS`, by service id: a persistent service's persistence (LVS
/// `-p`, `-M`). Read only for services with `SVC_F_PERSIST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistParams {
    /// Seconds a client's template keeps it on its real after the last packet of its
    /// flows.
    pub timeout: u32,
    /// The mask, network order, client addresses are reduced to for their template.
    pub mask: u32,
}

/// `ServiceValue::flags`: an entry whose real server was removed is deleted when its next
/// packet arrives (that packet is dropped; the one after is scheduled afresh), as LVS
/// does with `expire_nodest_conn = 1`. Without it the entry's packets are dropped until
/// the entry times out (`expire_nodest_conn = 0`).
pub const SVC_F_EXPIRE_NODEST: u32 = 1;
/// `ServiceValue::flags`: `sh` and `mh` hash the client's port with its address
/// (IPVS `sh-port`, `mh-port`).
pub const SVC_F_HASH_PORT: u32 = 2;
/// `ServiceValue::flags`: the service is persistent (`PERSIST_PARAMS` has its row).
pub const SVC_F_PERSIST: u32 = 4;
/// `ServiceValue::flags`: the service lost its quorum (its reals are held out by the
/// daemon): a new flow that finds no real is counted `drop_quorum_lost`, not
/// `drop_no_real`.
pub const SVC_F_QUORUM_LOST: u32 = 8;

/// Key of `VIPS`: a virtual address, whatever its ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Virtual address, network order (see [`AddrWords`]).
    pub addr: AddrWords,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`, widened to u32 so the key has no padding.
    pub family: u32,
}

/// `RealServer::nh_state`: the next hop is not known (yet); the program falls back to
/// `bpf_fib_lookup`.
pub const NH_UNRESOLVED: u8 = 0;
/// `RealServer::nh_state`: `dmac`, `smac`, `ifindex` and `mtu` are current.
pub const NH_RESOLVED: u8 = 1;
/// `RealServer::nh_state`: the director's route to the real now goes through a gateway,
/// so direct routing cannot reach it; its packets are dropped (`drop_real_offlink`).
pub const NH_OFFLINK: u8 = 2;

/// Value of `REALS`: one real server of one virtual service (LVS "destination") and its
/// next hop, which the daemon keeps current from rtnetlink. The daemon replaces a value
/// whole (a hash-map update swaps the element), so the program never reads half of one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealServer {
    /// Real server address, network order (see [`AddrWords`]).
    pub addr: AddrWords,
    /// Changes whenever the daemon gives this real index to another real server, so a
    /// connection-table entry made for the old one is recognised as orphaned.
    pub generation: u32,
    /// Egress interface towards the real (host order).
    pub ifindex: u32,
    /// Real port, network byte order; equals the virtual port under direct routing, and
    /// is the port a NAT flow's destination becomes.
    pub port: u16,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// `NH_UNRESOLVED`, `NH_RESOLVED` or `NH_OFFLINK`.
    pub nh_state: u8,
    /// The real's MAC address (next hop), when `nh_state` is `NH_RESOLVED`.
    pub dmac: [u8; 6],
    /// The director's MAC address on `ifindex`.
    pub smac: [u8; 6],
    /// MTU of `ifindex` (host order): larger datagrams are dropped as `drop_frag_needed`.
    pub mtu: u32,
    /// Id of the service this real belongs to. The program does not read it; a daemon
    /// that adopts pinned maps after a restart reads it to keep every real's index.
    /// Service ids are below 65,536 (`limits.max_services`).
    pub service: u16,
    /// `REAL_F_*` bits.
    pub flags: u16,
}

/// Value of `REAL_CONNS`, by real index: the real's live connections as the
/// least-connection schedulers count them (LVS ActiveConn / InActConn). The daemon
/// recounts them from the connection table every second; the program adds each new flow
/// it schedules to `inactive` at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealConns {
    /// TCP connections in the established state.
    pub active: u32,
    /// Other TCP states and UDP flows.
    pub inactive: u32,
}

/// `RealServer::flags`: the real takes no new clients (weight 0: drained, or its health
/// check failed). Its persistence templates are not followed (LVS with
/// `expire_quiescent_template = 1`); its established flows continue.
pub const REAL_F_QUIESCENT: u16 = 1;

/// Most addresses in one SNAT pool.
pub const POOL_ADDRS: usize = 16;

/// Value of `SNAT_POOLS`: the source addresses and ports full-NAT flows take. Each flow
/// gets an (address, port) that no live flow to the same real address and port holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool {
    /// Director addresses, network order; the first `count` are used.
    pub addrs: [u32; POOL_ADDRS],
    /// Addresses in use, 1..=`POOL_ADDRS` (0: the pool is empty, flows are refused).
    pub count: u32,
    /// First and last source port, host order, `first <= last`, `first >= 1`.
    pub first_port: u16,
    pub last_port: u16,
}

/// Value of `SERVICE_STATS` and `REAL_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded, Ethernet header included.
    pub bytes: u64,
    /// New flows scheduled (LVS "Conns"): each flow's first packet, counted once it has
    /// a real, whether or not the connection table kept it.
    pub flows: u64,
    /// TCP flows begun with a SYN (the passive health signal's handshakes).
    pub syns: u64,
    /// SYN-ACKs back from the real (NAT and full-NAT, where the director sees replies).
    pub synacks: u64,
    /// RSTs back from the real (NAT and full-NAT).
    pub resets: u64,
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 56);
const _: () = assert!(core::mem::size_of::<PersistParams>() == 8);
const _: () = assert!(core::mem::size_of::<RealConns>() == 8);
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<RealServer>() == 48);
const _: () = assert!(core::mem::size_of::<Counters>() == 48);
const _: () = assert!(core::mem::size_of::<SnatPool>() == 72);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), made of integers only, and has no padding (sizes are
    // asserted above), so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RealServer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SnatPool {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PersistParams {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RealConns {}
}
