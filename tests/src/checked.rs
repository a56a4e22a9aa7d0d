//! What health checks talk to: HTTP and HTTPS servers with a chosen status, a server
//! that accepts and never answers, and a DNS server. Each runs on threads inside a
//! real's namespace, as the servers of [`crate::traffic`] do.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    netns::Netns,
    traffic::{Server, tcp_listener, udp_replying},
};

/// The self-signed certificate (`checked.example`, valid to 2126) and key the HTTPS
/// server presents; tests/fixtures/tls.
pub const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/cert.pem");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls/key.pem");

/// The name the certificate is for.
pub const CERT_NAME: &str = "checked.example";

/// Reads a request's head (up to the empty line), at most 8 KiB.
fn read_head(conn: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

fn answer(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An HTTP/1.1 server answering every request with `status` and `body`.
pub fn http_server(ns: &Netns, bind: SocketAddr, status: u16, body: &str) -> Server {
    let reply = answer(status, body);
    tcp_listener(ns, bind, move |mut conn, _, served| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        read_head(&mut conn);
        if conn.write_all(&reply).is_ok() {
            served.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// A server that accepts connections and never answers (a hung real), holding each
/// until it stops.
pub fn silent_server(ns: &Netns, bind: SocketAddr) -> Server {
    tcp_listener(ns, bind, |conn, stop, served| {
        served.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(conn);
    })
}

/// An HTTPS server (the fixture certificate) answering every request with `status`.
pub fn https_server(ns: &Netns, bind: SocketAddr, status: u16) -> Server {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(CERT)
        .and_then(|i| i.collect())
        .unwrap_or_else(|e| panic!("{CERT}: {e}"));
    let key = PrivateKeyDer::from_pem_file(KEY).unwrap_or_else(|e| panic!("{KEY}: {e}"));
    #[allow(deprecated)] // ring, as the daemon uses.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .unwrap_or_else(|e| panic!("TLS server: {e}"));
    let config = Arc::new(config);
    let reply = answer(status, "ok");
    tcp_listener(ns, bind, move |conn: TcpStream, _, served: &AtomicU64| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        let mut stream = rustls::StreamOwned::new(tls, conn);
        read_head(&mut stream);
        if stream.write_all(&reply).is_ok() {
            stream.conn.send_close_notify();
            let _ = stream.flush();
            served.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// A DNS server: answers each query with one A record (192.0.2.53), or with NXDOMAIN
/// and no record when `answer` is false.
pub fn dns_server(ns: &Netns, bind: SocketAddr, answer: bool) -> Server {
    use hickory_proto::{
        op::{Message, MessageType, ResponseCode},
        rr::{RData, Record, rdata::A},
    };
    udp_replying(ns, bind, move |query, _| {
        let query = Message::from_vec(query).ok()?;
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.metadata.message_type = MessageType::Response;
        reply.add_queries(query.queries.clone());
        if answer {
            let name = query.queries.first()?.name().clone();
            reply.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A::new(192, 0, 2, 53)),
            ));
        } else {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        reply.to_vec().ok()
    })
}
