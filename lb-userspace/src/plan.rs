//! What the maps must hold for a configuration: service ids, real indices, the real's
//! egress interface and each service's scheduling table. Pure apart from the route
//! look-up it is given, so tests can compile plans with fixed interfaces.

use std::net::IpAddr;

use std::collections::{BTreeSet, HashMap};

use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, FWD_DR, FWD_FULLNAT, FWD_NAT, MAX_TABLE_LEN, POOL_ADDRS,
    PersistParams, REAL_F_QUIESCENT, REAL_NONE, RealServer, SCHED_DH, SCHED_LC, SCHED_MH, SCHED_NQ,
    SCHED_RR, SCHED_SED, SCHED_SH, SCHED_WLC, SCHED_WRR, SVC_F_EXPIRE_NODEST, SVC_F_HASH_PORT,
    SVC_F_PERSIST, SVC_F_QUORUM_LOST, ServiceKey, ServiceValue, SnatPool,
    conntrack::{DEFAULT_TIMEOUTS, STATE_TCP_ESTABLISHED, STATE_TCP_FIN, STATE_UDP},
    hash::{addr_hash, addr_port_hash, position},
    ipv4_words, ipv6_words,
};

use crate::{
    config::{self, Config, Forwarding, Origin, Protocol, Scheduler, Timeouts},
    nexthop::Route,
    scheduler::{Member, maglev, rr_sequence, wrr_sequence},
};

/// A real server that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {subject} {address}: {message}")]
pub struct PlanError {
    pub origin: Origin,
    /// "real server" or "SNAT pool address".
    pub subject: &'static str,
    pub address: IpAddr,
    pub message: String,
}

/// The contents of every map.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
    /// Rows of `SNAT_POOLS`, by pool id.
    pub pools: Vec<SnatPool>,
    /// The generation the next new real server gets.
    pub next_generation: u32,
}

/// One virtual service as programmed.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    pub key: ServiceKey,
    pub value: ServiceValue,
    pub reals: Vec<RealPlan>,
    /// The scheduling table: real indices (`SCHED_TABLES` holds its length before them).
    pub table: Vec<u32>,
    /// Persistence (`PERSIST_PARAMS`; all zero and unread without `SVC_F_PERSIST`).
    pub persist: PersistParams,
}

/// One real server of one service as programmed.
#[derive(Clone, Debug)]
pub struct RealPlan {
    /// Index in `REALS` / `REAL_STATS`; kept across reloads for the same real of the
    /// same service, so connection-table entries keep pointing at it.
    pub index: u32,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub value: RealServer,
}

/// `AddrWords` and family of an address.
pub fn words(address: IpAddr) -> ([u32; 4], u8) {
    match address {
        IpAddr::V4(a) => (ipv4_words(a.octets()), FAMILY_IPV4),
        IpAddr::V6(a) => (ipv6_words(a.octets()), FAMILY_IPV6),
    }
}

/// The service ids, real indices and generations in use, which a new plan keeps for the
/// services and reals that stay: taken from the running plan on a reload, or read back
/// from pinned maps when a restarted daemon adopts them.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    pub services: HashMap<ServiceKey, u32>,
    /// (index, generation) of each real of each service.
    pub reals: HashMap<RealId, (u32, u32)>,
    /// The generation the next new real gets (0 counts as 1).
    pub next_generation: u32,
}

impl Ids {
    /// The ids of a plan.
    pub fn of(plan: &Plan) -> Ids {
        let mut ids = Ids {
            next_generation: plan.next_generation,
            ..Ids::default()
        };
        for s in &plan.services {
            ids.services.insert(s.key, s.value.id);
            for r in &s.reals {
                ids.reals
                    .insert((s.key, r.address, r.port), (r.index, r.value.generation));
            }
        }
        ids
    }
}

/// A real server of a service, as reloads recognise it: service, address, port.
pub type RealId = (ServiceKey, IpAddr, u16);

