//! Routes and next hops towards the real servers, through rtnetlink (the rust-netlink
//! crates).
//!
//! Each real's next hop (its MAC, the director's MAC and MTU on the egress interface,
//! that interface) is resolved here and written into the real's `REALS` entry, so the XDP
//! program never asks the kernel per packet. It is kept current by neighbour, route and
//! link events and a periodic full resync; the program falls back to `bpf_fib_lookup`
//! only for a real whose next hop is not resolved.
//!
//! Under direct routing the director's own stack never sends to a real, so nothing else
//! would resolve its neighbour entry. The daemon adds a *managed* entry per real
//! (`NTF_EXT_MANAGED`, Linux 5.16+): the kernel resolves it at once and keeps
//! re-validating it, and it is `extern_learn` so garbage collection leaves it alone.
//! Entries an administrator made permanent are used as they are and left in place.

use std::{collections::HashMap, future::Future, net::IpAddr, time::Duration};

use futures_util::{StreamExt, TryStreamExt};
use lb_common::{NH_OFFLINK, NH_RESOLVED, NH_UNRESOLVED};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags,
            NeighbourMessage, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    },
};

/// Every netlink request gets this long; the crates have no time-out of their own, and a
/// lost answer would otherwise hang the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors from route, link and neighbour requests.
#[derive(Debug, thiserror::Error)]
pub enum NexthopError {
    /// The netlink socket could not be opened.
    #[error("rtnetlink: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request, or its answer could not be read.
    #[error("{what} {subject}: {source}")]
    Request {
        what: &'static str,
        subject: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// No answer within the time-out.
    #[error("{what} {subject}: no answer from the kernel within {REQUEST_TIMEOUT:?}")]
    Timeout { what: &'static str, subject: String },
}

impl NexthopError {
    /// The errno of a refused request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NexthopError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

/// The director's route towards an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Egress interface.
    pub ifindex: u32,
    /// Next-hop gateway, when the address is not on a directly connected network.
    pub gateway: Option<IpAddr>,
    /// Whether the address is one of the director's own.
    pub local: bool,
}

/// A real's next hop, as the program needs it (`RealServer`'s next-hop fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `NH_UNRESOLVED`, `NH_RESOLVED` or `NH_OFFLINK`.
    pub state: u8,
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub mtu: u32,
}

/// An interface as the next hop and the MAC check need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// How an XDP program is attached to it, if one is: `Some(true)` in the driver,
    /// `Some(false)` in the generic (skb) path.
    pub xdp_driver: Option<bool>,
}

/// A request connection to rtnetlink.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

async fn bounded<T>(
    what: &'static str,
    subject: impl std::fmt::Display,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, NexthopError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(NexthopError::Request {
            what,
            subject: subject.to_string(),
            source,
        }),
        Err(_) => Err(NexthopError::Timeout {
            what,
            subject: subject.to_string(),
        }),
    }
}

