//! One check of one real, by type: each aims at the real's own address (and the check's
//! port), never through the VIP, and ends within the check's timeout.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::config::{Check, DnsCheck, ExecCheck, HttpCheck, ProbeSpec, TlsCheck, UdpCheck};

use super::Target;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Healthy; an `exec` check with `dynamic` may set the real's weight.
    Healthy {
        weight: Option<u32>,
    },
    /// The real answered and asked to be drained (an HTTP status in `drain`).
    Drain(String),
    Failed(String),
}

/// Most body bytes an HTTP check reads to find its text.
const MAX_BODY: usize = 64 << 10;

/// Most bytes of an `exec` check's standard error kept for the real's last error.
const MAX_STDERR: usize = 512;

/// What a check needs that outlives one run: its HTTP client.
pub struct Prober {
    target: Target,
    check: Check,
    http: Option<Http>,
}

/// An HTTP check's client, and its URL and method made once.
struct Http {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
}

impl Prober {
    pub fn new(target: Target, check: Check, clients: &mut Clients) -> Result<Prober, String> {
        let http = match &check.probe {
            ProbeSpec::Http(h) => {
                let at = SocketAddr::new(target.real, check.port.unwrap_or(target.port));
                Some(Http {
                    client: clients.get(&target, &check, h)?,
                    url: url(at, h)?,
                    method: if h.method == "HEAD" {
                        reqwest::Method::HEAD
                    } else {
                        reqwest::Method::GET
                    },
                })
            }
            _ => None,
        };
        Ok(Prober {
            target,
            check,
            http,
        })
    }

    /// Where the check connects: the real's address, on the check's port or the real's.
    fn at(&self) -> SocketAddr {
        SocketAddr::new(
            self.target.real,
            self.check.port.unwrap_or(self.target.port),
        )
    }

    /// What the check does, for its errors.
    fn describe(&self) -> String {
        let at = self.at();
        match (&self.check.probe, &self.http) {
            (ProbeSpec::Http(h), Some(c)) => format!("{} {}", h.method, c.url),
            (ProbeSpec::Tcp | ProbeSpec::Http(_), _) => format!("connect to {at}"),
            (ProbeSpec::Udp(_), _) => format!("udp to {at}"),
            (ProbeSpec::Dns(d), _) => format!("dns {} {} to {at}", d.qtype, d.name),
            (ProbeSpec::Exec(e), _) => e.argv.first().cloned().unwrap_or_default(),
        }
    }

    /// One check, ended by its timeout whatever the real does.
    pub async fn run(&self) -> Outcome {
        let limit = Duration::from_secs(u64::from(self.check.timeout));
        let at = self.at();
        let work = async {
            match &self.check.probe {
                ProbeSpec::Tcp => tcp(at).await,
                ProbeSpec::Http(h) => match &self.http {
                    Some(client) => http(client, h).await,
                    None => Outcome::Failed("no HTTP client".into()),
                },
                ProbeSpec::Udp(u) => udp(at, u, limit).await,
                ProbeSpec::Dns(d) => dns(at, d).await,
                // Kills its command at the limit itself: a dropped future would leave the
                // command's children running.
                ProbeSpec::Exec(e) => exec(&self.target, at, e, limit).await,
            }
        };
        // An exec check kills its command at the limit itself and reports it; the outer
        // bound only backs that up.
        let bound = match self.check.probe {
            ProbeSpec::Exec(_) => limit + Duration::from_millis(500),
            _ => limit,
        };
        match tokio::time::timeout(bound, work).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(format!(
                "{}: no answer within {} s",
                self.describe(),
                self.check.timeout
            )),
        }
    }
}

async fn tcp(at: SocketAddr) -> Outcome {
    match tokio::net::TcpStream::connect(at).await {
        Ok(_) => Outcome::Healthy { weight: None },
        Err(e) => Outcome::Failed(format!("connect to {at}: {e}")),
    }
}

/// The HTTP clients of the checks, shared by every check with the same TLS settings (a
/// client holds its TLS configuration and connector: about 100 KiB). A check with an
/// SNI name has a client of its own, which pins that name to its real's address.
#[derive(Default)]
pub struct Clients {
    made: std::collections::HashMap<(Option<TlsCheck>, Option<SocketAddr>), reqwest::Client>,
}

