//! Routes and next-hop MAC addresses towards the real servers, through rtnetlink.
//!
//! The XDP program finds each real's MAC with `bpf_fib_lookup`, which reads the kernel's
//! neighbour table but cannot fill it. Under direct routing the director's own stack never
//! sends to a real, so nothing else would resolve those entries. The daemon therefore adds
//! a *managed* neighbour entry per real (`NTF_EXT_MANAGED`, Linux 5.16+): the kernel resolves
//! it at once and keeps re-validating it, so a real's MAC change is followed, and the entry
//! is `extern_learn` so garbage collection leaves it alone. Entries an administrator made
//! permanent are used as they are and left in place.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// Errors from route and neighbour requests.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// The netlink socket could not be opened or used.
    #[error("rtnetlink: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{what} {address}: {source}")]
    Request {
        what: &'static str,
        address: IpAddr,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be understood.
    #[error("rtnetlink: malformed answer to {0}")]
    Malformed(&'static str),
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

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_LOCAL: u8 = 2;
const NDA_DST: u16 = 1;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_LEARNED: u8 = 0x10;
const NTF_EXT_MANAGED: u32 = 0x1;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// States with a usable link-layer address (the kernel's NUD_VALID): what
/// `bpf_fib_lookup` needs to answer SUCCESS.
const NUD_VALID: u16 =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;

/// An rtnetlink socket for route look-ups and neighbour entries.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NeighbourError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NeighbourError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Strict checking makes GETNEIGH answer for exactly one entry (Linux 4.20+).
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_GET_STRICT_CHK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NeighbourError::Socket(io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// The route the director would use towards `address`.
    pub fn route(&mut self, address: IpAddr) -> Result<Route, NeighbourError> {
        let (family, bits) = family_of(address);
        let mut body = vec![family, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        push_attr(&mut body, RTA_DST, &addr_bytes(address));
        let answer = self
            .request(RTM_GETROUTE, NLM_F_REQUEST, &body)
            .map_err(|source| NeighbourError::Request {
                what: "route to",
                address,
                source,
            })?;
        let (kind, payload) = answer.ok_or(NeighbourError::Malformed("RTM_GETROUTE"))?;
        if kind != RTM_NEWROUTE || payload.len() < 12 {
            return Err(NeighbourError::Malformed("RTM_GETROUTE"));
        }
        let mut route = Route {
            ifindex: 0,
            gateway: None,
            local: payload[7] == RTN_LOCAL,
        };
        for (kind, value) in attrs(&payload[12..]) {
            match kind {
                RTA_OIF if value.len() == 4 => {
                    route.ifindex = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
                }
                RTA_GATEWAY => route.gateway = ip_from(value),
                _ => {}
            }
        }
        Ok(route)
    }

    /// The state (`NUD_*`) of the neighbour entry for `address` on `ifindex`, if any.
    pub fn neighbour_state(
        &mut self,
        ifindex: u32,
        address: IpAddr,
    ) -> Result<Option<u16>, NeighbourError> {
        let body = neigh_body(ifindex, address, 0, 0, None);
        match self.request(RTM_GETNEIGH, NLM_F_REQUEST, &body) {
            Ok(Some((RTM_NEWNEIGH, payload))) if payload.len() >= 12 => {
                Ok(Some(u16::from_ne_bytes([payload[8], payload[9]])))
            }
            Ok(_) => Err(NeighbourError::Malformed("RTM_GETNEIGH")),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(source) => Err(NeighbourError::Request {
                what: "neighbour",
                address,
                source,
            }),
        }
    }

    /// Creates (or converts to) a managed neighbour entry for `address` on `ifindex`.
    pub fn manage(&mut self, ifindex: u32, address: IpAddr) -> Result<(), NeighbourError> {
        let body = neigh_body(ifindex, address, 0, NTF_EXT_LEARNED, Some(NTF_EXT_MANAGED));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request(RTM_NEWNEIGH, flags, &body)
            .map(drop)
            .map_err(|source| NeighbourError::Request {
                what: "managed neighbour",
                address,
                source,
            })
    }

    /// Deletes the neighbour entry for `address` on `ifindex`; a missing entry is fine.
    pub fn forget(&mut self, ifindex: u32, address: IpAddr) -> Result<(), NeighbourError> {
        let body = neigh_body(ifindex, address, 0, 0, None);
        match self.request(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, &body) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(NeighbourError::Request {
                what: "deleting neighbour",
                address,
                source,
            }),
        }
    }

    /// Sends one request and returns the first answer message (type, payload), or `None`
    /// for a plain acknowledgement. A kernel error becomes an `io::Error`.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> io::Result<Option<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; zero is "the kernel" as destination.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto with a live buffer and address of the stated sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        let mut answer = None;
        loop {
            // SAFETY: recv into a live buffer of the stated size.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: bad length",
                    ));
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match mtype {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        return if code == 0 {
                            Ok(answer)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    NLMSG_DONE => return Ok(answer),
                    _ => {
                        if answer.is_none() {
                            answer = Some((mtype, payload.to_vec()));
                        }
                        // Without NLM_F_ACK a single answer ends the exchange.
                        if flags & NLM_F_ACK == 0 {
                            return Ok(answer);
                        }
                    }
                }
            }
        }
    }
}

