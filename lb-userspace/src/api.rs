//! The runtime API: JSON over HTTP/1.1 on a Unix socket, served by the daemon (axum) and
//! asked by the `xdpvs` commands (hyper's client). The server only translates: each
//! request becomes a [`Request`] the running director handles in its own loop, one at a
//! time, so a change is validated, written and applied before the next is read.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/services` | services, reals, counters, connection counts |
//! | `GET /v1/connections` | the connection table's live entries |
//! | `GET /v1/config` | the configuration as YAML (`xdpvs save`) |
//! | `PUT /v1/config` | replace the configuration (`xdpvs restore`) |
//! | `POST /v1/reload` | re-read the file (as SIGHUP) |
//! | `POST/PATCH/DELETE /v1/services/{proto}/{addr}/{port}` | add, edit, delete a service |
//! | `POST/PATCH/DELETE /v1/services/{proto}/{addr}/{port}/reals/{addr}/{port}` | the same for a real |

use std::{
    net::IpAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::{MAX_FILE_BYTES, Protocol},
    document::{RealChange, ServiceFields, ServiceId},
};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/xdpvs/xdpvs.sock";

/// What a client asked the director.
#[derive(Debug)]
pub enum Request {
    List,
    Metrics,
    Connections,
    Save,
    Restore(String),
    Reload,
    AddService(ServiceId, ServiceFields),
    EditService(ServiceId, ServiceFields),
    DeleteService(ServiceId),
    AddReal(ServiceId, IpAddr, Option<u16>, RealChange),
    EditReal(ServiceId, IpAddr, Option<u16>, RealChange),
    DeleteReal(ServiceId, IpAddr, Option<u16>),
}

impl Request {
    /// The request for a log line (a configuration's text is not repeated).
    pub fn describe(&self) -> String {
        match self {
            Request::Restore(text) => format!("restore of {} bytes", text.len()),
            other => format!("{other:?}"),
        }
    }
}

/// Why a request was refused: an HTTP status and one line for the operator.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// The director's answer: JSON, or YAML text for `Save`.
pub enum Answer {
    Json(serde_json::Value),
    Text(String),
    /// Prometheus text exposition.
    Metrics(String),
}

/// A request and where its answer goes.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Answer, Refusal>>,
}

/// The body of every error: `{"error": "..."}`.
#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if calls.send(Call { request, reply }).await.is_err() {
        return Refusal::new(503, "the director is stopping").into_response();
    }
    match answer.await {
        Ok(Ok(Answer::Json(v))) => Json(v).into_response(),
        Ok(Ok(Answer::Text(t))) => ([("content-type", "application/yaml")], t).into_response(),
        Ok(Ok(Answer::Metrics(t))) => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            t,
        )
            .into_response(),
        Ok(Err(refusal)) => refusal.into_response(),
        Err(_) => Refusal::new(503, "the director is stopping").into_response(),
    }
}

fn service_id(protocol: &str, address: &str, port: &str) -> Result<ServiceId, Refusal> {
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(Refusal::new(400, format!("protocol {other:?}: tcp or udp"))),
    };
    Ok(ServiceId {
        protocol,
        address: parse_address(address)?,
        port: parse_port(port)?,
    })
}

fn parse_address(text: &str) -> Result<IpAddr, Refusal> {
    text.parse()
        .map_err(|_| Refusal::new(400, format!("{text:?} is not an IP address")))
}

fn parse_port(text: &str) -> Result<u16, Refusal> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Refusal::new(400, format!("port {text:?}: 1 to 65535"))),
    }
}

/// A JSON body, or a clear refusal (an empty body is `{}`).
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &Bytes) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| Refusal::new(400, format!("request body: {e}")))
}

type Calls = State<mpsc::Sender<Call>>;

