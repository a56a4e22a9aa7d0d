//! Every map of the program, one comment each. Names and types come from `lb_common`;
//! the daemon may resize capacities at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lb_common::{
    Counters, RealServer, SCHED_SLOTS, ServiceKey, ServiceValue, VipKey,
    maps::{MAX_REALS, MAX_SERVICES, MAX_VIPS},
    reason::REASON_COUNT,
};

/// Virtual services by (VIP, port, protocol).
#[map(name = "XDPVS_SVC_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Virtual addresses, whatever the port: tells "VIP, unknown port" from "not a VIP".
#[map(name = "XDPVS_VIP_V1")]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Real servers by real index.
#[map(name = "XDPVS_REAL_V1")]
pub static REALS: Array<RealServer> = Array::with_max_entries(MAX_REALS, 0);

/// Per service, `SCHED_SLOTS` real indices; row = service id. Built by the daemon.
#[map(name = "XDPVS_SCHED_V1")]
pub static SCHED_TABLE: Array<u32> = Array::with_max_entries(MAX_SERVICES * SCHED_SLOTS, 0);

/// Forwarded packets and bytes per service.
#[map(name = "XDPVS_SVCST_V1")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Forwarded packets and bytes per real server.
#[map(name = "XDPVS_REALST_V1")]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Packets per outcome (`lb_common::reason::Reason`).
#[map(name = "XDPVS_REASON_V1")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
