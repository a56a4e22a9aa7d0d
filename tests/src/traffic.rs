//! Real servers and clients: plain sockets on threads that live inside the namespaces.
//! A server answers every request with its banner, so the client learns which real
//! answered.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

const POLL: Duration = Duration::from_millis(20);

/// A running server thread; stops and joins on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server in `ns` on `bind`: reads one line, answers `banner` and a newline.
pub fn tcp_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    let banner = format!("{banner}\n");
    tcp_listener(ns, bind, move |mut conn, _, served| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        read_line(&mut conn);
        if conn.write_all(banner.as_bytes()).is_ok() {
            served.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// As [`tcp_server`], with the address and port the connection came from after the
/// banner ("real 198.51.100.11 from 203.0.113.77:40000"): what a NAT real sees.
pub fn tcp_peer_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    let banner = banner.to_owned();
    tcp_listener(ns, bind, move |mut conn, _, served| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        read_line(&mut conn);
        let peer = conn
            .peer_addr()
            .map_or_else(|e| e.to_string(), |p| p.to_string());
        if conn
            .write_all(format!("{banner} from {peer}\n").as_bytes())
            .is_ok()
        {
            served.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// As [`tcp_line_server`], answering each line with the banner and the peer's address
/// and port (see [`tcp_peer_server`]).
pub fn tcp_peer_line_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    let banner = banner.to_owned();
    tcp_listener(ns, bind, move |conn, stop, served| {
        let peer = conn
            .peer_addr()
            .map_or_else(|e| e.to_string(), |p| p.to_string());
        serve_lines(conn, stop, served, &format!("{banner} from {peer}\n"))
    })
}

/// A TCP server in `ns` on `bind` that reads one line and answers `bytes` bytes, then
/// closes: a transfer larger than any MTU.
pub fn tcp_bulk_server(ns: &Netns, bind: SocketAddr, bytes: usize) -> Server {
    tcp_listener(ns, bind, move |mut conn, _, served| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        read_line(&mut conn);
        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
        let block = [b'x'; 4096];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(block.len());
            if conn.write_all(&block[..k]).is_err() {
                return;
            }
            left -= k;
        }
        served.fetch_add(1, Ordering::Relaxed);
    })
}

/// Reads up to a newline (at most 256 bytes), or until the peer stops or times out.
pub fn read_line(conn: &mut TcpStream) {
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                got += k;
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
        }
    }
}

/// A TCP listener in `ns` on `bind` that runs `handle(connection, stop, served)` on a
/// thread of its own for each connection; the server joins them when it stops.
pub fn tcp_listener(
    ns: &Netns,
    bind: SocketAddr,
    handle: impl Fn(TcpStream, &AtomicBool, &AtomicU64) + Send + Sync + 'static,
) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (s, n, handle) = (stop.clone(), served.clone(), Arc::new(handle));
    let thread = ns.spawn(move || {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ready_tx.send(());
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let (s, n, handle) = (s.clone(), n.clone(), handle.clone());
                    // Threads made here share this thread's network namespace.
                    workers.push(std::thread::spawn(move || handle(conn, &s, &n)));
                    workers.retain(|w| !w.is_finished());
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
        for w in workers {
            let _ = w.join();
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("tcp server on {bind} did not start"));
    Server {
        stop,
        served,
        thread: Some(thread),
    }
}

/// A UDP server in `ns` bound to `bind` (bind the VIP itself, so replies leave from it):
/// answers every datagram with `banner`.
pub fn udp_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    udp_answering(ns, bind, banner, false)
}

/// As [`udp_server`], with the sender's address and port after the banner.
pub fn udp_peer_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    udp_answering(ns, bind, banner, true)
}

fn udp_answering(ns: &Netns, bind: SocketAddr, banner: &str, with_peer: bool) -> Server {
    let banner = banner.to_owned();
    udp_replying(ns, bind, move |_, from| {
        Some(if with_peer {
            format!("{banner} from {from}").into_bytes()
        } else {
            banner.clone().into_bytes()
        })
    })
}