fn neighbour_address(address: IpAddr) -> NeighbourAddress {
    match address {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

/// Neighbour states with a usable link-layer address (the kernel's NUD_VALID): what a
/// next hop, and `bpf_fib_lookup`, need.
fn is_valid(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

impl Netlink {
    /// Opens a connection; its I/O runs as a task on the current tokio runtime.
    pub fn open() -> Result<Netlink, NexthopError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NexthopError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Sends one request (not a dump) and returns the first answer.
    async fn one(
        &self,
        what: &'static str,
        subject: impl std::fmt::Display,
        message: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage, NexthopError> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        bounded(what, subject, async move {
            let mut answers = handle.request(request)?;
            match answers.next().await {
                Some(m) => match m.payload {
                    NetlinkPayload::InnerMessage(inner) => Ok(inner),
                    NetlinkPayload::Error(e) => Err(rtnetlink::Error::NetlinkError(e)),
                    other => Err(rtnetlink::Error::UnexpectedMessage(NetlinkMessage::new(
                        m.header, other,
                    ))),
                },
                None => Err(rtnetlink::Error::RequestFailed),
            }
        })
        .await
    }

    /// The route the director would use towards `address` (`ip route get`).
    pub async fn route(&self, address: IpAddr) -> Result<Route, NexthopError> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(address);
        m.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(match address {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        let answer = self
            .one("route to", address, RouteNetlinkMessage::GetRoute(m))
            .await?;
        let RouteNetlinkMessage::NewRoute(r) = answer else {
            return Err(NexthopError::Request {
                what: "route to",
                subject: address.to_string(),
                source: rtnetlink::Error::RequestFailed,
            });
        };
        let mut route = Route {
            ifindex: 0,
            gateway: None,
            local: r.header.kind == RouteType::Local,
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => route.ifindex = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some((*g).into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                    route.gateway = Some((*g).into())
                }
                _ => {}
            }
        }
        Ok(route)
    }

    /// The neighbour entry for `address` on `ifindex`: its state and link-layer address.
    async fn neighbour(
        &self,
        ifindex: u32,
        address: IpAddr,
    ) -> Result<Option<(NeighbourState, Option<[u8; 6]>)>, NexthopError> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(address);
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(address)));
        let answer = match self
            .one("neighbour", address, RouteNetlinkMessage::GetNeighbour(m))
            .await
        {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let RouteNetlinkMessage::NewNeighbour(n) = answer else {
            return Ok(None);
        };
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac_of(b),
            _ => None,
        });
        Ok(Some((n.header.state, mac)))
    }

    /// An interface by index.
    pub async fn link(&self, index: u32) -> Result<Link, NexthopError> {
        let request = self.handle.link().get().match_index(index);
        self.link_from(index.to_string(), request).await
    }

    /// An interface by name.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, NexthopError> {
        let request = self.handle.link().get().match_name(name.to_owned());
        self.link_from(name.to_owned(), request).await
    }

    async fn link_from(
        &self,
        subject: String,
        request: rtnetlink::LinkGetRequest,
    ) -> Result<Link, NexthopError> {
        let found: Option<LinkMessage> = bounded("interface", &subject, async move {
            request.execute().try_next().await
        })
        .await?;
        let found = found.ok_or(NexthopError::Request {
            what: "interface",
            subject,
            source: rtnetlink::Error::RequestFailed,
        })?;
        Ok(link_of(&found))
    }

    /// Creates (or converts to) a managed neighbour entry for `address` on `ifindex`.
    async fn manage(&self, ifindex: u32, address: IpAddr) -> Result<(), NexthopError> {
        let mut request = self
            .handle
            .neighbours()
            .add(ifindex, address)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::ExtLearned)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        bounded("managed neighbour", address, request.execute()).await
    }

    /// Deletes the neighbour entry for `address` on `ifindex`; a missing one is fine.
    async fn forget(&self, ifindex: u32, address: IpAddr) -> Result<(), NexthopError> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(address);
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(address)));
        let handle = self.handle.clone();
        match bounded("deleting neighbour", address, async move {
            handle.neighbours().del(m).execute().await
        })
        .await
        {
            // Gone already, or its interface is.
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
            other => other,
        }
    }

    /// The next hop towards a real server: route, neighbour and egress interface.
    pub async fn next_hop(
        &self,
        address: IpAddr,
        links: &mut HashMap<u32, Link>,
    ) -> Result<NextHop, NexthopError> {
        let route = self.route(address).await?;
        if route.gateway.is_some() || route.local {
            return Ok(NextHop {
                state: NH_OFFLINK,
                ifindex: route.ifindex,
                ..NextHop::default()
            });
        }
        let link = match links.get(&route.ifindex) {
            Some(l) => l.clone(),
            None => {
                let l = self.link(route.ifindex).await?;
                links.insert(route.ifindex, l.clone());
                l
            }
        };
        let mut hop = NextHop {
            state: NH_UNRESOLVED,
            ifindex: route.ifindex,
            dmac: [0; 6],
            smac: link.mac,
            mtu: link.mtu,
        };
        if let Some((state, Some(mac))) = self.neighbour(route.ifindex, address).await?
            && is_valid(state)
        {
            hop.state = NH_RESOLVED;
            hop.dmac = mac;
        }
        Ok(hop)
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        xdp_driver: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = mac_of(mac).unwrap_or_default(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Xdp(xdp) => {
                for x in xdp {
                    match x {
                        LinkXdp::Attached(XdpAttached::Driver) => link.xdp_driver = Some(true),
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                            link.xdp_driver = Some(false)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The neighbour entries the daemon made. Removed by [`ManagedNeighbours::release`],
/// which every way out of the daemon calls. With a state file ([`ManagedNeighbours::open`])
/// they are also listed on disk, so a start after a `kill -9` removes the ones its
/// configuration no longer names ([`ManagedNeighbours::forget_leftovers`]).
#[derive(Default)]
pub struct ManagedNeighbours {
    entries: Vec<(u32, IpAddr)>,
    state_file: Option<std::path::PathBuf>,
    /// Entries an earlier run listed that this one has not taken over.
    leftover: Vec<(u32, IpAddr)>,
}

impl ManagedNeighbours {
    /// Entries listed in `<state_dir>/neighbours.<netns>`, left by a run that did not
    /// stop cleanly, become leftovers: taken over when this run wants them too,
    /// removed by [`ManagedNeighbours::forget_leftovers`] otherwise.
    pub fn open(state_dir: &std::path::Path) -> ManagedNeighbours {
        let state_file = crate::host::state_file(state_dir, "neighbours");
        let leftover: Vec<(u32, IpAddr)> = std::fs::read_to_string(&state_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (index, address) = line.split_once(' ')?;
                Some((index.parse().ok()?, address.parse().ok()?))
            })
            .collect();
        if !leftover.is_empty() {
            log::info!(
                "{} left by an earlier run: {} neighbour entries to take over or remove",
                state_file.display(),
                leftover.len()
            );
        }
        ManagedNeighbours {
            entries: Vec::new(),
            state_file: Some(state_file),
            leftover,
        }
    }

    /// Lists the entries on disk (or removes the list when there are none). A failure
    /// is logged: the list only serves the repair after a crash.
    fn save(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let all: Vec<String> = self
            .entries
            .iter()
            .chain(&self.leftover)
            .map(|(index, address)| format!("{index} {address}\n"))
            .collect();
        let result = if all.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            // Next to the file and named after all of it: daemons in other namespaces
            // write their own lists in the same directory.
            let mut tmp = path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = std::path::PathBuf::from(tmp);
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, all.concat()))
                .and_then(|()| std::fs::rename(&tmp, path))
        };
        if let Err(e) = result {
            log::warn!("{}: {e}", path.display());
        }
    }

    /// Removes the entries an earlier run left that this one has not taken over; one
    /// that cannot be removed stays listed for the next start.
    pub async fn forget_leftovers(&mut self, netlink: &Netlink) {
        for (ifindex, address) in std::mem::take(&mut self.leftover) {
            match netlink.forget(ifindex, address).await {
                Ok(()) => log::info!("removed neighbour entry {address} left by an earlier run"),
                Err(e) => {
                    log::warn!("{e}");
                    self.leftover.push((ifindex, address));
                }
            }
        }
        self.save();
    }

    /// Makes sure the kernel keeps `address` on `ifindex` resolved.
    pub async fn ensure(
        &mut self,
        netlink: &Netlink,
        ifindex: u32,
        address: IpAddr,
    ) -> Result<(), NexthopError> {
        if self.entries.contains(&(ifindex, address)) {
            return Ok(());
        }
        if let Some((state, _)) = netlink.neighbour(ifindex, address).await?
            && matches!(state, NeighbourState::Permanent | NeighbourState::Noarp)
        {
            // Someone else's (made since, if an earlier run listed it): not ours to remove.
            log::info!("neighbour {address} is static; using it as it is");
            self.leftover.retain(|&e| e != (ifindex, address));
            self.save();
            return Ok(());
        }
        // Listed before it is made, so a kill -9 in between leaves no unlisted entry.
        self.leftover.retain(|&e| e != (ifindex, address));
        self.entries.push((ifindex, address));
        self.save();
        if let Err(e) = netlink.manage(ifindex, address).await {
            self.entries.retain(|&entry| entry != (ifindex, address));
            self.save();
            return Err(e);
        }
        Ok(())
    }

    /// Removes the entries for addresses that are no longer real servers.
    pub async fn retain(&mut self, netlink: &Netlink, keep: impl Fn(IpAddr) -> bool) {
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|&(_, a)| keep(a));
        self.entries = kept;
        for (ifindex, address) in gone {
            if let Err(e) = netlink.forget(ifindex, address).await {
                // Listed still, so the next start tries again.
                log::warn!("{e}");
                self.leftover.push((ifindex, address));
            }
        }
        self.save();
    }

    /// Removes every entry this daemon made.
    pub async fn release(&mut self, netlink: &Netlink) {
        self.retain(netlink, |_| false).await;
    }
}