/// The neighbour entries the daemon made, removed again when dropped.
pub struct ManagedNeighbours {
    netlink: Netlink,
    entries: Vec<(u32, IpAddr)>,
}

impl ManagedNeighbours {
    pub fn new(netlink: Netlink) -> ManagedNeighbours {
        ManagedNeighbours {
            netlink,
            entries: Vec::new(),
        }
    }

    /// Makes sure the kernel keeps `address` on `ifindex` resolved.
    pub fn ensure(&mut self, ifindex: u32, address: IpAddr) -> Result<(), NeighbourError> {
        if self.entries.contains(&(ifindex, address)) {
            return Ok(());
        }
        if let Some(state) = self.netlink.neighbour_state(ifindex, address)?
            && state & (NUD_PERMANENT | NUD_NOARP) != 0
        {
            log::info!("neighbour {address} is static; using it as it is");
            return Ok(());
        }
        self.netlink.manage(ifindex, address)?;
        self.entries.push((ifindex, address));
        Ok(())
    }

    /// Waits up to `limit` for every managed entry to have a link-layer address; returns
    /// the addresses still unresolved (a real that is down, for instance).
    pub fn wait_resolved(&mut self, limit: std::time::Duration) -> Vec<IpAddr> {
        let start = std::time::Instant::now();
        loop {
            let pending: Vec<(u32, IpAddr)> = self
                .entries
                .iter()
                .copied()
                .filter(|&(ifindex, address)| {
                    !matches!(
                        self.netlink.neighbour_state(ifindex, address),
                        Ok(Some(state)) if state & NUD_VALID != 0
                    )
                })
                .collect();
            if pending.is_empty() || start.elapsed() >= limit {
                return pending.into_iter().map(|(_, a)| a).collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Removes every entry this daemon made.
    pub fn release(&mut self) {
        for (ifindex, address) in std::mem::take(&mut self.entries) {
            if let Err(e) = self.netlink.forget(ifindex, address) {
                log::warn!("{e}");
            }
        }
    }
}

impl Drop for ManagedNeighbours {
    fn drop(&mut self) {
        self.release();
    }
}

fn family_of(address: IpAddr) -> (u8, u8) {
    match address {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128),
    }
}

fn addr_bytes(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn neigh_body(ifindex: u32, address: IpAddr, state: u16, flags: u8, ext: Option<u32>) -> Vec<u8> {
    let (family, _) = family_of(address);
    let mut body = vec![family, 0, 0, 0];
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&state.to_ne_bytes());
    body.push(flags);
    body.push(0);
    push_attr(&mut body, NDA_DST, &addr_bytes(address));
    if let Some(ext) = ext {
        push_attr(&mut body, NDA_FLAGS_EXT, &ext.to_ne_bytes());
    }
    body
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// Iterates over (type, value) of a run of rtattrs; stops at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_stop_on_garbage() {
        let mut buf = Vec::new();
        push_attr(&mut buf, RTA_OIF, &7u32.to_ne_bytes());
        push_attr(&mut buf, RTA_GATEWAY, &[192, 0, 2, 1]);
        push_attr(&mut buf, 9, &[1, 2, 3]);
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (RTA_OIF, &7u32.to_ne_bytes()[..]));
        assert_eq!(ip_from(got[1].1), Some(IpAddr::from([192, 0, 2, 1])));
        assert_eq!(got[2].1, &[1, 2, 3]);
        // A length running past the end ends the walk instead of reading beyond it.
        let mut bad = buf.clone();
        bad.extend_from_slice(&[200, 0, 1, 0, 9]);
        assert_eq!(attrs(&bad).count(), 3);
    }

    #[test]
    fn loopback_route_is_local() {
        // Every network namespace has lo with 127.0.0.1 once it is up; the test process's
        // namespace is the machine's own here, where lo is up.
        let mut nl = Netlink::open().unwrap_or_else(|e| panic!("{e}"));
        let r = nl
            .route(IpAddr::from([127, 0, 0, 1]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.local, "{r:?}");
        assert_eq!(r.ifindex, 1, "lo is ifindex 1");
    }
}
