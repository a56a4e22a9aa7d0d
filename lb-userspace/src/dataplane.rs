//! The only code that touches the XDP program and its maps: load (with the configured
//! capacities), write a plan into the maps (only what changed since the last one), keep
//! the reals' next hops, attach and detach, read counters and connection entries.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    util::nr_cpus,
};
use lb_common::{
    Counters, FWD_DR, PersistParams, RealConns, RealServer, ServiceKey, ServiceValue, SnatPool,
    VIP_FILTER_WORDS, VipKey,
    conntrack::{Flow, FlowKeyV4, Iface, Persist, PersistKeyV4, Settings},
    event::{EVENT_COUNT, Event},
    maps,
    reason::{REASON_COUNT, Reason},
    reply_filter_bit, vip_filter_bit,
};

use crate::{
    config::{Limits, XdpMode},
    nexthop::NextHop,
    pins,
    plan::{self, Ids, Plan},
    tables,
};

/// The XDP object, built by build.rs from lb-ebpf.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs.bpf.o"));

/// Elements per batch update of the other maps (a bounded buffer per call).
const WRITE_BATCH: usize = 4096;

/// Scheduling tables made and swapped in per batch update of `SCHED_TABLES`: each holds a
/// descriptor until its batch is written (`Dataplane::load` raises the descriptor limit),
/// and each batch costs an RCU grace period.
const TABLES_PER_BATCH: usize = 1024;

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
    /// The number of possible CPUs could not be read.
    #[error("counting CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    /// A link pin could not be made, read or removed.
    #[error("{}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Attaching to an interface failed (no such interface, no driver XDP support, ...).
    #[error("attaching to {interface}: {source}{}", attach_hint(source))]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

/// What an attach failure's kernel error means for the operator.
fn attach_hint(e: &ProgramError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.raw_os_error() {
                Some(libc::EBUSY) => ": EBUSY: the interface already has an XDP program attached \
                                     (another tool's, or another daemon's); remove it (`ip link set \
                                     dev IF xdp off`) or stop its owner first"
                    .to_owned(),
                Some(libc::EOPNOTSUPP) => ": EOPNOTSUPP: the driver has no native XDP; use \
                                           `xdp_mode: generic` (slow) or another NIC"
                    .to_owned(),
                _ => format!(": {io}"),
            };
        }
        source = s.source();
    }
    String::new()
}

/// Counter readings for a plan, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Packets per reason, indexed by reason code.
    pub reasons: Vec<u64>,
    /// Occurrences per event, indexed by event code.
    pub events: Vec<u64>,
    /// Per service (plan order): the service's counters and its reals' (plan order).
    pub services: Vec<(Counters, Vec<Counters>)>,
}

impl Snapshot {
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons.get(reason as usize).copied().unwrap_or(0)
    }

    pub fn event(&self, event: Event) -> u64 {
        self.events.get(event as usize).copied().unwrap_or(0)
    }
}

/// A plan's real with its current next hop (or the plan's interface while unresolved).
fn with_hop(mut value: RealServer, hop: Option<&NextHop>) -> RealServer {
    if let Some(h) = hop {
        value.nh_state = h.state;
        value.dmac = h.dmac;
        value.smac = h.smac;
        value.mtu = h.mtu;
        if h.ifindex != 0 {
            value.ifindex = h.ifindex;
        }
    }
    value
}

/// Makes a hash map hold exactly `wanted`: inserts or updates each entry, then removes
/// the keys that are not wanted.
fn sync_hash_map<K, V>(
    map: &mut aya::maps::Map,
    name: &'static str,
    wanted: std::collections::HashMap<K, V>,
) -> Result<(), DataplaneError>
where
    K: aya::Pod + Default + Eq + std::hash::Hash,
    V: aya::Pod + Default,
{
    let e = map_err(name);
    let aya::maps::Map::HashMap(data) = &*map else {
        return Err(DataplaneError::MissingMap(name));
    };
    let (keys, values): (Vec<K>, Vec<V>) = wanted.iter().map(|(k, v)| (*k, *v)).unzip();
    for (k, v) in keys.chunks(WRITE_BATCH).zip(values.chunks(WRITE_BATCH)) {
        crate::batch::update(data.fd().as_fd(), k, v).map_err(&e)?;
    }
    let present: Vec<(K, V)> = crate::batch::lookup_all(data.fd().as_fd()).map_err(&e)?;
    let mut map: HashMap<_, K, V> = HashMap::try_from(map).map_err(&e)?;
    for (k, _) in present.iter().filter(|(k, _)| !wanted.contains_key(k)) {
        map.remove(k).map_err(&e)?;
    }
    Ok(())
}

