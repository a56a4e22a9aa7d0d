//! What the maps must hold for a configuration: service ids, real indices, the real's
//! egress interface and each service's scheduling table. Pure apart from the route
//! look-up it is given, so tests can compile plans with fixed interfaces.

use std::net::IpAddr;

use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, FWD_DR, REAL_NONE, RealServer, SCHED_DH, SCHED_SH, ServiceKey,
    ServiceValue,
    hash::{addr_hash, slot_of},
    ipv4_words, ipv6_words,
};

use crate::{
    config::{Config, Forwarding, Origin, Protocol, Scheduler},
    neighbour::{NeighbourError, Route},
    scheduler::{Member, build_table},
};

/// A real server that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: real server {address}: {message}")]
pub struct PlanError {
    pub origin: Origin,
    pub address: IpAddr,
    pub message: String,
}

/// The contents of every map.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
}

/// One virtual service as programmed.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub key: ServiceKey,
    pub value: ServiceValue,
    pub reals: Vec<RealPlan>,
    /// `SCHED_SLOTS` real indices (or `REAL_NONE`).
    pub table: Vec<u32>,
}

/// One real server of one service as programmed.
#[derive(Clone, Debug)]
pub struct RealPlan {
    /// Index in `REALS` / `REAL_STATS`.
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

/// Compiles a validated configuration; `route` tells how the director reaches an address.
pub fn compile(
    config: &Config,
    mut route: impl FnMut(IpAddr) -> Result<Route, NeighbourError>,
) -> Result<Plan, PlanError> {
    let mut services = Vec::with_capacity(config.services.len());
    let mut next_real = 0u32;
    for (id, s) in config.services.iter().enumerate() {
        let (vip, family) = words(s.address);
        let mut reals = Vec::with_capacity(s.reals.len());
        for r in &s.reals {
            let fail = |message: String| PlanError {
                origin: r.origin.clone(),
                address: r.address,
                message,
            };
            let to = route(r.address).map_err(|e| fail(e.to_string()))?;
            if to.local {
                return Err(fail("it is one of the director's own addresses".into()));
            }
            if let Some(gw) = to.gateway {
                // Direct routing only rewrites MACs: the real must be on-link.
                return Err(fail(format!(
                    "it is reached through gateway {gw}; direct routing needs the real on a \
                     network directly connected to the director"
                )));
            }
            let (addr, family) = words(r.address);
            reals.push(RealPlan {
                index: next_real,
                address: r.address,
                port: r.port,
                weight: r.weight,
                value: RealServer {
                    addr,
                    ifindex: to.ifindex,
                    port: r.port.to_be(),
                    family,
                    flags: 0,
                },
            });
            next_real += 1;
        }
        let members: Vec<Member> = reals
            .iter()
            .map(|r| Member {
                address: r.address,
                port: r.port,
                weight: r.weight,
            })
            .collect();
        let table = build_table(&members, config.director.hash_seed)
            .into_iter()
            .map(|pos| reals.get(pos as usize).map_or(REAL_NONE, |r| r.index))
            .collect();
        services.push(ServicePlan {
            name: s.name.clone(),
            address: s.address,
            port: s.port,
            protocol: s.protocol,
            scheduler: s.scheduler,
            key: ServiceKey {
                addr: vip,
                port: s.port.to_be(),
                proto: s.protocol.number(),
                family,
            },
            value: ServiceValue {
                id: id as u32,
                scheduler: match s.scheduler {
                    Scheduler::Sh => SCHED_SH,
                    Scheduler::Dh => SCHED_DH,
                },
                forwarding: match s.forwarding {
                    Forwarding::Dr => FWD_DR,
                },
                hash_seed: config.director.hash_seed,
                flags: 0,
            },
            reals,
            table,
        });
    }
    Ok(Plan { services })
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
    pub fn real_for(&self, client: IpAddr, destination: IpAddr) -> Option<&RealPlan> {
        let hashed = match self.scheduler {
            Scheduler::Sh => client,
            Scheduler::Dh => destination,
        };
        let slot = slot_of(addr_hash(&words(hashed).0, self.value.hash_seed));
        let index = *self.table.get(slot as usize)?;
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

    fn on_link(_: IpAddr) -> Result<Route, NeighbourError> {
        Ok(Route {
            ifindex: 5,
            gateway: None,
            local: false,
        })
    }

    #[test]
    fn ids_indices_keys_and_tables() {
        let config = Config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let plan = compile(&config, on_link).unwrap_or_else(|e| panic!("{e}"));
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
        let e = compile(&config, via_gateway)
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
        let e = compile(&config, local)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("director's own"), "{e}");
    }
}