impl Clients {
    fn get(
        &mut self,
        target: &Target,
        check: &Check,
        h: &HttpCheck,
    ) -> Result<reqwest::Client, String> {
        let pinned = h
            .tls
            .as_ref()
            .and_then(|t| t.sni.as_ref())
            .map(|_| SocketAddr::new(target.real, check.port.unwrap_or(target.port)));
        let key = (h.tls.clone(), pinned);
        if let Some(c) = self.made.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .http1_only()
            .user_agent(concat!(
                "xdpvs/",
                env!("CARGO_PKG_VERSION"),
                " health check"
            ));
        if let Some(tls) = &h.tls {
            b = b.tls_backend_preconfigured(tls_config(tls)?);
            if let (Some(sni), Some(at)) = (&tls.sni, pinned) {
                // The URL names the server; this pins the name to the real's address.
                b = b.resolve(sni, at);
            }
        }
        let client = b.build().map_err(|e| format!("HTTP client: {e}"))?;
        self.made.insert(key, client.clone());
        Ok(client)
    }

    /// Drops the clients no check holds any more.
    pub fn prune(&mut self) {
        // A client is an Arc inside: held by a check, it lives on in the check.
        self.made.clear();
    }
}

/// The TLS client of an `https` check: the real's certificate verified or not, ALPN
/// `http/1.1`.
fn tls_config(tls: &TlsCheck) -> Result<rustls::ClientConfig, String> {
    #[allow(deprecated)] // ring: see `Checkers::new`.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else if let Some(ca) = &tls.ca {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("reading {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("reading {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate in {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no certificate", ca.display()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| format!("the system's certificate roots: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `tls_verify: false`: any certificate is taken (the handshake's signatures are still
/// checked), as keepalived's SSL_GET does without a CA.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The URL an HTTP check asks for: the real's address, or the SNI name pinned to it.
fn url(at: SocketAddr, h: &HttpCheck) -> Result<reqwest::Url, String> {
    let scheme = if h.tls.is_some() { "https" } else { "http" };
    let host = match h.tls.as_ref().and_then(|t| t.sni.as_deref()) {
        Some(name) => name.to_owned(),
        None => match at.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        },
    };
    let text = format!("{scheme}://{host}:{}{}", at.port(), h.path);
    reqwest::Url::parse(&text).map_err(|e| format!("{text}: {e}"))
}

async fn http(c: &Http, h: &HttpCheck) -> Outcome {
    let url = &c.url;
    let mut request = c
        .client
        .request(c.method.clone(), url.clone())
        .header("connection", "close");
    if let Some(host) = &h.host {
        request = request.header("host", host);
    }
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{} {url}: {}", h.method, error_chain(&e))),
    };
    let status = response.status().as_u16();
    let within = |ranges: &[(u16, u16)]| ranges.iter().any(|&(a, b)| (a..=b).contains(&status));
    if within(&h.drain) {
        return Outcome::Drain(format!("{} {url}: status {status} (drain)", h.method));
    }
    if !within(&h.expect) {
        return Outcome::Failed(format!("{} {url}: status {status}", h.method));
    }
    let Some(wanted) = &h.body else {
        return Outcome::Healthy { weight: None };
    };
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                // Exactly the first MAX_BODY bytes are searched, however the body is
                // cut into chunks; each chunk is searched once (with the needle's
                // length before it, for a match across the cut).
                let from = body.len().saturating_sub(wanted.len() - 1);
                let room = MAX_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if find(&body[from..], wanted.as_bytes()) {
                    return Outcome::Healthy { weight: None };
                }
                if body.len() == MAX_BODY {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Outcome::Failed(format!("{} {url}: body: {}", h.method, error_chain(&e)));
            }
        }
    }
    Outcome::Failed(format!(
        "{} {url}: status {status}, body without {wanted:?} (first {} bytes read)",
        h.method,
        body.len()
    ))
}

/// An error with its causes, which carry the detail (refused, reset, certificate).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A UDP socket connected to `at`, so an ICMP port unreachable comes back as an error.
async fn udp_socket(at: SocketAddr) -> Result<tokio::net::UdpSocket, String> {
    let local: SocketAddr = if at.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("udp socket: {e}"))?;
    socket
        .connect(at)
        .await
        .map_err(|e| format!("udp to {at}: {e}"))?;
    Ok(socket)
}