/// The loaded XDP program and its maps, and what the daemon last wrote into them.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Where maps and links are pinned; `None`: they go with the process.
    pin_dir: Option<PathBuf>,
    links: Vec<(String, Attachment)>,
    /// `REALS` as written: plan values with their next hops.
    reals: StdHashMap<u32, RealServer>,
    /// Fingerprints of the scheduling tables as written, by service id.
    tables: StdHashMap<u32, u64>,
    /// `VIP_FILTER` as written.
    filter: Vec<u64>,
    /// `REPLY_FILTER` as written.
    reply_filter: Vec<u64>,
    /// `SNAT_POOLS` rows as written.
    pools: Vec<SnatPool>,
    /// Interface indices written into `TX_PORTS`.
    tx_ports: Vec<u32>,
    /// `SERVICE_PARAMS` rows as written, by service id.
    params: StdHashMap<u32, ServiceValue>,
    /// `PERSIST_PARAMS` rows as written, by service id.
    persist_params: StdHashMap<u32, PersistParams>,
    /// Interface indices written into `IFACE_INDEX`.
    iface_slots: Vec<u32>,
    /// The service each id was last given to.
    service_keys: StdHashMap<u32, ServiceKey>,
}

/// How the program is attached to one interface.
enum Attachment {
    /// Owned by the program object: detached when it is dropped.
    Owned(XdpLinkId),
    /// Pinned on bpffs: stays attached after the daemon exits, until the pin is removed.
    Pinned(PinnedLink),
}

fn aya_mode(mode: XdpMode) -> aya::programs::xdp::XdpMode {
    match mode {
        XdpMode::Driver => aya::programs::xdp::XdpMode::Driver,
        XdpMode::Generic => aya::programs::xdp::XdpMode::Skb,
    }
}

