//! Every map of the program, one comment each. Names and types come from `lb_common`;
//! the daemon may resize capacities at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Counters, PersistParams, RealConns, RealServer, ServiceKey, ServiceValue, SnatPool,
    VIP_FILTER_WORDS, VipKey,
    conntrack::{
        FloodWindow, Flow, FlowKeyV4, FragKeyV4, FragValue, Iface, Persist, PersistKeyV4, Scratch,
        Settings, WINDOWS,
    },
    event::EVENT_COUNT,
    maps::{
        IFACE_SLOTS, MAX_FLOWS, MAX_FRAGMENTED, MAX_IFACES, MAX_PERSISTENT, MAX_POOLS, MAX_REALS,
        MAX_SERVICES, MAX_VIPS,
    },
    reason::REASON_COUNT,
};

/// Virtual services by (VIP, port, protocol).
#[map(name = "XDPVS_SVC_V3")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The same service values by id, for connection-table hits.
#[map(name = "XDPVS_SVCP_V2")]
pub static SERVICE_PARAMS: Array<ServiceValue> = Array::with_max_entries(MAX_SERVICES, 0);

/// Virtual addresses, whatever the port: tells "VIP, unknown port" from "not a VIP".
#[map(name = "XDPVS_VIP_V1")]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// One bit per hashed virtual address: a clear bit proves "not a VIP" cheaply.
#[map(name = "XDPVS_VIPF_V1")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// One bit per hashed address of a NAT or full-NAT real: a clear bit proves a packet
/// to a non-VIP is not a NAT reply.
#[map(name = "XDPVS_RPLF_V1")]
pub static REPLY_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Full-NAT source pools by pool id.
#[map(name = "XDPVS_SNAT_V1")]
pub static SNAT_POOLS: Array<SnatPool> = Array::with_max_entries(MAX_POOLS, 0);

/// The attached interfaces by ifindex, for `bpf_redirect_map` (bulk transmit).
#[map(name = "XDPVS_TXPORT_V1")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Real servers and their next hops, by real index.
#[map(name = "XDPVS_REAL_V4")]
pub static REALS: HashMap<u32, RealServer> = HashMap::with_max_entries(MAX_REALS, 0);

/// `BPF_F_INNER_MAP`: inner maps of any size fit the outer map (the template's size is a
/// placeholder); the verifier then bounds-checks each inner look-up at run time.
const BPF_F_INNER_MAP: usize = 1 << 12;
/// `BPF_F_MMAPABLE`: the daemon writes a new table through a memory mapping, one copy
/// rather than one update per element.
const BPF_F_MMAPABLE: usize = 1 << 10;

/// One scheduling table: its length in element 0, real indices two per element after it
/// (`lb_common::TABLE_LEN_SLOT`).
pub type SchedTable = btf_maps::Array<[u32; 2], 1, { BPF_F_INNER_MAP | BPF_F_MMAPABLE }>;

/// Each service's scheduling table, by service id (an inner map per service, sized to
/// its scheduler's needs; swapped whole by the daemon).
#[btf_map(name = "XDPVS_TABLES_V1")]
pub static SCHED_TABLES: btf_maps::ArrayOfMaps<SchedTable, { MAX_SERVICES as usize }> =
    btf_maps::ArrayOfMaps::new();

/// Live connections per real, by real index, for the least-connection schedulers.
#[map(name = "XDPVS_CONNS_V1")]
pub static REAL_CONNS: Array<RealConns> = Array::with_max_entries(MAX_REALS, 0);

/// Each CPU's position in each `rr`/`wrr` service's table, by service id.
#[map(name = "XDPVS_RRCUR_V1")]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// The IPv4 connection table. Per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`) keep inserts
/// from contending on one lock; each CPU evicts its own least recently used entries.
#[map(name = "XDPVS_CT4_V3")]
pub static CONNTRACK_V4: LruHashMap<FlowKeyV4, Flow> =
    LruHashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_COMMON_LRU);

/// Persistent services' client templates: the real each client is kept on.
#[map(name = "XDPVS_PERS4_V1")]
pub static PERSIST_V4: LruHashMap<PersistKeyV4, Persist> =
    LruHashMap::with_max_entries(MAX_PERSISTENT, 0);

/// Persistent services' timeout and netmask, by service id.
#[map(name = "XDPVS_PERSP_V1")]
pub static PERSIST_PARAMS: Array<PersistParams> = Array::with_max_entries(MAX_SERVICES, 0);

/// Each CPU's working space beside the stack (`lb_common::conntrack::Scratch`).
#[map(name = "XDPVS_SCRATCH_V1")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Where each fragmented datagram's first fragment went.
#[map(name = "XDPVS_FRAG4_V2")]
pub static FRAGMENTS_V4: LruHashMap<FragKeyV4, FragValue> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED, 0);

/// The interfaces the program is attached to, with their MACs.
#[map(name = "XDPVS_IFACE_V1")]
pub static IFACES: HashMap<u32, Iface> = HashMap::with_max_entries(MAX_IFACES, 0);

/// The same for interface indices below `IFACE_SLOTS`, without a hash look-up.
#[map(name = "XDPVS_IFIDX_V1")]
pub static IFACE_INDEX: Array<Iface> = Array::with_max_entries(IFACE_SLOTS, 0);

/// Director-wide knobs (flood guard, fragment timeout).
#[map(name = "XDPVS_SETTINGS_V2")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-CPU counts in the current second: flood guard inserts, ICMP errors sent.
#[map(name = "XDPVS_FLOOD_V1")]
pub static FLOOD: PerCpuArray<FloodWindow> = PerCpuArray::with_max_entries(WINDOWS, 0);

/// Forwarded packets and bytes per service.
#[map(name = "XDPVS_SVCST_V3")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Forwarded packets and bytes per real server.
#[map(name = "XDPVS_REALST_V3")]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets per outcome (`lb_common::reason::Reason`).
#[map(name = "XDPVS_REASON_V4")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Events per kind (`lb_common::event::Event`).
#[map(name = "XDPVS_EVENT_V3")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);