/// The address `AddrWords` and a family hold.
pub fn address(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_IPV6 {
        let mut o = [0u8; 16];
        for (chunk, w) in o.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    } else {
        IpAddr::from(words[0].to_ne_bytes())
    }
}

/// The lowest numbers not in `used`, in order.
fn free_numbers(used: &BTreeSet<u32>) -> impl Iterator<Item = u32> + '_ {
    (0..).filter(move |n| !used.contains(n))
}

fn timeouts_by_state(t: Timeouts) -> [u32; lb_common::conntrack::STATES] {
    let mut by_state = DEFAULT_TIMEOUTS;
    by_state[STATE_TCP_ESTABLISHED as usize] = t.tcp;
    by_state[STATE_TCP_FIN as usize] = t.tcpfin;
    by_state[STATE_UDP as usize] = t.udp;
    by_state
}

/// Compiles a validated configuration; `route` tells how the director reaches an address.
/// With the running plan as `previous`, services and reals that stay keep their ids and
/// indices (a reload), and new ones take free numbers.
pub fn compile(
    config: &Config,
    route: impl FnMut(IpAddr) -> Result<Route, String>,
    previous: Option<&Plan>,
) -> Result<Plan, PlanError> {
    compile_keeping(config, route, &previous.map(Ids::of).unwrap_or_default())
}

