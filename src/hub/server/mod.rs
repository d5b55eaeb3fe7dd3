//! The embedded Hub-compatible server (docs/hub.md, "What the server implements"): axum over the crash-safe
//! on-disk [`store`], speaking LFS and [`xet`], with per-instance limits and [`faults`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), hubsweep::hub::server::ServerError> {
//! use hubsweep::hub::server::{Server, ServerConfig};
//! let handle = Server::start(ServerConfig::new("/tmp/hub".into())).await?;
//! println!("serving on {}", handle.base_url());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod batch;
mod card_api;
mod commit_api;
mod commit_body;
mod disk;
pub mod faults;
mod hashing;
mod lfs_api;
mod limits;
mod paths;

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS.000Z`, the Hub's timestamp shape (also used in ledger records).
pub use paths::iso8601;
mod repo_api;
mod resolve;
mod state;
pub mod store;
mod tree;
pub mod xet;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{delete, get, post, put};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

pub use faults::{Faults, FiredFaults, Stats};
pub use limits::Limits;
use state::{ApiError, AppState, ConnectionKill};

use crate::hub::{RepoType, Token};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Store root (created if missing).
    pub dir: PathBuf,
    /// Address to bind; port 0 picks a free one. Defaults to loopback.
    pub addr: SocketAddr,
    /// Token required for writes; reads are open.
    pub token: Option<Token>,
    /// Limits and thresholds.
    pub limits: Limits,
    /// Faults armed from the start.
    pub faults: Faults,
    /// The URL clients reach this server at (e.g. `http://hubhost:8080` on a cluster), used in
    /// every URL the server hands out; `None` = derived from the bound address. With it, storage
    /// URLs share the Hub origin (clients still withhold the token from them by path).
    pub public_url: Option<String>,
    /// Serve `/_admin/faults` and `/_admin/stats` (tests, benchmarks). Off by default: on a
    /// shared network anyone could otherwise switch faults on (or, with a token, whoever holds it).
    pub admin: bool,
    /// Speak Xet (docs/hub.md, "Xet"): the token routes, the CAS API, the `xet` batch transfer
    /// and the `X-Xet-*` headers of `resolve/`. On by default ([`XET_BY_DEFAULT`]). Off: LFS
    /// only, and the token routes answer 404 with a hint to set `HF_HUB_DISABLE_XET=1`.
    pub xet: bool,
}

impl ServerConfig {
    /// Loopback on a free port, no token, default limits, no faults.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            token: None,
            limits: Limits::default(),
            faults: Faults::default(),
            public_url: None,
            admin: false,
            xet: XET_BY_DEFAULT,
        }
    }
}

/// Whether a server speaks Xet unless told otherwise.
pub const XET_BY_DEFAULT: bool = true;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot bind `{addr}`")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A limit is set to a value the server cannot work with.
    #[error("invalid server limits: {reason}")]
    Limits {
        /// What is wrong.
        reason: String,
    },
    /// The store could not be opened.
    #[error("cannot open the hub store at `{}`", dir.display())]
    Store {
        /// The store root.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: store::StoreError,
    },
}

/// The server entry point.
pub struct Server;

