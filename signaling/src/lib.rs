//! The Ferry signaling server.
//!
//! # Design
//!
//! The server is used **only for introductions**. A peer opens a WebSocket
//! at `/ws`, sends `join` with a room code, and the server answers `joined`
//! with a fresh peer id and the members already there. From then on the
//! server relays `signal` frames (SDP offers and answers, ICE candidates)
//! between members of the same room, and announces arrivals and departures.
//! No file, chat or media byte ever passes through it: those travel on
//! WebRTC between the peers.
//!
//! [`app`] builds the whole service as an axum [`Router`], separate from
//! `main`, so tests can serve it on port 0. Each WebSocket is one task that
//! owns its socket and a bounded outbound queue (`outbox`, which allocates
//! nothing until a frame is queued: most connections sit idle); the task
//! writes whatever is queued with one flush. The [`RoomRegistry`] maps
//! rooms to those queues under one short-held mutex. With `--redis`, calls
//! into the cluster are boxed so that their large futures do not make
//! every connection's task as large. Bad input never panics
//! and never affects other connections: it gets an `error` frame with a
//! stable code (see [`ferry_protocol::ErrorCode`]), and only errors that make
//! the connection useless close it. Heartbeats (WebSocket pings, which
//! browsers answer by themselves) drop dead connections within
//! `3 × heartbeat`, and the room is told `peer_left`; a connection that
//! sent anything within the last interval is not pinged, so busy
//! connections cost no heartbeat traffic.
//!
//! The same server also serves the web app (`www/` with the built wasm in
//! `www/pkg/`) and `/healthz`.
#![forbid(unsafe_code)]

mod cluster;
mod connection;
pub mod ice;
pub mod limits;
mod metrics;
mod outbox;
mod rooms;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ferry_protocol::{PeerId, ProtocolError};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

pub use crate::ice::IceConfig;
use crate::limits::ConnectionRate;
pub use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::rooms::RoomRegistry;

/// Everything that can go wrong in the server, from a peer's frame to the
/// listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The room already has the maximum number of members.
    #[error("the room is full ({0} peers at most)")]
    RoomFull(usize),
    /// A signal named a peer that is not in the sender's room.
    #[error("no peer {0} in this room")]
    UnknownPeer(PeerId),
    /// The recipient's outbound queue is full; it is not keeping up.
    #[error("peer {0} is not keeping up; try again")]
    RecipientBusy(PeerId),
    /// The room has a password and the join did not give it.
    #[error("this room needs its password; ask whoever shared the link")]
    WrongPassword,
    /// The server already holds its maximum number of rooms.
    #[error("this server holds {0} rooms, its maximum; try again later")]
    TooManyRooms(usize),
    /// A configuration file or value is not valid.
    #[error("bad configuration: {0}")]
    Config(String),
    /// Binding or serving the listener failed.
    #[error("server I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Server settings. [`Config::default`] is the embedded default: listen on
/// `127.0.0.1:8080`, serve `www/` from the source tree, rooms of 8.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder with `index.html` and the built wasm under `pkg/`.
    pub web_root: PathBuf,
    /// Most members a room may hold.
    pub max_room_size: usize,
    /// Heartbeat interval: a connection silent for a whole interval is
    /// pinged, and one silent for three intervals is dropped.
    pub heartbeat: Duration,
    /// Largest text frame accepted, in bytes; larger ones get `frame_too_large`.
    pub max_frame_bytes: usize,
    /// How long the seat of a lost connection is kept for its resume
    /// token; zero to announce `peer_left` at once.
    pub reconnect_grace: Duration,
    /// STUN and TURN servers handed to peers on join.
    pub ice: IceConfig,
    /// Abuse limits.
    pub limits: Limits,
    /// Redis URL shared by several instances (`redis://host:6379`); `None`
    /// keeps every room in this process.
    pub redis: Option<String>,
}

/// The source tree's `www/` folder, used when no web root is configured.
pub const DEFAULT_WEB_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../www");

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_root: PathBuf::from(DEFAULT_WEB_ROOT),
            max_room_size: 8,
            heartbeat: Duration::from_secs(5),
            max_frame_bytes: ferry_protocol::MAX_FRAME_BYTES,
            reconnect_grace: Duration::from_secs(15),
            ice: IceConfig {
                turn_ttl: Duration::from_secs(6 * 3600),
                ..IceConfig::default()
            },
            limits: Limits::default(),
            redis: None,
        }
    }
}

/// Shared state of one server.
pub(crate) struct AppState {
    config: Config,
    rooms: Arc<RoomRegistry>,
    /// The link to other instances, with `--redis`.
    cluster: Option<Arc<cluster::Cluster>>,
    metrics: Metrics,
    connection_rate: ConnectionRate,
    /// Flips to true when the server begins shutting down.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Starts a graceful shutdown of every [`app`] built with its receiver:
/// each connection is told `going_away` and closed.
#[derive(Debug)]
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Shutdown {
    /// A trigger and the receiver to build an app with.
    pub fn new() -> (Self, tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Self(tx), rx)
    }