/// [`compile`], keeping the given ids for the services and reals that stay.
pub fn compile_keeping(
    config: &Config,
    mut route: impl FnMut(IpAddr) -> Result<Route, String>,
    kept: &Ids,
) -> Result<Plan, PlanError> {
    let (old_services, old_reals) = (&kept.services, &kept.reals);
    let mut next_generation = kept.next_generation.max(1);
    // Ids and indices the new plan keeps; new ones are drawn from the rest.
    let mut service_ids = BTreeSet::new();
    let mut real_indices = BTreeSet::new();
    let keys: Vec<ServiceKey> = config
        .services
        .iter()
        .map(|s| service_key(s.address, s.port, s.protocol))
        .collect();
    for (s, key) in config.services.iter().zip(&keys) {
        if let Some(&id) = old_services.get(key) {
            service_ids.insert(id);
        }
        for r in &s.reals {
            if let Some(&(index, _)) = old_reals.get(&(*key, r.address, r.port)) {
                real_indices.insert(index);
            }
        }
    }
    let kept_services = service_ids.clone();
    let kept_reals = real_indices.clone();
    let mut new_service_ids = free_numbers(&kept_services);
    let mut new_real_indices = free_numbers(&kept_reals);

    // The tables first, on every CPU: a Maglev table is most of a service's compile time.
    let mut tables = all_tables(config).into_iter();
    let mut pools: Vec<(config::SnatPool, SnatPool)> = Vec::new();
    let mut services = Vec::with_capacity(config.services.len());
    for (s, key) in config.services.iter().zip(keys) {
        let pool = match &s.snat_pool {
            Some(p) => pool_id(p, &mut pools, &mut route)?,
            None => 0,
        };
        let id = match old_services.get(&key) {
            Some(&id) => id,
            None => new_service_ids.next().unwrap_or(u32::MAX),
        };
        service_ids.insert(id);
        let mut reals = Vec::with_capacity(s.reals.len());
        for r in &s.reals {
            let fail = |message: String| PlanError {
                origin: r.origin.clone(),
                subject: "real server",
                address: r.address,
                message,
            };
            let to = route(r.address).map_err(fail)?;
            if to.local {
                return Err(fail("it is one of the director's own addresses".into()));
            }
            if let Some(gw) = to.gateway {
                // Direct routing only rewrites MACs: the real must be on-link. The NAT
                // methods take the same next hops, from the reals' neighbour entries.
                return Err(fail(format!(
                    "it is reached through gateway {gw}; {} needs the real on a network \
                     directly connected to the director",
                    match s.forwarding {
                        Forwarding::Dr => "direct routing",
                        Forwarding::Nat | Forwarding::Fullnat => "the next-hop cache",
                    }
                )));
            }
            let (index, generation) = match old_reals.get(&(key, r.address, r.port)) {
                Some(&kept) => kept,
                None => {
                    let index = new_real_indices.next().unwrap_or(u32::MAX);
                    let generation = next_generation;
                    next_generation = next_generation.wrapping_add(1).max(1);
                    (index, generation)
                }
            };
            real_indices.insert(index);
            let (addr, family) = words(r.address);
            reals.push(RealPlan {
                index,
                address: r.address,
                port: r.port,
                weight: r.scheduling_weight(),
                value: RealServer {
                    addr,
                    generation,
                    ifindex: to.ifindex,
                    port: r.port.to_be(),
                    family,
                    service: id as u16,
                    flags: if r.scheduling_weight() == 0 {
                        REAL_F_QUIESCENT
                    } else {
                        0
                    },
                    ..RealServer::default()
                },
            });
        }
        let index_of = |pos: u32| reals.get(pos as usize).map_or(REAL_NONE, |r| r.index);
        // `all_tables` made one table per service, in order.
        let table = tables.next().ok_or_else(|| PlanError {
            origin: s.origin.clone(),
            subject: "virtual service",
            address: s.address,
            message: "no scheduling table was made for it".into(),
        })??;
        let table = if s.scheduler.counts_connections() {
            // (position, weight) pairs: only the positions become real indices.
            table
                .chunks(2)
                .flat_map(|pair| [index_of(pair[0]), pair.get(1).copied().unwrap_or(0)])
                .collect()
        } else {
            table.into_iter().map(index_of).collect()
        };
        services.push(ServicePlan {
            name: s.name.clone(),
            address: s.address,
            port: s.port,
            protocol: s.protocol,
            scheduler: s.scheduler,
            forwarding: s.forwarding,
            key,
            value: ServiceValue {
                id,
                scheduler: match s.scheduler {
                    Scheduler::Rr => SCHED_RR,
                    Scheduler::Wrr => SCHED_WRR,
                    Scheduler::Sh => SCHED_SH,
                    Scheduler::Dh => SCHED_DH,
                    Scheduler::Mh => SCHED_MH,
                    Scheduler::Lc => SCHED_LC,
                    Scheduler::Wlc => SCHED_WLC,
                    Scheduler::Sed => SCHED_SED,
                    Scheduler::Nq => SCHED_NQ,
                },
                forwarding: match s.forwarding {
                    Forwarding::Dr => FWD_DR,
                    Forwarding::Nat => FWD_NAT,
                    Forwarding::Fullnat => FWD_FULLNAT,
                },
                pool,
                hash_seed: config.director.hash_seed,
                flags: if s.expire_nodest_conn {
                    SVC_F_EXPIRE_NODEST
                } else {
                    0
                } | if s.hash_port { SVC_F_HASH_PORT } else { 0 }
                    | if s.persistence.is_some() {
                        SVC_F_PERSIST
                    } else {
                        0
                    }
                    | if s.quorum_lost { SVC_F_QUORUM_LOST } else { 0 },
                timeouts: timeouts_by_state(s.timeouts),
            },
            reals,
            table,
            persist: s
                .persistence
                .map_or(PersistParams::default(), |p| PersistParams {
                    timeout: p.timeout,
                    mask: u32::from_ne_bytes(p.netmask.octets()),
                }),
        });
    }
    Ok(Plan {
        services,
        pools: pools.into_iter().map(|(_, p)| p).collect(),
        next_generation,
    })
}