/// A UDP server in `ns` bound to `bind`: answers each datagram with what `reply` makes
/// of it (nothing for `None`).
pub fn udp_replying(
    ns: &Netns,
    bind: SocketAddr,
    reply: impl Fn(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + 'static,
) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (s, n) = (stop.clone(), served.clone());
    let thread = ns.spawn(move || {
        let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        sock.set_read_timeout(Some(POLL))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ready_tx.send(());
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            let Ok((len, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some(answer) = reply(&buf[..len], from) else {
                continue;
            };
            if sock.send_to(&answer, from).is_ok() {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("udp server on {bind} did not start"));
    Server {
        stop,
        served,
        thread: Some(thread),
    }
}

/// One TCP request from `src` (any port) to `dst`; returns the answer without its newline.
/// Call it on a thread inside the client's namespace.
pub fn tcp_ask(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    sock.connect_timeout(&SockAddr::from(dst), timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut stream: TcpStream = sock.into();
    stream.write_all(b"hello\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

/// Asks `dst` (see [`tcp_bulk_server`]) and reads until the server closes; returns the
/// bytes received. Reads time out after 10 s without data. Call on a thread inside the
/// client's namespace.
pub fn tcp_fetch(dst: SocketAddr, timeout: Duration) -> io::Result<usize> {
    let mut conn = TcpStream::connect_timeout(&dst, timeout)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"get\n")?;
    let mut total = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        match conn.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

/// One UDP request from `src` to `dst`, retried up to `tries` times; returns the answer.
pub fn udp_ask(src: IpAddr, dst: SocketAddr, timeout: Duration, tries: u32) -> io::Result<String> {
    udp_ask_with(src, dst, b"hello", timeout, tries)
}

/// As [`udp_ask`], with the datagram's payload (a large one leaves in fragments).
pub fn udp_ask_with(
    src: IpAddr,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
    tries: u32,
) -> io::Result<String> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))?;
    sock.connect(dst)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 65536];
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no answer");
    for _ in 0..tries.max(1) {
        sock.send(payload)?;
        match sock.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TCP server in `ns` on `bind` that keeps each connection open and answers every line
/// with `banner` and a newline, until the client closes (a long-lived connection).
pub fn tcp_line_server(ns: &Netns, bind: SocketAddr, banner: &str) -> Server {
    let banner = format!("{banner}\n");
    tcp_listener(ns, bind, move |conn, stop, served| {
        serve_lines(conn, stop, served, &banner)
    })
}

fn serve_lines(mut conn: TcpStream, stop: &AtomicBool, n: &AtomicU64, banner: &str) {
    let _ = conn.set_read_timeout(Some(POLL * 5));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(k) => {
                for _ in buf[..k].iter().filter(|&&b| b == b'\n') {
                    if conn.write_all(banner.as_bytes()).is_err() {
                        return;
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A long-lived TCP connection that asks a line at a time (see [`tcp_line_server`]).
pub struct Session {
    stream: TcpStream,
}

impl Session {
    /// Connects from `src` (any port) to `dst`. Call on a thread inside the client's
    /// namespace.
    pub fn connect(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<Session> {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        sock.connect_timeout(&SockAddr::from(dst), timeout)?;
        sock.set_read_timeout(Some(timeout))?;
        Ok(Session {
            stream: sock.into(),
        })
    }

    /// Sends a line and returns the answer line (without its newline).
    pub fn ask(&mut self) -> io::Result<String> {
        self.stream.write_all(b"ping\n")?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
                _ if byte[0] == b'\n' => break,
                _ => answer.push(byte[0]),
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// One new connection from each source to `dst`, one line asked on each; the answers in
/// order. Call inside the client's namespace. Panics naming the source that failed.
pub fn ask_each(sources: &[IpAddr], dst: SocketAddr, timeout: Duration) -> Vec<String> {
    sources
        .iter()
        .map(|&s| {
            Session::connect(s, dst, timeout)
                .and_then(|mut c| c.ask())
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        })
        .collect()
}

type Reply = std::sync::mpsc::Sender<Vec<(IpAddr, String)>>;

/// Long-lived sessions held on a thread of the client's namespace; [`Sessions::ask_all`]
/// asks each once more (an answer that failed reads `error: ...`).
pub struct Sessions {
    tx: std::sync::mpsc::Sender<Reply>,
}

impl Sessions {
    /// Connects one session from each source to `dst`, from `client`.
    pub fn open(
        client: &Netns,
        sources: Vec<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Sessions {
        let (tx, rx) = std::sync::mpsc::channel::<Reply>();
        client.spawn(move || {
            let mut sessions: Vec<(IpAddr, Session)> = sources
                .iter()
                .map(|&s| {
                    let session = Session::connect(s, dst, timeout)
                        .unwrap_or_else(|e| panic!("connect from {s}: {e}"));
                    (s, session)
                })
                .collect();
            while let Ok(reply) = rx.recv() {
                let answers = sessions
                    .iter_mut()
                    .map(|(s, session)| {
                        (*s, session.ask().unwrap_or_else(|e| format!("error: {e}")))
                    })
                    .collect();
                let _ = reply.send(answers);
            }
        });
        Sessions { tx }
    }

    /// Each session's answer to one more line, in the order they were opened.
    pub fn ask_all(&self) -> Vec<(IpAddr, String)> {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        self.tx
            .send(reply_tx)
            .unwrap_or_else(|e| panic!("client: {e}"));
        reply_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("client: {e}"))
    }
}