/// The index of an interface of this namespace, if it exists.
fn ifindex_of(interface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(interface).ok()?;
    // SAFETY: if_nametoindex on a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Capacity of a map that `limits` sets; `None` for fixed-size maps.
pub fn capacity(name: &str, limits: Limits) -> Option<u32> {
    Some(match name {
        maps::SERVICES | maps::SERVICE_PARAMS | maps::VIPS | maps::SERVICE_STATS => {
            limits.max_services
        }
        maps::SCHED_TABLES | maps::RR_CURSORS | maps::PERSIST_PARAMS => limits.max_services,
        maps::REALS | maps::REAL_STATS | maps::REAL_CONNS => limits.max_reals,
        maps::CONNTRACK_V4 => limits.max_flows,
        maps::FRAGMENTS_V4 => limits.max_fragments,
        maps::PERSIST_V4 => limits.max_persistent,
        _ => return None,
    })
}

/// A table's fingerprint, to tell whether it changed without keeping a copy (10,000
/// default-size tables are 160 MiB).
fn fingerprint(table: &[u32]) -> u64 {
    // FxHash's step over the words, then the length: fast, and a changed table (positions
    // moved between reals) changes it.
    let h = table.iter().fold(0u64, |h, &w| {
        (h.rotate_left(5) ^ u64::from(w)).wrapping_mul(0x517c_c1b7_2722_0a95)
    });
    (h.rotate_left(5) ^ table.len() as u64).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// Raises this process's soft limit on open descriptors to its hard limit: a batch of new
/// scheduling tables holds up to `TABLES_PER_BATCH` of them (a soft limit of 1024 is
/// common; systemd's default hard limit is 524288).
fn raise_open_files() {
    // SAFETY: getrlimit and setrlimit on a zeroed, owned rlimit.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Writes the words of a bit filter that differ from what was written (`written`).
fn write_bits(
    ebpf: &mut Ebpf,
    name: &'static str,
    written: &mut [u64],
    words: &[u64],
) -> Result<(), DataplaneError> {
    let e = map_err(name);
    let mut map: Array<_, u64> = Array::try_from(map_in(ebpf, name)?).map_err(&e)?;
    for (i, (&new, old)) in words.iter().zip(written.iter_mut()).enumerate() {
        if new != *old {
            map.set(i as u32, new, 0).map_err(&e)?;
            *old = new;
        }
    }
    Ok(())
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl Dataplane {
    /// Loads the program and creates its maps with the given capacities, unpinned: they
    /// go with this process. Nothing is attached yet.
    pub fn load(limits: Limits) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_with(limits, None, false)
    }

    /// Loads the program with its maps pinned in `dir`: maps already pinned there are
    /// reused as they are (check them first with `pins::check`), the others created and
    /// pinned. Links made by [`Dataplane::attach`] are pinned there too.
    /// With `trace`, the program logs each dropped packet's reason (aya-log, read by
    /// [`Dataplane::take_logger`]); without, its log statements are off.
    pub fn open(limits: Limits, dir: &Path, trace: bool) -> Result<Dataplane, DataplaneError> {
        Dataplane::load_with(limits, Some(dir), trace)
    }

    fn load_with(
        limits: Limits,
        dir: Option<&Path>,
        trace: bool,
    ) -> Result<Dataplane, DataplaneError> {
        raise_open_files();
        let mut loader = EbpfLoader::new();
        // aya-log's level, read-only data of the program: 0 turns every log statement off
        // (the verifier sees the constant and drops them); 4 is `debug`.
        let level: u8 = if trace { 4 } else { 0 };
        loader.override_global("AYA_LOG_LEVEL", &level, true);
        for name in maps::ALL {
            if let Some(entries) = capacity(name, limits) {
                loader.map_max_entries(name, entries);
            }
            if let Some(dir) = dir {
                loader.map_pin_path(name, pins::map_path(dir, name));
            }
        }
        let mut ebpf = loader.load(BPF_OBJECT)?;
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
            pin_dir: dir.map(Path::to_owned),
            links: Vec::new(),
            reals: StdHashMap::new(),
            tables: StdHashMap::new(),
            filter: vec![0; VIP_FILTER_WORDS as usize],
            reply_filter: vec![0; VIP_FILTER_WORDS as usize],
            pools: Vec::new(),
            tx_ports: Vec::new(),
            params: StdHashMap::new(),
            persist_params: StdHashMap::new(),
            iface_slots: Vec::new(),
            service_keys: StdHashMap::new(),
        })
    }

    /// The reader of the program's log ring (for `--trace`), forwarding each record to the
    /// `log` crate.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, String> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| e.to_string())
    }

    /// Reads back what an earlier daemon wrote into maps this one reused, so the next
    /// [`Dataplane::apply`] writes only what differs (and zeroes no counter that goes
    /// on), and returns the ids in use, for `plan::compile_keeping`.
    pub fn adopt(&mut self) -> Result<Ids, DataplaneError> {
        let mut ids = Ids::default();
        let services: Vec<(ServiceKey, ServiceValue)> = {
            let e = map_err(maps::SERVICES);
            let map: HashMap<_, ServiceKey, ServiceValue> =
                HashMap::try_from(self.map(maps::SERVICES)?).map_err(&e)?;
            map.iter().collect::<Result<_, _>>().map_err(&e)?
        };
        let mut keys = StdHashMap::new();
        for (key, value) in services {
            ids.services.insert(key, value.id);
            keys.insert(value.id, key);
        }
        let reals: Vec<(u32, RealServer)> = {
            let e = map_err(maps::REALS);
            let map: HashMap<_, u32, RealServer> =
                HashMap::try_from(self.map(maps::REALS)?).map_err(&e)?;
            map.iter().collect::<Result<_, _>>().map_err(&e)?
        };
        let mut next_generation = 1u32;
        for (index, value) in reals {
            next_generation = next_generation.max(value.generation.wrapping_add(1).max(1));
            if let Some(&key) = keys.get(&u32::from(value.service)) {
                let address = plan::address(value.addr, value.family);
                ids.reals.insert(
                    (key, address, u16::from_be(value.port)),
                    (index, value.generation),
                );
            }
            self.reals.insert(index, value);
        }
        // Generations of removed reals live on in connection-table entries: continue from
        // the counter the last daemon left, not only from the reals still present.
        let e = map_err(maps::SETTINGS);
        let settings: Array<_, Settings> =
            Array::try_from(self.map(maps::SETTINGS)?).map_err(&e)?;
        let left = settings.get(&0, 0).map_err(&e)?.next_generation;
        ids.next_generation = next_generation.max(left);
        self.service_keys = keys;
        for (name, written) in [
            (maps::VIP_FILTER, &mut self.filter),
            (maps::REPLY_FILTER, &mut self.reply_filter),
        ] {
            let e = map_err(name);
            let map: Array<_, u64> = Array::try_from(map_in(&mut self.ebpf, name)?).map_err(&e)?;
            for (i, word) in written.iter_mut().enumerate() {
                *word = map.get(&(i as u32), 0).map_err(&e)?;
            }
        }
        {
            let e = map_err(maps::SNAT_POOLS);
            let map: Array<_, SnatPool> =
                Array::try_from(self.map(maps::SNAT_POOLS)?).map_err(&e)?;
            self.pools = (0..map.len())
                .map(|i| map.get(&i, 0))
                .collect::<Result<_, _>>()
                .map_err(&e)?;
            while self.pools.last() == Some(&SnatPool::default()) {
                self.pools.pop();
            }
        }
        {
            let e = map_err(maps::IFACES);
            let map: HashMap<_, u32, Iface> =
                HashMap::try_from(self.map(maps::IFACES)?).map_err(&e)?;
            let indices: Vec<u32> = map.keys().collect::<Result<_, _>>().map_err(&e)?;
            self.iface_slots = indices
                .iter()
                .copied()
                .filter(|&i| i < maps::IFACE_SLOTS)
                .collect();
            self.tx_ports = indices;
        }
        Ok(ids)
    }

    /// Writes the director-wide settings.
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), DataplaneError> {
        let e = map_err(maps::SETTINGS);
        let mut map: Array<_, Settings> =
            Array::try_from(self.map_mut(maps::SETTINGS)?).map_err(&e)?;
        map.set(0, settings, 0).map_err(&e)
    }

    /// Makes `IFACES` (and `IFACE_INDEX`, for indices below `IFACE_SLOTS`) hold exactly
    /// these interfaces (ifindex, MAC).
    pub fn set_interfaces(&mut self, interfaces: &[(u32, [u8; 6])]) -> Result<(), DataplaneError> {
        let wanted = interfaces
            .iter()
            .map(|&(index, mac)| (index, Iface { mac, _pad: 0 }))
            .collect();
        sync_hash_map(self.map_mut(maps::IFACES)?, maps::IFACES, wanted)?;
        let e = map_err(maps::IFACE_INDEX);
        let old = std::mem::take(&mut self.iface_slots);
        let mut slots: Array<_, Iface> =
            Array::try_from(map_in(&mut self.ebpf, maps::IFACE_INDEX)?).map_err(&e)?;
        for index in old {
            slots.set(index, Iface::default(), 0).map_err(&e)?;
        }
        for &(index, mac) in interfaces {
            if index < maps::IFACE_SLOTS {
                slots.set(index, Iface { mac, _pad: 0 }, 0).map_err(&e)?;
                self.iface_slots.push(index);
            }
        }
        let mut ports: DevMapHash<_> =
            DevMapHash::try_from(map_in(&mut self.ebpf, maps::TX_PORTS)?)
                .map_err(map_err(maps::TX_PORTS))?;
        for index in std::mem::take(&mut self.tx_ports) {
            if !interfaces.iter().any(|&(i, _)| i == index) {
                let _ = ports.remove(index);
            }
        }
        for &(index, _) in interfaces {
            // A device without XDP transmit support is refused here; the program then
            // redirects to it with `bpf_redirect`.
            match ports.insert(index, index, None, 0) {
                Ok(()) => self.tx_ports.push(index),
                Err(e) => log::warn!("interface {index} cannot be a redirect target: {e}"),
            }
        }
        Ok(())
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

    /// Attaches the program to an interface. With a pin directory, a link an earlier
    /// daemon pinned for this interface, still attached to it, is switched to this
    /// program atomically (no packet goes unprocessed); otherwise a new link is made and
    /// pinned. Returns whether an existing link was taken over.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<bool, DataplaneError> {
        let attach_err = |source| DataplaneError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let Some(dir) = self.pin_dir.clone() else {
            let link = self
                .program_mut()
                .attach(interface, aya_mode(mode))
                .map_err(attach_err)?;
            self.links
                .push((interface.to_owned(), Attachment::Owned(link)));
            return Ok(false);
        };
        let path = pins::link_path(&dir, interface);
        let pin_err = |source: std::io::Error| DataplaneError::Pin {
            path: path.clone(),
            source,
        };
        if path.exists() {
            let now = ifindex_of(interface);
            match pins::link_ifindex(&path) {
                Ok(index) if index != 0 && Some(index) == now => {
                    let link = PinnedLink::from_pin(&path)
                        .map_err(|e| pin_err(std::io::Error::other(e)))?;
                    let link = XdpLink::try_from(FdLink::from(link))
                        .map_err(|e| pin_err(std::io::Error::other(e)))?;
                    let id = self
                        .program_mut()
                        .attach_to_link(link)
                        .map_err(attach_err)?;
                    // The pin keeps the link; this process keeps a descriptor of its own.
                    drop(self.program_mut().take_link(id).map_err(attach_err)?);
                    let link = PinnedLink::from_pin(&path)
                        .map_err(|e| pin_err(std::io::Error::other(e)))?;
                    self.links
                        .push((interface.to_owned(), Attachment::Pinned(link)));
                    return Ok(true);
                }
                // Its device went away (or another took the name): the link is dead.
                _ => std::fs::remove_file(&path).map_err(pin_err)?,
            }
        }
        let id = self
            .program_mut()
            .attach(interface, aya_mode(mode))
            .map_err(attach_err)?;
        let link = self.program_mut().take_link(id).map_err(attach_err)?;
        let link = FdLink::try_from(link).map_err(|e| pin_err(std::io::Error::other(e)))?;
        let link = link
            .pin(&path)
            .map_err(|e| pin_err(std::io::Error::other(e)))?;
        self.links
            .push((interface.to_owned(), Attachment::Pinned(link)));
        Ok(false)
    }

    /// Attaches to an interface that was deleted and created again (a new ifindex): the
    /// old link went with the old device and is forgotten; the program is attached anew.
    pub fn reattach(&mut self, interface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        if let Some(at) = self.links.iter().position(|(name, _)| name == interface) {
            let (_, link) = self.links.remove(at);
            // Detaching from a device that is gone fails; the link is released either way.
            let _ = self.release(link);
        }
        self.attach(interface, mode).map(|_| ())
    }

    /// Detaches from every interface, pinned links included (also done for unpinned
    /// links when the Dataplane is dropped; pinned ones stay attached after a drop).
    pub fn detach_all(&mut self) {
        for (interface, link) in std::mem::take(&mut self.links) {
            if let Err(e) = self.release(link) {
                log::warn!("detaching from {interface}: {e}");
            }
        }
    }

    /// Removes the pinned link of `interface` (detaching the program when no process
    /// holds it); returns whether there was one.
    pub fn unpin_link(&mut self, interface: &str) -> bool {
        let Some(dir) = &self.pin_dir else {
            return false;
        };
        std::fs::remove_file(pins::link_path(dir, interface)).is_ok()
    }

    /// Removes pinned links of interfaces this daemon does not attach to (no longer in
    /// the configuration); returns their names.
    pub fn unpin_other_links(&mut self) -> Vec<String> {
        let Some(dir) = self.pin_dir.clone() else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for interface in pins::pinned_links(&dir) {
            if self.links.iter().any(|(name, _)| *name == interface) {
                continue;
            }
            match std::fs::remove_file(pins::link_path(&dir, &interface)) {
                Ok(()) => removed.push(interface),
                Err(e) => log::warn!("removing the pinned link of {interface}: {e}"),
            }
        }
        removed
    }

    fn release(&mut self, link: Attachment) -> Result<(), DataplaneError> {
        match link {
            Attachment::Owned(id) => self
                .program_mut()
                .detach(id)
                .map_err(DataplaneError::Program),
            Attachment::Pinned(link) => {
                let path = self.pin_dir.clone().unwrap_or_default();
                link.unpin()
                    .map(drop)
                    .map_err(|source| DataplaneError::Pin { path, source })
            }
        }
    }

    /// Writes a plan into the maps, touching only what differs from what was written
    /// before, in an order that keeps the program consistent while it runs: reals (with
    /// their next hops from `hops`, by real index), then scheduling tables, then services
    /// and virtual addresses; reals the plan no longer has are removed last. Counters of
    /// a newly used service id or real index start from zero.
    pub fn apply(
        &mut self,
        plan: &Plan,
        hops: &StdHashMap<u32, NextHop>,
    ) -> Result<(), DataplaneError> {
        let mut wanted_reals = StdHashMap::new();
        for r in plan.services.iter().flat_map(|s| &s.reals) {
            let value = with_hop(r.value, hops.get(&r.index));
            wanted_reals.insert(r.index, value);
        }
        let fresh_reals: Vec<u32> = wanted_reals
            .iter()
            .filter(|(i, v)| {
                self.reals
                    .get(i)
                    .is_none_or(|w| w.generation != v.generation)
            })
            .map(|(&i, _)| i)
            .collect();
        self.zero_counters(maps::REAL_STATS, &fresh_reals)?;
        self.write_reals(&wanted_reals)?;
        // An id new to the maps, or given to another service since the last apply.
        let fresh_services: Vec<u32> = plan
            .services
            .iter()
            .filter(|s| self.service_keys.get(&s.value.id) != Some(&s.key))
            .map(|s| s.value.id)
            .collect();
        self.zero_counters(maps::SERVICE_STATS, &fresh_services)?;
        self.service_keys = plan.services.iter().map(|s| (s.value.id, s.key)).collect();
        let changed: Vec<(u32, &[u32])> = plan
            .services
            .iter()
            .filter(|s| self.tables.get(&s.value.id) != Some(&fingerprint(&s.table)))
            .map(|s| (s.value.id, s.table.as_slice()))
            .collect();
        self.write_tables(&changed)?;
        let mut filter = vec![0u64; VIP_FILTER_WORDS as usize];
        for s in &plan.services {
            let bit = vip_filter_bit(s.key.addr[0]);
            filter[((bit >> 6) % VIP_FILTER_WORDS) as usize] |= 1 << (bit & 63);
        }
        // New VIPs are let through the filter before their services appear; old ones are
        // filtered out only after their services are gone.
        let union: Vec<u64> = filter
            .iter()
            .zip(&self.filter)
            .map(|(a, b)| a | b)
            .collect();
        self.write_filter(&union)?;
        // Pools and the reply filter are in place before a NAT service can open a flow.
        self.write_pools(&plan.pools)?;
        let mut reply_filter = vec![0u64; VIP_FILTER_WORDS as usize];
        for r in plan
            .services
            .iter()
            .filter(|s| s.value.forwarding != FWD_DR)
            .flat_map(|s| &s.reals)
        {
            let bit = reply_filter_bit(r.value.addr[0]);
            reply_filter[((bit >> 6) % VIP_FILTER_WORDS) as usize] |= 1 << (bit & 63);
        }
        write_bits(
            &mut self.ebpf,
            maps::REPLY_FILTER,
            &mut self.reply_filter,
            &reply_filter,
        )?;
        // A hit reads its service's row by id, so rows are written before the services
        // that use them appear; a removed service's row stays for its orphaned entries.
        {
            let e = map_err(maps::SERVICE_PARAMS);
            let mut params: Array<_, ServiceValue> =
                Array::try_from(map_in(&mut self.ebpf, maps::SERVICE_PARAMS)?).map_err(&e)?;
            for s in &plan.services {
                if self.params.get(&s.value.id) != Some(&s.value) {
                    params.set(s.value.id, s.value, 0).map_err(&e)?;
                    self.params.insert(s.value.id, s.value);
                }
            }
            let e = map_err(maps::PERSIST_PARAMS);
            let mut persist: Array<_, PersistParams> =
                Array::try_from(map_in(&mut self.ebpf, maps::PERSIST_PARAMS)?).map_err(&e)?;
            for s in &plan.services {
                if self.persist_params.get(&s.value.id) != Some(&s.persist) {
                    persist.set(s.value.id, s.persist, 0).map_err(&e)?;
                    self.persist_params.insert(s.value.id, s.persist);
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
        self.write_filter(&filter)?;
        let live: HashSet<u32> = plan.services.iter().map(|s| s.value.id).collect();
        let gone: Vec<u32> = self
            .tables
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        self.clear_tables(&gone)?;
        let stale: Vec<u32> = self
            .reals
            .keys()
            .filter(|i| !wanted_reals.contains_key(i))
            .copied()
            .collect();
        let e = map_err(maps::REALS);
        let mut reals: HashMap<_, u32, RealServer> =
            HashMap::try_from(map_in(&mut self.ebpf, maps::REALS)?).map_err(&e)?;
        for index in stale {
            match reals.remove(&index) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(e(source)),
            }
            self.reals.remove(&index);
        }
        Ok(())
    }

    /// Swaps in new scheduling tables, by service id: each created at its size and
    /// filled in one call, then put in its service's row (one update per row, so a packet
    /// sees the old table or the new one, never a mix). The rows are written in batches:
    /// the kernel waits for running programs (an RCU grace period, milliseconds) after
    /// every update of a map of maps, once per batch rather than once per row.
    fn write_tables(&mut self, tables: &[(u32, &[u32])]) -> Result<(), DataplaneError> {
        let e = map_err(maps::SCHED_TABLES);
        for chunk in tables.chunks(TABLES_PER_BATCH) {
            let inner = chunk
                .iter()
                .map(|(_, table)| tables::create(table))
                .collect::<Result<Vec<MapData>, _>>()
                .map_err(&e)?;
            let ids: Vec<u32> = chunk.iter().map(|(id, _)| *id).collect();
            self.set_table_rows(&ids, &inner)?;
            for (id, table) in chunk {
                self.tables.insert(*id, fingerprint(table));
            }
        }
        Ok(())
    }

    /// Points the rows of removed services at one empty table, in one batch: their old
    /// tables are freed (a row cannot be deleted in a batch).
    fn clear_tables(&mut self, ids: &[u32]) -> Result<(), DataplaneError> {
        if ids.is_empty() {
            return Ok(());
        }
        let empty = tables::create(&[]).map_err(map_err(maps::SCHED_TABLES))?;
        for chunk in ids.chunks(TABLES_PER_BATCH) {
            let same: Vec<&MapData> = chunk.iter().map(|_| &empty).collect();
            self.set_table_rows(chunk, &same)?;
        }
        for id in ids {
            self.tables.remove(id);
        }
        Ok(())
    }

    /// Rows `ids` of `SCHED_TABLES` take the tables `inner`, in one batch update.
    fn set_table_rows<M: std::borrow::Borrow<MapData>>(
        &mut self,
        ids: &[u32],
        inner: &[M],
    ) -> Result<(), DataplaneError> {
        let e = map_err(maps::SCHED_TABLES);
        let aya::maps::Map::ArrayOfMaps(outer) = self.map(maps::SCHED_TABLES)? else {
            return Err(DataplaneError::MissingMap(maps::SCHED_TABLES));
        };
        let fds: Vec<u32> = inner
            .iter()
            .map(|m| m.borrow().fd().as_fd().as_raw_fd() as u32)
            .collect();
        crate::batch::update(outer.fd().as_fd(), ids, &fds).map_err(&e)
    }

    /// Updates one real's next hop, if it changed. Only the real of that generation is
    /// touched: before the first apply after an adoption the index may still hold the
    /// real an earlier daemon gave it, whose flows must not follow another's MAC.
    pub fn set_next_hop(
        &mut self,
        index: u32,
        generation: u32,
        hop: &NextHop,
    ) -> Result<bool, DataplaneError> {
        let Some(&written) = self.reals.get(&index) else {
            return Ok(false);
        };
        if written.generation != generation {
            return Ok(false);
        }
        let value = with_hop(written, Some(hop));
        if value == written {
            return Ok(false);
        }
        self.write_real(index, value)?;
        Ok(true)
    }

    /// Writes the reals whose values changed, in batches.
    fn write_reals(&mut self, wanted: &StdHashMap<u32, RealServer>) -> Result<(), DataplaneError> {
        let (keys, values): (Vec<u32>, Vec<RealServer>) = wanted
            .iter()
            .filter(|(i, v)| self.reals.get(i) != Some(v))
            .map(|(&i, &v)| (i, v))
            .unzip();
        let e = map_err(maps::REALS);
        let aya::maps::Map::HashMap(map) = self.map(maps::REALS)? else {
            return Err(DataplaneError::MissingMap(maps::REALS));
        };
        for (k, v) in keys.chunks(WRITE_BATCH).zip(values.chunks(WRITE_BATCH)) {
            crate::batch::update(map.fd().as_fd(), k, v).map_err(&e)?;
        }
        self.reals.extend(keys.into_iter().zip(values));
        Ok(())
    }

    fn write_real(&mut self, index: u32, value: RealServer) -> Result<(), DataplaneError> {
        if self.reals.get(&index) == Some(&value) {
            return Ok(());
        }
        let e = map_err(maps::REALS);
        let mut reals: HashMap<_, u32, RealServer> =
            HashMap::try_from(self.map_mut(maps::REALS)?).map_err(&e)?;
        reals.insert(index, value, 0).map_err(&e)?;
        self.reals.insert(index, value);
        Ok(())
    }

    fn write_filter(&mut self, words: &[u64]) -> Result<(), DataplaneError> {
        write_bits(&mut self.ebpf, maps::VIP_FILTER, &mut self.filter, words)
    }

    fn write_pools(&mut self, pools: &[SnatPool]) -> Result<(), DataplaneError> {
        let e = map_err(maps::SNAT_POOLS);
        let mut map: Array<_, SnatPool> =
            Array::try_from(map_in(&mut self.ebpf, maps::SNAT_POOLS)?).map_err(&e)?;
        for (id, pool) in pools.iter().enumerate() {
            if self.pools.get(id) != Some(pool) {
                map.set(id as u32, *pool, 0).map_err(&e)?;
            }
        }
        // Rows no pool uses any more stay: flows being opened may still read them.
        self.pools
            .resize(self.pools.len().max(pools.len()), SnatPool::default());
        self.pools[..pools.len()].copy_from_slice(pools);
        Ok(())
    }

    fn zero_counters(&mut self, name: &'static str, rows: &[u32]) -> Result<(), DataplaneError> {
        if rows.is_empty() {
            return Ok(());
        }
        let e = map_err(name);
        let cpus = nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?;
        let aya::maps::Map::PerCpuArray(map) = self.map(name)? else {
            return Err(DataplaneError::MissingMap(name));
        };
        let zeros = vec![Counters::default(); WRITE_BATCH.min(rows.len()) * cpus];
        for chunk in rows.chunks(WRITE_BATCH) {
            crate::batch::update_each(map.fd().as_fd(), chunk, &zeros, cpus).map_err(&e)?;
        }
        Ok(())
    }

    /// The connection-table entry of a flow.
    pub fn flow(&self, key: &FlowKeyV4) -> Result<Option<Flow>, DataplaneError> {
        let e = map_err(maps::CONNTRACK_V4);
        let map: HashMap<_, FlowKeyV4, Flow> =
            HashMap::try_from(self.map(maps::CONNTRACK_V4)?).map_err(&e)?;
        match map.get(key, 0) {
            Ok(f) => Ok(Some(f)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(e(source)),
        }
    }

    /// Writes a connection-table entry (tests use it to age an entry).
    pub fn set_flow(&mut self, key: &FlowKeyV4, flow: Flow) -> Result<(), DataplaneError> {
        let e = map_err(maps::CONNTRACK_V4);
        let mut map: HashMap<_, FlowKeyV4, Flow> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK_V4)?).map_err(&e)?;
        map.insert(key, flow, 0).map_err(&e)
    }

    /// Deletes a connection-table entry (as an eviction would); absent is no error.
    pub fn remove_flow(&mut self, key: &FlowKeyV4) -> Result<(), DataplaneError> {
        let e = map_err(maps::CONNTRACK_V4);
        let mut map: HashMap<_, FlowKeyV4, Flow> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK_V4)?).map_err(&e)?;
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(e(source)),
        }
    }

    /// Every connection-table entry (a walk over the whole map in batches: for listings,
    /// the least-connection counts and tests).
    pub fn flows(&self) -> Result<Vec<(FlowKeyV4, Flow)>, DataplaneError> {
        let e = map_err(maps::CONNTRACK_V4);
        let aya::maps::Map::LruHashMap(map) = self.map(maps::CONNTRACK_V4)? else {
            return Err(DataplaneError::MissingMap(maps::CONNTRACK_V4));
        };
        crate::batch::lookup_all(map.fd().as_fd()).map_err(&e)
    }

    /// Writes the live connections of every real of the plan's `lc`, `wlc`, `sed` and
    /// `nq` services (`counts` by real index: active, inactive; absent is none), as
    /// `stats::connection_counts` made them from a walk of the connection table. Each
    /// real is written every time: the program adds new flows in between.
    pub fn write_connection_counts(
        &mut self,
        plan: &Plan,
        counts: &StdHashMap<u32, (u64, u64)>,
    ) -> Result<(), DataplaneError> {
        let e = map_err(maps::REAL_CONNS);
        let aya::maps::Map::Array(conns) = self.map(maps::REAL_CONNS)? else {
            return Err(DataplaneError::MissingMap(maps::REAL_CONNS));
        };
        let (keys, values): (Vec<u32>, Vec<RealConns>) = plan
            .services
            .iter()
            .filter(|s| s.scheduler.counts_connections())
            .flat_map(|s| &s.reals)
            .map(|r| {
                let (active, inactive) = counts.get(&r.index).copied().unwrap_or_default();
                let value = RealConns {
                    active: u32::try_from(active).unwrap_or(u32::MAX),
                    inactive: u32::try_from(inactive).unwrap_or(u32::MAX),
                };
                (r.index, value)
            })
            .unzip();
        for (k, v) in keys.chunks(WRITE_BATCH).zip(values.chunks(WRITE_BATCH)) {
            crate::batch::update(conns.fd().as_fd(), k, v).map_err(&e)?;
        }
        Ok(())
    }

    /// The live connection counts the program holds for real `index`.
    pub fn connection_count(&self, index: u32) -> Result<RealConns, DataplaneError> {
        let e = map_err(maps::REAL_CONNS);
        let conns: Array<_, RealConns> =
            Array::try_from(self.map(maps::REAL_CONNS)?).map_err(&e)?;
        conns.get(&index, 0).map_err(&e)
    }

    /// Every persistence template (a walk over the whole map: for tests and listings).
    pub fn templates(&self) -> Result<Vec<(PersistKeyV4, Persist)>, DataplaneError> {
        let e = map_err(maps::PERSIST_V4);
        let map: HashMap<_, PersistKeyV4, Persist> =
            HashMap::try_from(self.map(maps::PERSIST_V4)?).map_err(&e)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Writes a persistence template (tests use it to age one).
    pub fn set_template(
        &mut self,
        key: &PersistKeyV4,
        template: Persist,
    ) -> Result<(), DataplaneError> {
        let e = map_err(maps::PERSIST_V4);
        let mut map: HashMap<_, PersistKeyV4, Persist> =
            HashMap::try_from(self.map_mut(maps::PERSIST_V4)?).map_err(&e)?;
        map.insert(key, template, 0).map_err(&e)
    }

    /// The counters of the reals with these indices (the passive health signals read
    /// only the watched ones).
    pub fn real_counters(&self, indices: &[u32]) -> Result<Vec<Counters>, DataplaneError> {
        let real: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(maps::REAL_STATS)?)
            .map_err(map_err(maps::REAL_STATS))?;
        indices
            .iter()
            .map(|i| real.get(i, 0).map(sum))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::REAL_STATS))
    }

    /// Reads every counter the plan refers to.
    pub fn snapshot(&self, plan: &Plan) -> Result<Snapshot, DataplaneError> {
        let reasons: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(maps::REASONS)?).map_err(map_err(maps::REASONS))?;
        let reasons = (0..REASON_COUNT)
            .map(|i| reasons.get(&i, 0).map(|v| v.iter().sum()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(map_err(maps::REASONS))?;
        let events: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(maps::EVENTS)?).map_err(map_err(maps::EVENTS))?;
        let events = (0..EVENT_COUNT)
            .map(|i| events.get(&i, 0).map(|v| v.iter().sum()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(map_err(maps::EVENTS))?;
        let svc: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(maps::SERVICE_STATS)?)
            .map_err(map_err(maps::SERVICE_STATS))?;
        let real: PerCpuArray<_, Counters> = PerCpuArray::try_from(self.map(maps::REAL_STATS)?)
            .map_err(map_err(maps::REAL_STATS))?;
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
        Ok(Snapshot {
            reasons,
            events,
            services,
        })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        map_in(&mut self.ebpf, name)
    }
}

/// One counter set from its per-CPU values.
fn sum(values: aya::maps::PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        flows: a.flows + c.flows,
        bytes: a.bytes + c.bytes,
        syns: a.syns + c.syns,
        synacks: a.synacks + c.synacks,
        resets: a.resets + c.resets,
    })
}

/// A map of the object by name. A free function, so a caller holding other fields of the
/// `Dataplane` borrows only `ebpf`.
fn map_in<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}
