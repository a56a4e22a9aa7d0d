//! Map names and capacities. The XDP program declares its maps with these names
//! (lb-ebpf/src/maps.rs); the daemon opens them by these names. A test loads the object
//! and checks each name is present. A name's version suffix changes with its layout.

/// `HashMap<ServiceKey, ServiceValue>`: the virtual services.
pub const SERVICES: &str = "XDPVS_SVC_V3";
/// `HashMap<VipKey, u32>`: every virtual address, so traffic to a VIP on an unconfigured
/// port or protocol is told apart from traffic that is not for us at all.
pub const VIPS: &str = "XDPVS_VIP_V1";
/// `Array<u64>`, `VIP_FILTER_WORDS` words: bit `vip_filter_bit(addr)` is set for every
/// virtual address. A clear bit proves "not a VIP" without a hash look-up.
pub const VIP_FILTER: &str = "XDPVS_VIPF_V1";
/// `HashMap<u32, RealServer>`: the real servers of all services, by real index, with
/// their next hops.
pub const REALS: &str = "XDPVS_REAL_V4";
/// `ArrayOfMaps` by service id: each service's scheduling table, an `Array<u32>` of its
/// own size (`BPF_F_INNER_MAP`) holding its length in slot `TABLE_LEN_SLOT` and real
/// indices after it. The daemon fills a new table in one batch and swaps it in with one
/// update; the kernel frees the old one when no program run holds it.
pub const SCHED_TABLES: &str = "XDPVS_TABLES_V1";
/// `Array<RealConns>` by real index: live connections per real for `lc`, `wlc`, `sed`
/// and `nq` (recounted by the daemon, new flows added by the program).
pub const REAL_CONNS: &str = "XDPVS_CONNS_V1";
/// `PerCpuArray<u32>` by service id: each CPU's position in an `rr`/`wrr` table.
pub const RR_CURSORS: &str = "XDPVS_RRCUR_V1";
/// `LruHashMap<FlowKeyV4, Flow>` (`BPF_F_NO_COMMON_LRU`): the IPv4 connection table.
pub const CONNTRACK_V4: &str = "XDPVS_CT4_V3";
/// `Array<ServiceValue>` by service id: what a connection-table hit needs of its
/// service (timeouts, flags), read without a hash look-up. Written before `SERVICES`.
pub const SERVICE_PARAMS: &str = "XDPVS_SVCP_V2";
/// `LruHashMap<PersistKeyV4, Persist>`: persistent services' client templates (LVS
/// `-p`): which real each client (under the service's mask) is kept on.
pub const PERSIST_V4: &str = "XDPVS_PERS4_V1";
/// `Array<PersistParams>` by service id: persistent services' timeout and netmask.
pub const PERSIST_PARAMS: &str = "XDPVS_PERSP_V1";
/// `PerCpuArray<conntrack::Scratch>`, one entry: the program's working space beside its
/// stack (which is full): a new flow's addresses between its two passes, persistence
/// keys and values.
pub const SCRATCH: &str = "XDPVS_SCRATCH_V1";
/// `LruHashMap<FragKeyV4, FragValue>`: where each fragmented datagram's first fragment went.
pub const FRAGMENTS_V4: &str = "XDPVS_FRAG4_V2";
/// `Array<SnatPool>` by pool id: the source addresses and ports of full-NAT services.
pub const SNAT_POOLS: &str = "XDPVS_SNAT_V1";
/// `Array<u64>`, `VIP_FILTER_WORDS` words: bit `reply_filter_bit(addr)` is set for every
/// real of a NAT or full-NAT service, so only their packets are looked up as replies.
pub const REPLY_FILTER: &str = "XDPVS_RPLF_V1";
/// `DevMapHash` by ifindex: the interfaces the program may redirect to (the attached
/// ones), so XDP_REDIRECT goes through a device map and is flushed in bulk.
pub const TX_PORTS: &str = "XDPVS_TXPORT_V1";
/// `HashMap<u32, Iface>`: the interfaces the program is attached to, by ifindex.
pub const IFACES: &str = "XDPVS_IFACE_V1";
/// `Array<Iface>`, `IFACE_SLOTS` entries: the same for interfaces whose index is below
/// `IFACE_SLOTS`, read without a hash look-up (an all-zero MAC: not attached).
pub const IFACE_INDEX: &str = "XDPVS_IFIDX_V1";
/// `Array<Settings>`, one entry: director-wide knobs.
pub const SETTINGS: &str = "XDPVS_SETTINGS_V2";
/// `PerCpuArray<FloodWindow>`, `conntrack::WINDOWS` entries: per-CPU counts per second
/// (flood guard inserts, ICMP errors sent).
pub const FLOOD: &str = "XDPVS_FLOOD_V1";
/// `PerCpuArray<Counters>` indexed by service id.
pub const SERVICE_STATS: &str = "XDPVS_SVCST_V3";
/// `PerCpuArray<Counters>` indexed by real index.
pub const REAL_STATS: &str = "XDPVS_REALST_V3";
/// `PerCpuArray<u64>` indexed by `reason::Reason` code: every packet's outcome.
pub const REASONS: &str = "XDPVS_REASON_V4";
/// `PerCpuArray<u64>` indexed by `event::Event` code.
pub const EVENTS: &str = "XDPVS_EVENT_V3";

/// Every map name, for checks that the object and the daemon agree.
pub const ALL: [&str; 24] = [
    SERVICES,
    SNAT_POOLS,
    REPLY_FILTER,
    TX_PORTS,
    SERVICE_PARAMS,
    IFACE_INDEX,
    VIPS,
    VIP_FILTER,
    REALS,
    SCHED_TABLES,
    RR_CURSORS,
    REAL_CONNS,
    CONNTRACK_V4,
    PERSIST_V4,
    PERSIST_PARAMS,
    SCRATCH,
    FRAGMENTS_V4,
    IFACES,
    SETTINGS,
    FLOOD,
    SERVICE_STATS,
    REAL_STATS,
    REASONS,
    EVENTS,
];

/// Default capacity of `SERVICES`, `SERVICE_STATS`, `SCHED_TABLES`, `RR_CURSORS` and
/// `PERSIST_PARAMS`.
/// The daemon may resize at load time (`limits` in the config).
pub const MAX_SERVICES: u32 = 256;
/// Default capacity of `VIPS`.
pub const MAX_VIPS: u32 = 256;
/// Default capacity of `REALS`, `REAL_STATS` and `REAL_CONNS`.
pub const MAX_REALS: u32 = 4096;
/// Default capacity of `CONNTRACK_V4`: a million entries (128 MiB of kernel memory with
/// the LRU's per-element overhead; a NAT flow takes two; see docs/CONFIG.md).
pub const MAX_FLOWS: u32 = 1 << 20;
/// Default capacity of `PERSIST_V4`: persistence templates (16 bytes each, 96 with the
/// LRU's overhead).
pub const MAX_PERSISTENT: u32 = 1 << 18;
/// Default capacity of `FRAGMENTS_V4`.
pub const MAX_FRAGMENTED: u32 = 16_384;
/// Capacity of `SNAT_POOLS` (the director's pool is row 0; services with their own
/// pool take the others).
pub const MAX_POOLS: u32 = 64;
/// Capacity of `IFACES` and `TX_PORTS`.
pub const MAX_IFACES: u32 = 64;
/// Capacity of `IFACE_INDEX`: interfaces with a larger index use `IFACES` only.
pub const IFACE_SLOTS: u32 = 4096;