/// Every service's [`service_table`], in order, built on as many threads as there are
/// CPUs (a table depends only on its service).
fn all_tables(config: &Config) -> Vec<Result<Vec<u32>, PlanError>> {
    let seed = config.director.hash_seed;
    let one = |s: &config::Service| {
        let members: Vec<Member> = s
            .reals
            .iter()
            .map(|r| Member {
                address: r.address,
                port: r.port,
                weight: r.scheduling_weight(),
            })
            .collect();
        service_table(s, &members, seed)
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || config.services.len() < 64 {
        return config.services.iter().map(one).collect();
    }
    let chunk = config.services.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = config
            .services
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The service's scheduling table as positions in `members` (docs/SCHEDULERS.md); for the
/// `lc` family, (position, weight) pairs. A real with a weight above zero that would get
/// no position is refused, never left out.
fn service_table(
    s: &config::Service,
    members: &[Member],
    seed: u32,
) -> Result<Vec<u32>, PlanError> {
    let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let weighted = members.iter().filter(|m| m.weight > 0).count();
    let table = match s.scheduler {
        Scheduler::Rr => rr_sequence(members),
        Scheduler::Wrr => wrr_sequence(members).map_err(|length| PlanError {
            origin: s.origin.clone(),
            subject: "virtual service",
            address: s.address,
            message: format!(
                "its wrr sequence would be {length} entries (the weights' sum over their \
                 greatest common divisor); at most {MAX_TABLE_LEN}: use smaller weights \
                 or mh"
            ),
        })?,
        Scheduler::Sh | Scheduler::Dh | Scheduler::Mh => maglev(members, s.table_size, seed),
        Scheduler::Lc | Scheduler::Wlc | Scheduler::Sed | Scheduler::Nq => {
            return Ok(least_table(members));
        }
    };
    let mut placed = vec![false; members.len()];
    for &pos in &table {
        placed[pos as usize] = true;
    }
    for ((m, r), placed) in members.iter().zip(&s.reals).zip(placed) {
        if m.weight > 0 && !placed {
            return Err(PlanError {
                origin: r.origin.clone(),
                subject: "real server",
                address: r.address,
                message: format!(
                    "weight {} of {total} in all gets none of the service's {} Maglev \
                     positions ({weighted} reals with a weight above 0); raise table_size, \
                     raise its weight or lower the others'",
                    m.weight, s.table_size
                ),
            });
        }
    }
    Ok(table)
}

/// The table of an `lc`-family service: (position in `members`, weight) for each member
/// with a weight above zero, in list order (ties go to the earlier, as in IPVS). The
/// configuration allows at most `MAX_LEAST_REALS` of them.
fn least_table(members: &[Member]) -> Vec<u32> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.weight > 0)
        .flat_map(|(pos, m)| [pos as u32, m.weight])
        .collect()
}

/// The `SNAT_POOLS` row of a pool: services with equal pools share one. Every address
/// must be the director's own, or the reals' answers would never come back to it.
fn pool_id(
    pool: &config::SnatPool,
    pools: &mut Vec<(config::SnatPool, SnatPool)>,
    route: &mut impl FnMut(IpAddr) -> Result<Route, String>,
) -> Result<u32, PlanError> {
    let same = |p: &config::SnatPool| {
        p.addresses == pool.addresses
            && (p.first_port, p.last_port) == (pool.first_port, pool.last_port)
    };
    if let Some(id) = pools.iter().position(|(p, _)| same(p)) {
        return Ok(id as u32);
    }
    let mut row = SnatPool {
        count: pool.addresses.len().min(POOL_ADDRS) as u32,
        first_port: pool.first_port,
        last_port: pool.last_port,
        ..SnatPool::default()
    };
    for (slot, &address) in row.addrs.iter_mut().zip(&pool.addresses) {
        let fail = |message: String| PlanError {
            origin: pool.origin.clone(),
            subject: "SNAT pool address",
            address,
            message,
        };
        let to = route(address).map_err(fail)?;
        if !to.local {
            return Err(fail(
                "a SNAT pool address must be one of the director's own addresses".into(),
            ));
        }
        *slot = words(address).0[0];
    }
    if pools.len() >= lb_common::maps::MAX_POOLS as usize {
        return Err(PlanError {
            origin: pool.origin.clone(),
            subject: "SNAT pool address",
            address: pool.addresses[0],
            message: format!(
                "more than {} different SNAT pools",
                lb_common::maps::MAX_POOLS
            ),
        });
    }
    pools.push((pool.clone(), row));
    Ok(pools.len() as u32 - 1)
}