async fn on_service(
    State(calls): Calls,
    method: axum::http::Method,
    UrlPath((proto, addr, port)): UrlPath<(String, String, String)>,
    bytes: Bytes,
) -> Response {
    let request = (|| -> Result<Request, Refusal> {
        let id = service_id(&proto, &addr, &port)?;
        Ok(match method.as_str() {
            "POST" => Request::AddService(id, body(&bytes)?),
            "PATCH" => Request::EditService(id, body(&bytes)?),
            _ => Request::DeleteService(id),
        })
    })();
    match request {
        Ok(r) => ask(&calls, r).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn on_real(
    State(calls): Calls,
    method: axum::http::Method,
    UrlPath((proto, addr, port, raddr, rport)): UrlPath<(String, String, String, String, String)>,
    bytes: Bytes,
) -> Response {
    let request = (|| -> Result<Request, Refusal> {
        let id = service_id(&proto, &addr, &port)?;
        let real = parse_address(&raddr)?;
        let rport = parse_port(&rport)?;
        // A real on the service's port is written without one, as operators write it.
        let rport = (rport != id.port).then_some(rport);
        Ok(match method.as_str() {
            "POST" => Request::AddReal(id, real, rport, body(&bytes)?),
            "PATCH" => Request::EditReal(id, real, rport, body(&bytes)?),
            _ => Request::DeleteReal(id, real, rport),
        })
    })();
    match request {
        Ok(r) => ask(&calls, r).await,
        Err(refusal) => refusal.into_response(),
    }
}

fn router(calls: mpsc::Sender<Call>) -> Router {
    Router::new()
        .route(
            "/v1/services",
            get(|State(c): Calls| async move { ask(&c, Request::List).await }),
        )
        .route(
            "/v1/connections",
            get(|State(c): Calls| async move { ask(&c, Request::Connections).await }),
        )
        .route(
            "/v1/config",
            get(|State(c): Calls| async move { ask(&c, Request::Save).await }).put(
                |State(c): Calls, bytes: Bytes| async move {
                    match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => ask(&c, Request::Restore(text)).await,
                        Err(e) => Refusal::new(400, format!("the configuration is not UTF-8: {e}"))
                            .into_response(),
                    }
                },
            ),
        )
        .route(
            "/v1/reload",
            post(|State(c): Calls| async move { ask(&c, Request::Reload).await }),
        )
        .route(
            "/v1/services/{proto}/{addr}/{port}",
            post(on_service).patch(on_service).delete(on_service),
        )
        .route(
            "/v1/services/{proto}/{addr}/{port}/reals/{raddr}/{rport}",
            post(on_real).patch(on_real).delete(on_real),
        )
        .fallback(|| async { Refusal::new(404, "no such API path (see docs/API.md)") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_FILE_BYTES as usize))
        .with_state(calls)
}

/// Gives the refusals axum makes itself (a body over the limit, a wrong method, a bad
/// path parameter) the API's `{"error": ...}` body.
async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status().as_u16() < 400 || is_json {
        return response;
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_owned();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase();
    }
    Refusal::new(status.as_u16(), message).into_response()
}

/// Why the socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsafe place for the API socket: {why}; use a directory only root can write")]
    Unsafe { path: PathBuf, why: String },
    #[error("{path}: another daemon serves this socket (in another network namespace?)")]
    InUse { path: PathBuf },
}

/// The directory must be root's and writable by nobody else, so no other user can put
/// their own socket (or a link) in its place.
fn check_directory(path: &Path) -> Result<(), SocketError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let unsafe_ = |why: String| SocketError::Unsafe {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SocketError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_(format!("{} is not a directory", dir.display())));
    }
    if meta.uid() != 0 {
        return Err(unsafe_(format!(
            "{} belongs to uid {}",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_(format!(
            "{} is writable by others (mode {:o})",
            dir.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// Binds the API socket (mode 0600) in a safe directory, replacing a stale one.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    check_directory(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(SocketError::Unsafe {
                    path: path.to_owned(),
                    why: "a file that is not a socket is in the way".into(),
                });
            }
            // Someone answering there is another daemon; nobody: a stale socket.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Created 0600 from the start: no window in which another user could connect.
    // SAFETY: umask(2) only swaps the process's mask; restored right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let listener = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::UnixListener, calls: mpsc::Sender<Call>) {
    if let Err(e) = axum::serve(listener, router(calls)).await {
        log::error!("the API server stopped: {e}");
    }
}

/// Serves `GET /metrics` on `listener` (TCP) until the process ends.
pub async fn serve_metrics(listener: tokio::net::TcpListener, calls: mpsc::Sender<Call>) {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(c): Calls| async move { ask(&c, Request::Metrics).await }),
        )
        .fallback(|| async { Refusal::new(404, "metrics are at /metrics") })
        .with_state(calls);
    if let Err(e) = axum::serve(listener, router).await {
        log::error!("the metrics server stopped: {e}");
    }
}

/// A client's view of an answer: the status and the body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The error line of a refusal (or the body as text).
    pub fn error(&self) -> String {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// Sends one request to the daemon's socket.
pub async fn call(socket: &Path, method: &str, path: &str, body: Vec<u8>) -> Result<Reply, String> {
    use http_body_util::{BodyExt as _, Full};
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is `xdpvs daemon` running? --socket \
             chooses another path)",
            socket.display()
        )
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "xdpvs")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?
        .to_bytes()
        .to_vec();
    Ok(Reply { status, body })
}