impl Server {
    /// Opens the store, binds, and serves in a background task until the handle is shut down
    /// or dropped.
    pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
        config
            .limits
            .check()
            .map_err(|reason| ServerError::Limits { reason })?;
        let store = store::Store::open(&config.dir).map_err(|source| ServerError::Store {
            dir: config.dir.clone(),
            source,
        })?;
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let (base_url, storage_url) = match &config.public_url {
            Some(url) => (
                url.trim_end_matches('/').to_owned(),
                url.trim_end_matches('/').to_owned(),
            ),
            None => origins(local_addr),
        };
        let state = Arc::new(AppState::new(
            store,
            config.limits,
            config.token.map(|t| t.expose().to_owned()),
            base_url.clone(),
            storage_url,
            faults::FaultState::new(config.faults),
            config.xet,
        ));
        let router = router(state.clone(), config.admin);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, router, shutdown.clone()));
        Ok(ServerHandle {
            local_addr,
            base_url,
            state,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running server. Dropping it stops accepting connections.
pub struct ServerHandle {
    local_addr: SocketAddr,
    base_url: String,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Hub endpoint clients should use (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: Faults) {
        self.state.faults.set(faults);
    }

    /// The fault switches now (one-shot faults that fired are off).
    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    /// Counters of what the server did.
    pub fn stats(&self) -> Stats {
        self.state.faults.stats()
    }

    /// Waits until no xorb or shard upload is being read or validated (e.g. the ones a killed
    /// client had sent whole), so what the CAS stores stops changing.
    pub async fn xet_idle(&self) {
        let all = self.state.limits.xet_uploads_in_flight as u32;
        let _permits = self.state.xet_uploads.acquire_many(all).await;
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Hub origin, and a different origin on the same socket for storage URLs (`localhost`
/// vs `127.0.0.1`), so clients treat storage like a CDN and withhold their token.
fn origins(addr: SocketAddr) -> (String, String) {
    let port = addr.port();
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => (
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ),
        IpAddr::V6(ip) if ip.is_loopback() || ip.is_unspecified() => (
            format!("http://[::1]:{port}"),
            format!("http://localhost:{port}"),
        ),
        ip => (
            format!("http://{}", SocketAddr::new(ip, port)),
            format!("http://{}", SocketAddr::new(ip, port)),
        ),
    }
}

async fn accept_loop(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Without TCP_NODELAY each small request stalls ~40 ms on delayed ACKs (docs/hub.md,
        // "What the server implements").
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let kill = CancellationToken::new();
            let request_kill = kill.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectionKill(request_kill.clone()));
                    let mut router = router.clone();
                    async move { router.call(request.map(axum::body::Body::new)).await }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Fault: drop the socket mid-request without an answer.
                () = kill.cancelled() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

type S = State<Arc<AppState>>;
type P2 = Path<(String, String)>;
type P3 = Path<(String, String, String)>;
type P4 = Path<(String, String, String, String)>;

/// Every route the server answers, in one table (admin routes only with `admin`).
///
/// Long because it is a table: one entry per endpoint, read top to bottom like the protocol's
/// list in docs/hub.md; the handlers are functions of their own.
fn router(state: Arc<AppState>, admin: bool) -> Router {
    let mut app = Router::new()
        .route(
            "/api/repos/create",
            post(|State(s): S, h: HeaderMap, b: axum::body::Bytes| repo_api::create(s, h, b)),
        )
        .route(
            "/api/repos/delete",
            delete(|State(s): S, h: HeaderMap, b: axum::body::Bytes| repo_api::delete(s, h, b)),
        )
        .route(
            "/api/whoami-v2",
            get(|State(s): S, h: HeaderMap| repo_api::whoami(s, h)),
        )
        .route("/_lfs/objects/{oid}/{size}", put(lfs_api::put_object))
        .route(
            "/_lfs/parts/{oid}/{size}/{chunk}/{n}",
            put(lfs_api::put_part),
        )
        .route(
            "/_lfs/complete/{oid}/{size}/{chunk}",
            post(lfs_api::complete),
        )
        .route("/_lfs/blobs/{oid}", get(resolve::blob))
        .route(
            "/api/validate-yaml",
            post(card_api::validate_yaml).layer(axum::extract::DefaultBodyLimit::max(
                card_api::MAX_BODY_BYTES,
            )),
        );
    if admin {
        app = app
            .route(
                "/_admin/faults",
                get(admin_get_faults).put(admin_set_faults),
            )
            .route("/_admin/stats", get(admin_stats));
    }
    for kind in [RepoType::Model, RepoType::Dataset] {
        let api = format!("/api/{}/{{ns}}/{{name}}", kind.api_plural());
        let git = format!("/{}{{ns}}/{{name}}", kind.git_prefix());
        app = app
            .route(
                &api,
                get(move |State(s): S, Path((n, r)): P2, Query(q)| {
                    repo_api::info(s, kind, (n, r, None), q)
                }),
            )
            .route(
                &format!("{api}/revision/{{rev}}"),
                get(move |State(s): S, Path((n, r, v)): P3, Query(q)| {
                    repo_api::info(s, kind, (n, r, Some(v)), q)
                }),
            )
            .route(
                &format!("{api}/preupload/{{rev}}"),
                post(move |State(s): S, p: P3, h: HeaderMap, b| {
                    lfs_api::preupload(s, kind, p.0, h, b)
                }),
            )
            .route(
                &format!("{api}/commit/{{rev}}"),
                post(move |State(s): S, p: P3, Query(q), h: HeaderMap, b| {
                    commit_api::commit(s, kind, p.0, q, h, b)
                }),
            )
            .route(
                &format!("{api}/tree/{{rev}}"),
                get(move |State(s): S, Path((n, r, v)): P3, Query(q)| {
                    repo_api::tree(s, kind, (n, r, v, None), q)
                }),
            )
            .route(
                &format!("{api}/tree/{{rev}}/{{*path}}"),
                get(move |State(s): S, Path((n, r, v, f)): P4, Query(q)| {
                    repo_api::tree(s, kind, (n, r, v, Some(f)), q)
                }),
            )
            .route(
                &format!("{api}/paths-info/{{rev}}"),
                post(move |State(s): S, p: P3, b| repo_api::paths_info(s, kind, p.0, b)),
            )
            .route(
                &format!("{api}/refs"),
                get(move |State(s): S, p: P2, Query(q)| repo_api::refs(s, kind, p.0, q)),
            )
            .route(
                &format!("{api}/commits/{{rev}}"),
                get(move |State(s): S, p: P3| repo_api::commits(s, kind, p.0)),
            )
            .route(
                &format!("{api}/branch/{{branch}}"),
                post(move |State(s): S, p: P3, h: HeaderMap, b| {
                    repo_api::branch(s, kind, p.0, false, h, b)
                })
                .delete(move |State(s): S, p: P3, h: HeaderMap, b| {
                    repo_api::branch(s, kind, p.0, true, h, b)
                }),
            )
            .route(
                &format!("{git}/info/lfs/objects/batch"),
                post(move |State(s): S, p: P2, h: HeaderMap, b| batch::batch(s, kind, p.0, h, b)),
            )
            .route(
                &format!("{git}/info/lfs/objects/verify"),
                post(move |State(s): S, p: P2, h: HeaderMap, b| {
                    lfs_api::verify(s, kind, p.0, h, b)
                }),
            )
            .route(
                &format!("{git}/resolve/{{rev}}/{{*path}}"),
                get(move |State(s): S, p: P4, m: Method, h: HeaderMap| {
                    resolve::resolve(s, kind, p.0, m, h)
                }),
            );
    }
    if state.xet {
        app = xet::routes(app);
    } else {
        for kind in [RepoType::Model, RepoType::Dataset] {
            let api = format!("/api/{}/{{ns}}/{{name}}", kind.api_plural());
            for scope in ["read", "write"] {
                app = app.route(
                    &format!("{api}/xet-{scope}-token/{{rev}}"),
                    get(repo_api::xet_token),
                );
            }
        }
    }
    // Bodies read whole (JSON, forms) are bounded; commits and uploads stream under their own.
    let body_limit = axum::extract::DefaultBodyLimit::max(state.limits.max_json_body);
    app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        declared_body_limits,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        slow_down,
    ))
    .layer(body_limit)
    .with_state(state)
}

/// The `slow_ms` fault (delays every answer), and the count of tokens sent to storage URLs.
async fn slow_down(State(state): S, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_lfs/")
        && request
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION)
    {
        faults::FaultState::bump(&state.faults.storage_requests_with_auth);
    }
    let delay = state.faults.slow_ms();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    next.run(request).await
}

/// Refuses (413) a request whose declared `Content-Length` is more than its route takes, before
/// reading a byte of it: without this a client could declare 300 MB and hold the request open.
/// Object and part uploads are checked against their signed size by their handlers.
async fn declared_body_limits(State(state): S, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared {
        let path = request.uri().path();
        let segments: Vec<&str> = path.split('/').take(7).collect();
        let limit = match segments.as_slice() {
            ["", "_lfs", "objects" | "parts", ..] => None,
            ["", "api", _, _, _, "commit", ..] => Some(state.limits.max_commit_bytes),
            ["", "v1", "xorbs", ..] => Some(state.limits.max_xorb_bytes),
            ["", "v1", "shards"] => Some(state.limits.max_shard_bytes),
            _ => Some(state.limits.max_json_body as u64),
        };
        if let Some(limit) = limit.filter(|limit| declared > *limit) {
            return state::ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {declared} bytes is larger than the {limit} bytes this endpoint takes"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn admin_get_faults(
    State(state): S,
    headers: HeaderMap,
) -> Result<axum::Json<Faults>, ApiError> {
    state.require_write(&headers)?;
    Ok(axum::Json(state.faults.get()))
}

async fn admin_set_faults(
    State(state): S,
    headers: HeaderMap,
    axum::Json(faults): axum::Json<Faults>,
) -> Result<axum::Json<Faults>, ApiError> {
    state.require_write(&headers)?;
    state.faults.set(faults.clone());
    Ok(axum::Json(faults))
}

async fn admin_stats(State(state): S) -> axum::Json<Stats> {
    axum::Json(state.faults.stats())
}