fn service_key(address: IpAddr, port: u16, protocol: Protocol) -> ServiceKey {
    let (addr, family) = words(address);
    ServiceKey {
        addr,
        port: port.to_be(),
        proto: protocol.number(),
        family,
    }
}

impl Plan {
    /// The service for (VIP, port, protocol).
    pub fn service(&self, address: IpAddr, port: u16, protocol: Protocol) -> Option<&ServicePlan> {
        self.services
            .iter()
            .find(|s| s.address == address && s.port == port && s.protocol == protocol)
    }
}

impl ServicePlan {
    /// The real the XDP program picks for a packet from `client` to `destination`,
    /// computed the way the program does it (same hash, same table).
    /// `None` for `rr` and `wrr`, whose choice depends on what came before on that CPU.
    /// For a service with `hash_port`, see [`ServicePlan::real_for_flow`].
    pub fn real_for(&self, client: IpAddr, destination: IpAddr) -> Option<&RealPlan> {
        self.real_for_flow(client, 0, destination)
    }

    /// [`ServicePlan::real_for`] for a client port (used with `hash_port`).
    pub fn real_for_flow(
        &self,
        client: IpAddr,
        client_port: u16,
        destination: IpAddr,
    ) -> Option<&RealPlan> {
        let seed = self.value.hash_seed;
        let hash = match self.scheduler {
            Scheduler::Rr
            | Scheduler::Wrr
            | Scheduler::Lc
            | Scheduler::Wlc
            | Scheduler::Sed
            | Scheduler::Nq => return None,
            Scheduler::Dh => addr_hash(&words(destination).0, seed),
            _ if self.value.flags & SVC_F_HASH_PORT != 0 => {
                addr_port_hash(&words(client).0, client_port, seed)
            }
            _ => addr_hash(&words(client).0, seed),
        };
        let len = u32::try_from(self.table.len()).ok().filter(|&l| l > 0)?;
        let index = *self.table.get(position(hash, len) as usize)?;
        self.reals.iter().find(|r| r.index == index)
    }

