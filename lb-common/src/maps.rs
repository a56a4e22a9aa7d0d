//! Map names and capacities. The XDP program declares its maps with these names
//! (lb-ebpf/src/maps.rs); the daemon opens them by these names. A test loads the object
//! and checks each name is present.

/// `HashMap<ServiceKey, ServiceValue>`: the virtual services.
pub const SERVICES: &str = "XDPVS_SVC_V1";
/// `HashMap<VipKey, u32>`: every virtual address, so traffic to a VIP on an unconfigured
/// port or protocol is told apart from traffic that is not for us at all.
pub const VIPS: &str = "XDPVS_VIP_V1";
/// `Array<RealServer>`: the real servers of all services, indexed by real index.
pub const REALS: &str = "XDPVS_REAL_V1";
/// `Array<u32>`: `MAX_SERVICES` rows of `SCHED_SLOTS` real indices, built by the daemon.
pub const SCHED_TABLE: &str = "XDPVS_SCHED_V1";
/// `PerCpuArray<Counters>` indexed by service id.
pub const SERVICE_STATS: &str = "XDPVS_SVCST_V1";
/// `PerCpuArray<Counters>` indexed by real index.
pub const REAL_STATS: &str = "XDPVS_REALST_V1";
/// `PerCpuArray<u64>` indexed by `reason::Reason` code: every packet's outcome.
pub const REASONS: &str = "XDPVS_REASON_V1";

/// Every map name, for checks that the object and the daemon agree.
pub const ALL: [&str; 7] = [
    SERVICES,
    VIPS,
    REALS,
    SCHED_TABLE,
    SERVICE_STATS,
    REAL_STATS,
    REASONS,
];

/// Default capacity of `SERVICES` and `SERVICE_STATS`, and rows of `SCHED_TABLE`.
/// The daemon may resize at load time (`limits` in the config).
pub const MAX_SERVICES: u32 = 256;
/// Default capacity of `VIPS`.
pub const MAX_VIPS: u32 = 256;
/// Default capacity of `REALS` and `REAL_STATS`.
pub const MAX_REALS: u32 = 4096;