async fn udp(at: SocketAddr, u: &UdpCheck, limit: Duration) -> Outcome {
    let socket = match udp_socket(at).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    if let Err(e) = socket.send(&u.payload).await {
        return Outcome::Failed(format!("udp to {at}: {e}"));
    }
    let mut buf = vec![0u8; 65_536];
    if !u.require_reply {
        // Silence is healthy; an ICMP error (seen as a refused receive) is not. Waits
        // the timeout, as keepalived does.
        return match tokio::time::timeout(limit, socket.recv(&mut buf)).await {
            Err(_) | Ok(Ok(_)) => Outcome::Healthy { weight: None },
            Ok(Err(e)) => Outcome::Failed(format!("udp to {at}: {e}")),
        };
    }
    let n = match socket.recv(&mut buf).await {
        Ok(n) => n,
        Err(e) => return Outcome::Failed(format!("udp to {at}: {e}")),
    };
    let reply = &buf[..n];
    if n < u.min_reply || n > u.max_reply {
        return Outcome::Failed(format!(
            "udp to {at}: a {n}-byte reply, outside {}..={}",
            u.min_reply, u.max_reply
        ));
    }
    if !reply.starts_with(&u.reply) {
        return Outcome::Failed(format!(
            "udp to {at}: the reply does not start with the expected {} bytes",
            u.reply.len()
        ));
    }
    Outcome::Healthy { weight: None }
}

async fn dns(at: SocketAddr, d: &DnsCheck) -> Outcome {
    use hickory_proto::{
        op::{Message, Query, ResponseCode},
        rr::{Name, RecordType},
    };
    let fail = |m: String| Outcome::Failed(format!("dns {} {} to {at}: {m}", d.qtype, d.name));
    let (Ok(name), Ok(qtype)) = (Name::from_ascii(&d.name), d.qtype.parse::<RecordType>()) else {
        return fail("not a query".into());
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, qtype));
    let Ok(bytes) = query.to_vec() else {
        return fail("the query cannot be encoded".into());
    };
    let socket = match udp_socket(at).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Err(e) = socket.send(&bytes).await {
        return fail(e.to_string());
    }
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => return fail(e.to_string()),
        };
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            return fail(format!("a {n}-byte reply that is not a DNS message"));
        };
        // Another query's late answer: keep waiting for ours. (A server that echoes
        // the query back sends a query, not an answer.)
        if answer.metadata.id != query.metadata.id
            || answer.metadata.message_type != hickory_proto::op::MessageType::Response
        {
            continue;
        }
        if answer.metadata.response_code != ResponseCode::NoError {
            return fail(format!("answered {}", answer.metadata.response_code));
        }
        if answer.answers.is_empty() {
            return fail("answered with no record".into());
        }
        return Outcome::Healthy { weight: None };
    }
}

async fn exec(target: &Target, at: SocketAddr, e: &ExecCheck, limit: Duration) -> Outcome {
    use tokio::io::AsyncReadExt as _;
    let Some((program, args)) = e.argv.split_first() else {
        return Outcome::Failed("no command".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("XDPVS_REAL_ADDRESS", target.real.to_string())
        .env("XDPVS_REAL_PORT", target.port.to_string())
        .env("XDPVS_CHECK_PORT", at.port().to_string())
        .env("XDPVS_VIRTUAL_ADDRESS", target.vip.to_string())
        .env("XDPVS_VIRTUAL_PORT", target.vport.to_string())
        .env("XDPVS_PROTOCOL", target.protocol.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so the timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(err) => return Outcome::Failed(format!("starting {program}: {err}")),
    };
    // Whatever way this check ends (its command done, its timeout, its task aborted
    // by a reload or a stop), the group goes with it: nothing a check started outlives it.
    let _group = child.id().and_then(|p| i32::try_from(p).ok()).map(Group);
    let mut stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(MAX_STDERR as u64).read_to_end(&mut text).await;
            // The rest is drained, so a talkative command never blocks on a full pipe.
            let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
        }
        text
    });
    let _reader = AbortOnDrop(reader.abort_handle());
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            return Outcome::Failed(format!(
                "{program} did not end within {} s; killed",
                limit.as_secs()
            ));
        }
    };
    // What it wrote, given a moment: a helper it left behind may hold the pipe open.
    let text = match tokio::time::timeout(Duration::from_millis(100), reader).await {
        Ok(Ok(text)) => text,
        _ => Vec::new(),
    };
    let status = match status {
        Ok(s) => s,
        Err(err) => return Outcome::Failed(format!("{program}: {err}")),
    };
    let said = String::from_utf8_lossy(&text);
    let said = said
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    match status.code() {
        Some(0) => Outcome::Healthy { weight: None },
        Some(code @ 2..=255) if e.dynamic => Outcome::Healthy {
            weight: Some(code as u32 - 2),
        },
        Some(code) => Outcome::Failed(if said.is_empty() {
            format!("{program} exited {code}")
        } else {
            format!("{program} exited {code}: {said}")
        }),
        None => Outcome::Failed(format!("{program} ended by a signal")),
    }
}

/// An exec check's process group, killed when the check ends.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this check started (the group's id is
        // its leader's pid, not reused while the group has members).
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