    /// "tcp 192.0.2.100:80", as the operator wrote it.
    pub fn label(&self) -> String {
        format!("{} {}:{}", self.protocol, self.address, self.port)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = "\
director: {interfaces: [eth0], hash_seed: 3}
services:
  - {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh,
     reals: [{address: 192.0.2.11}, {address: 192.0.2.12, weight: 0}]}
  - {address: 192.0.2.100, port: 80, protocol: udp, scheduler: dh,
     reals: [{address: 192.0.2.13}]}
";

    fn on_link(_: IpAddr) -> Result<Route, String> {
        Ok(Route {
            ifindex: 5,
            gateway: None,
            local: false,
        })
    }

    #[test]
    fn ids_indices_keys_and_tables() {
        let config = Config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let plan = compile(&config, on_link, None).unwrap_or_else(|e| panic!("{e}"));
        let [tcp, udp] = &plan.services[..] else {
            panic!("two services")
        };
        assert_eq!((tcp.value.id, udp.value.id), (0, 1));
        assert_eq!(tcp.key.port, 80u16.to_be());
        assert_eq!(tcp.key.proto, 6);
        assert_eq!(udp.key.proto, 17);
        assert_eq!(tcp.key.addr[0], u32::from_ne_bytes([192, 0, 2, 100]));
        assert_eq!(tcp.value.hash_seed, 3);
        let indices: Vec<u32> = plan
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .map(|r| r.index)
            .collect();
        assert_eq!(indices, [0, 1, 2]);
        assert_eq!(tcp.reals[0].value.ifindex, 5);
        // The weight-0 real gets no slot; every slot names a real of its own service.
        assert!(tcp.table.iter().all(|&i| i == 0));
        assert!(udp.table.iter().all(|&i| i == 2));
        let client = IpAddr::from([198, 51, 100, 7]);
        assert_eq!(tcp.real_for(client, tcp.address).map(|r| r.index), Some(0));
    }

    #[test]
    fn reals_that_cannot_be_reached_directly_are_refused() {
        let config = Config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let via_gateway = |_| {
            Ok(Route {
                ifindex: 5,
                gateway: Some(IpAddr::from([192, 0, 2, 254])),
                local: false,
            })
        };
        let e = compile(&config, via_gateway, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("services[0].reals[0]") && e.contains("gateway 192.0.2.254"),
            "{e}"
        );
        let local = |_| {
            Ok(Route {
                ifindex: 1,
                gateway: None,
                local: true,
            })
        };
        let e = compile(&config, local, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("director's own"), "{e}");
    }

    #[test]
    fn a_weighted_real_without_a_slot_is_refused() {
        // 4,200 reals cannot all have one of 4,093 positions...
        let mut yaml = String::from(
            "director: {interfaces: [eth0]}\nlimits: {max_reals: 8192}\nservices:\n  - \
             {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh, reals: [",
        );
        let reals: Vec<String> = (0..4200u32)
            .map(|n| format!("{{address: 10.0.{}.{}}}", n / 250, 1 + n % 250))
            .collect();
        yaml.push_str(&reals.join(", "));
        yaml.push_str("]}\n");
        let config = Config::parse(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let e = compile(&config, on_link, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gets none of the service's 4093"), "{e}");
        // ...but they can with a larger table, and in an rr sequence.
        for (from, to) in [
            ("scheduler: sh,", "scheduler: sh, table_size: 16381,"),
            ("scheduler: sh,", "scheduler: rr,"),
        ] {
            let config = Config::parse(&yaml.replace(from, to), Path::new("t.yaml"))
                .unwrap_or_else(|e| panic!("{e}"));
            let plan = compile(&config, on_link, None).unwrap_or_else(|e| panic!("{e}"));
            let mut placed: Vec<u32> = plan.services[0].table.clone();
            placed.sort_unstable();
            placed.dedup();
            assert_eq!(placed.len(), 4200, "{to}");
        }
        // Nor can a weight of 1 beside 65,535.
        let config = Config::parse(
            &CONFIG
                .replace(
                    "{address: 192.0.2.12, weight: 0}",
                    "{address: 192.0.2.12, weight: 65535}",
                )
                .replace(
                    "reals: [{address: 192.0.2.11}",
                    "reals: [{address: 192.0.2.11, weight: 1}",
                ),
            Path::new("t.yaml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = compile(&config, on_link, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("services[0].reals[0]") && e.contains("weight 1 of 65536"),
            "{e}"
        );
    }

    #[test]
    fn snat_pools_must_be_the_directors_and_equal_pools_share_a_row() {
        let yaml = "\
director: {interfaces: [eth0], snat_pool: {addresses: [192.0.2.1], ports: 1000-1999}}
services:
  - {address: 192.0.2.100, port: 80, protocol: tcp, scheduler: sh, forwarding: fullnat,
     reals: [{address: 192.0.2.11, port: 8080}]}
  - {address: 192.0.2.100, port: 81, protocol: tcp, scheduler: sh, forwarding: fullnat,
     reals: [{address: 192.0.2.11, port: 8080}]}
  - {address: 192.0.2.100, port: 82, protocol: tcp, scheduler: sh, forwarding: fullnat,
     snat_pool: {addresses: [192.0.2.2]}, reals: [{address: 192.0.2.12}]}
";
        let config = Config::parse(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let e = compile(&config, on_link, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("director.snat_pool") && e.contains("SNAT pool address 192.0.2.1"),
            "{e}"
        );
        let local = |a: IpAddr| {
            Ok(Route {
                ifindex: 5,
                gateway: None,
                local: a == IpAddr::from([192, 0, 2, 1]) || a == IpAddr::from([192, 0, 2, 2]),
            })
        };
        let plan = compile(&config, local, None).unwrap_or_else(|e| panic!("{e}"));
        let pools: Vec<u32> = plan.services.iter().map(|s| s.value.pool).collect();
        assert_eq!(pools, [0, 0, 1], "equal pools share a row");
        assert_eq!(plan.pools.len(), 2);
        assert_eq!(
            (
                plan.pools[0].count,
                plan.pools[0].first_port,
                plan.pools[0].last_port
            ),
            (1, 1000, 1999)
        );
        assert_eq!(plan.pools[1].addrs[0], u32::from_ne_bytes([192, 0, 2, 2]));
        assert_eq!(plan.services[0].value.forwarding, FWD_FULLNAT);
        // More different pools than `SNAT_POOLS` holds: refused, not truncated.
        let mut many = String::from("director: {interfaces: [eth0]}\nservices:\n");
        for port in 1..=65 {
            many.push_str(&format!(
                "  - {{address: 192.0.2.100, port: {port}, protocol: tcp, scheduler: sh, \
                 forwarding: fullnat, snat_pool: {{addresses: [192.0.2.1], ports: \
                 {port}00-{port}99}}, reals: [{{address: 192.0.2.11}}]}}\n"
            ));
        }
        let config = Config::parse(&many, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let e = compile(&config, local, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("services[64].snat_pool") && e.contains("more than 64"),
            "{e}"
        );
        assert_eq!(plan.services[0].reals[0].value.port, 8080u16.to_be());
    }

    #[test]
    fn a_reload_keeps_ids_and_indices_and_new_reals_get_new_generations() {
        let config = Config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let first = compile(&config, on_link, None).unwrap_or_else(|e| panic!("{e}"));
        // Drop the first service's first real, add another, and put a new service first.
        let changed = CONFIG
            .replace(
                "reals: [{address: 192.0.2.11}, ",
                "reals: [{address: 192.0.2.14}, ",
            )
            .replace(
                "services:\n",
                "services:\n  - {address: 192.0.2.101, port: 80, protocol: tcp, scheduler: sh}\n",
            );
        let config = Config::parse(&changed, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let second = compile(&config, on_link, Some(&first)).unwrap_or_else(|e| panic!("{e}"));
        let by_key = |p: &Plan, k: ServiceKey| {
            p.services
                .iter()
                .find(|s| s.key == k)
                .cloned()
                .unwrap_or_else(|| panic!("no service"))
        };
        for old in &first.services {
            let new = by_key(&second, old.key);
            assert_eq!(new.value.id, old.value.id, "{} kept its id", old.label());
        }
        assert_eq!(
            second.services[0].value.id, 2,
            "the new service takes a free id"
        );
        let tcp_old = by_key(&first, first.services[0].key);
        let tcp_new = by_key(&second, first.services[0].key);
        let kept = &tcp_new.reals[1];
        assert_eq!(kept.address, tcp_old.reals[1].address);
        assert_eq!(kept.index, tcp_old.reals[1].index);
        assert_eq!(kept.value.generation, tcp_old.reals[1].value.generation);
        // The new real reuses the removed real's index, with a generation never used.
        let added = &tcp_new.reals[0];
        assert_eq!(added.index, tcp_old.reals[0].index);
        assert!(added.value.generation >= first.next_generation);
        let all: Vec<u32> = first
            .services
            .iter()
            .flat_map(|s| &s.reals)
            .map(|r| r.value.generation)
            .collect();
        assert!(!all.contains(&added.value.generation));
        assert_eq!(second.next_generation, first.next_generation + 1);
    }
}