/// Neighbour, IPv4 route and link events: any of them may change a real's next hop.
pub struct Events {
    rx: futures_util::stream::BoxStream<'static, RouteNetlinkMessage>,
}

/// What an event may have changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The neighbour entry of this address.
    Neighbour(IpAddr),
    /// Routes or links: any real's next hop.
    Everything,
}

impl Events {
    /// Subscribes (a connection of its own: route events on a request connection would
    /// be delivered as answers to our own requests).
    pub fn open() -> Result<Events, NexthopError> {
        let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Link,
        ])
        .map_err(NexthopError::Socket)?;
        tokio::spawn(conn);
        let rx = messages
            .filter_map(|(m, _)| async move {
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => Some(inner),
                    // The kernel dropped events (ENOBUFS): resync everything.
                    NetlinkPayload::Overrun(_) => {
                        Some(RouteNetlinkMessage::NewLink(LinkMessage::default()))
                    }
                    _ => None,
                }
            })
            .boxed();
        Ok(Events { rx })
    }

    /// The next event's change; `None` if the subscription ended.
    pub async fn next(&mut self) -> Option<Change> {
        let m = self.rx.next().await?;
        Some(match m {
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => n
                .attributes
                .iter()
                .find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        Some(Change::Neighbour((*a).into()))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        Some(Change::Neighbour((*a).into()))
                    }
                    _ => None,
                })
                .unwrap_or(Change::Everything),
            _ => Change::Everything,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn loopback_route_is_local_and_lo_has_no_mac() {
        // The test process's namespace is the machine's own here, where lo is up.
        let nl = Netlink::open().unwrap_or_else(|e| panic!("{e}"));
        let r = nl
            .route(IpAddr::from([127, 0, 0, 1]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.local, "{r:?}");
        assert_eq!(r.ifindex, 1, "lo is ifindex 1");
        let lo = nl.link(1).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((lo.name.as_str(), lo.mac), ("lo", [0; 6]));
        let by_name = nl
            .link_by_name("lo")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(by_name, lo);
        let e = nl.link(0x7fff_fff0).await.err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("interface")));
    }
}
