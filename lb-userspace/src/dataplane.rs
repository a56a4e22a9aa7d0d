//! The only code that touches the XDP program and its maps: load (with the configured
//! capacities), write a plan into the maps, attach and detach, read counters.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, xdp::XdpLinkId},
};
use lb_common::{
    Counters, RealServer, SCHED_SLOTS, VipKey, maps,
    reason::{REASON_COUNT, Reason},
};

use crate::{
    config::{Limits, XdpMode},
    plan::Plan,
};

/// The XDP object, built by build.rs from lb-ebpf.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs.bpf.o"));

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "xdpvs";

/// Errors from the kernel side of the director.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object could not be loaded (maps created, relocations applied).
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The program was refused, e.g. by the verifier.
    #[error("loading the XDP program: {0}")]
    Program(#[source] ProgramError),
    /// The object lacks a map the daemon expects: the binary and object disagree.
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Attaching to an interface failed (no such interface, no driver XDP support, ...).
    #[error("attaching to {interface}: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

/// Counter readings for a plan, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Packets per reason, indexed by reason code.
    pub reasons: Vec<u64>,
    /// Per service (plan order): the service's counters and its reals' (plan order).
    pub services: Vec<(Counters, Vec<Counters>)>,
}

impl Snapshot {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons.get(reason as usize).copied().unwrap_or(0)
    }
}

/// Makes a hash map hold exactly `wanted`: inserts or updates each entry, then removes
/// the keys that are not wanted.
fn sync_hash_map<K, V>(
    map: &mut aya::maps::Map,
    name: &'static str,
    wanted: std::collections::HashMap<K, V>,
) -> Result<(), DataplaneError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let e = map_err(name);
    let mut map: HashMap<_, K, V> = HashMap::try_from(map).map_err(&e)?;
    for (k, v) in &wanted {
        map.insert(k, v, 0).map_err(&e)?;
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(&e)?;
    }
    Ok(())
}

/// The loaded XDP program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl Dataplane {
    /// Loads the program and creates its maps with the given capacities. Nothing is
    /// attached yet.
    pub fn load(limits: Limits) -> Result<Dataplane, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::SERVICES, limits.max_services)
            .map_max_entries(maps::VIPS, limits.max_services)
            .map_max_entries(maps::SERVICE_STATS, limits.max_services)
            .map_max_entries(maps::SCHED_TABLE, limits.max_services * SCHED_SLOTS)
            .map_max_entries(maps::REALS, limits.max_reals)
            .map_max_entries(maps::REAL_STATS, limits.max_reals)
            .load(BPF_OBJECT)?;
        for name in maps::ALL {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::MissingMap(name));
            }
        }
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::Program(ProgramError::NotLoaded))?
            .try_into()
            .map_err(DataplaneError::Program)?;
        program.load().map_err(DataplaneError::Program)?;
        Ok(Dataplane {
            ebpf,
            links: Vec::new(),
        })
    }

    /// The loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("load() checked the program exists and is XDP")
    }

    /// Attaches the program to an interface.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        let flags = match mode {
            XdpMode::Driver => aya::programs::xdp::XdpMode::Driver,
            XdpMode::Generic => aya::programs::xdp::XdpMode::Skb,
        };
        let link = self
            .program_mut()
            .attach(interface, flags)
            .map_err(|source| DataplaneError::Attach {
                interface: interface.to_owned(),
                source,
            })?;
        self.links.push((interface.to_owned(), link));
        Ok(())
    }

    /// Detaches from every interface (also done when the Dataplane is dropped).
    pub fn detach_all(&mut self) {
        for (interface, link) in std::mem::take(&mut self.links) {
            if let Err(e) = self.program_mut().detach(link) {
                log::warn!("detaching from {interface}: {e}");
            }
        }
    }

    /// Writes a plan into the maps. Reals and tables go first and services last, so the
    /// program never finds a service whose table is not in place; entries that the plan
    /// no longer has are removed.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        {
            let e = map_err(maps::REALS);
            let mut reals: Array<_, RealServer> =
                Array::try_from(self.map_mut(maps::REALS)?).map_err(&e)?;
            for r in plan.services.iter().flat_map(|s| &s.reals) {
                reals.set(r.index, r.value, 0).map_err(&e)?;
            }
        }
        {
            let e = map_err(maps::SCHED_TABLE);
            let mut table: Array<_, u32> =
                Array::try_from(self.map_mut(maps::SCHED_TABLE)?).map_err(&e)?;
            for s in &plan.services {
                let row = s.value.id * SCHED_SLOTS;
                for (slot, &real) in s.table.iter().enumerate() {
                    table.set(row + slot as u32, real, 0).map_err(&e)?;
                }
            }
        }
        sync_hash_map(
            self.map_mut(maps::SERVICES)?,
            maps::SERVICES,
            plan.services.iter().map(|s| (s.key, s.value)).collect(),
        )?;
        let vips = plan.services.iter().map(|s| {
            let key = VipKey {
                addr: s.key.addr,
                family: u32::from(s.key.family),
            };
            (key, 0u32)
        });
        sync_hash_map(self.map_mut(maps::VIPS)?, maps::VIPS, vips.collect())?;
        Ok(())
    }

    /// Reads every counter the plan refers to.
    pub fn snapshot(&self, plan: &Plan) -> Result<Snapshot, DataplaneError> {
        let reasons: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(maps::REASONS)?).map_err(map_err(maps::REASONS))?;
        let reasons = (0..REASON_COUNT)
            .map(|i| reasons.get(&i, 0).map(|v| v.iter().sum()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(map_err(maps::REASONS))?;
        let svc: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(maps::SERVICE_STATS)?)
            .map_err(map_err(maps::SERVICE_STATS))?;
        let real: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(maps::REAL_STATS)?)
            .map_err(map_err(maps::REAL_STATS))?;
        let sum = |values: aya::maps::PerCpuValues<Counters>| {
            values.iter().fold(Counters::default(), |a, c| Counters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
        };
        let mut services = Vec::with_capacity(plan.services.len());
        for s in &plan.services {
            let counters = sum(svc
                .get(&s.value.id, 0)
                .map_err(map_err(maps::SERVICE_STATS))?);
            let reals = s
                .reals
                .iter()
                .map(|r| real.get(&r.index, 0).map(sum))
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err(maps::REAL_STATS))?;
            services.push((counters, reals));
        }
        Ok(Snapshot { reasons, services })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }
}