    /// Tells every connection to reconnect elsewhere.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Checks what [`app`] cannot report: for now, that the Redis URL parses.
pub fn validate(config: &Config) -> Result<(), Error> {
    if let Some(url) = &config.redis {
        cluster::Cluster::new(url, config.max_room_size)?;
    }
    Ok(())
}

/// Builds the service: `/ws` for signaling, `/healthz`, `/metrics`, and the
/// web app. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`
/// for per-address limits (without it they are skipped).
pub fn app(config: Config) -> Router {
    app_with_shutdown(config, Shutdown::new().1)
}

/// [`app`], with connections that end when `shutdown` flips to true.
pub fn app_with_shutdown(config: Config, shutdown: tokio::sync::watch::Receiver<bool>) -> Router {
    let serve_dir = ServeDir::new(&config.web_root).append_index_html_on_directories(true);
    let rooms = Arc::new(RoomRegistry::new(
        config.max_room_size,
        config.limits.max_rooms,
    ));
    let cluster = config.redis.as_deref().and_then(|url| {
        match cluster::Cluster::new(url, config.max_room_size) {
            Ok(c) => {
                let c = Arc::new(c);
                tokio::spawn(c.clone().run(rooms.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "not joining a cluster");
                None
            }
        }
    });
    let state = Arc::new(AppState {
        rooms,
        cluster,
        metrics: Metrics::new(),
        connection_rate: ConnectionRate::new(config.limits.connections_per_ip_per_min),
        shutdown,
        config,
    });
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback_service(serve_dir)
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        .with_state(state)
}

/// Connections the kernel queues for `accept`, at most (Linux caps it at
/// `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with a backlog of [`LISTEN_BACKLOG`]. The usual 128
/// overflows when a few hundred clients connect at once, as they do when
/// an instance restarts and its clients come back: the kernel then drops
/// their SYNs and each of them waits a second to try again.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves [`app`] on `listener` until `shutdown` completes; then every
/// connection is told `going_away` and closed, and this returns once they
/// are gone.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    use axum::serve::ListenerExt;
    // Signaling frames are small and latency-bound: never wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let (trigger, rx) = Shutdown::new();
    let app = app_with_shutdown(config, rx);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        trigger.trigger();
    })
    .await?;
    Ok(())
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(state.rooms.room_count(), state.rooms.member_count()),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    format!(
        "ok rooms={} peers={}\n",
        state.rooms.room_count(),
        state.rooms.member_count()
    )
}

/// Hard cap enforced by the WebSocket layer itself. Frames between
/// `max_frame_bytes` and this size get a `frame_too_large` error frame;
/// beyond it the WebSocket layer rejects the frame and the connection closes.
const HARD_MESSAGE_CAP: usize = 1024 * 1024;

async fn ws_handler(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    State(state): State<Arc<AppState>>,
) -> Response {
    let allowed = &state.config.limits.allowed_origins;
    if !allowed.is_empty() {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("");
        if !allowed.iter().any(|a| a == origin) {
            state.metrics.reject("origin");
            tracing::info!(
                origin,
                "refused a WebSocket from an origin not on the allowlist"
            );
            return (
                StatusCode::FORBIDDEN,
                "this page's origin may not use this signaling server\n",
            )
                .into_response();
        }
    }
    if let Some(Extension(ConnectInfo(addr))) = peer
        && !state
            .connection_rate
            .admit(addr.ip(), tokio::time::Instant::now())
    {
        state.metrics.reject("ip_rate");
        tracing::info!(ip = %addr.ip(), "too many new connections from one address");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            "too many new connections from this address; wait a minute\n",
        )
            .into_response();
    }
    ws.max_message_size(HARD_MESSAGE_CAP)
        .max_frame_size(HARD_MESSAGE_CAP)
        // Signaling frames are small; the read buffer is most of an idle
        // connection's memory (4 KiB: 13 KiB per connection; 512 B: 5.8 KiB,
        // measured by `cargo xtask bench signaling`). Larger frames still
        // arrive, in more reads.
        .read_buffer_size(512)
        .write_buffer_size(0)
        .on_upgrade(move |socket| connection::run(socket, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections complete in the kernel before they are accepted, as long
    /// as the backlog has room: with the usual 128, the rest of a burst of
    /// 600 would have their SYNs dropped and wait a second to retry.
    #[tokio::test]
    async fn a_burst_of_connections_fits_the_listen_backlog() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..600).map(|_| {
            tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures_util::future::join_all(connects).await;
        let done = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(done, 600, "connections left waiting while none is accepted");
        drop(listener);
    }
}
