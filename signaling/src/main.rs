//! `ferry-signaling`: runs the Ferry signaling server and web app.
//!
//! Settings come from, in rising precedence: the built-in defaults, a TOML
//! file (`--config`), environment variables (`FERRY_*`), and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_signaling::Config;
use ferry_signaling::settings::FileSettings;
use tracing_subscriber::EnvFilter;

/// Ferry signaling server: introduces peers to each other and serves the web app.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML settings file (see the docs for its keys); flags and variables win over it.
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "FERRY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Folder holding index.html and the built wasm in pkg/ [default: the source tree's www/].
    #[arg(long, env = "FERRY_WEB_ROOT")]
    web_root: Option<PathBuf>,
    /// Most peers in one room [default: 8].
    #[arg(long, env = "FERRY_MAX_ROOM_SIZE")]
    max_room_size: Option<usize>,
    /// Heartbeat interval in milliseconds; silent connections are dropped after three [default: 5000].
    #[arg(long, env = "FERRY_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Milliseconds the seat of a lost connection is kept for its resume token; 0 announces the leave at once [default: 15000].
    #[arg(long, env = "FERRY_RECONNECT_GRACE_MS")]
    reconnect_grace_ms: Option<u64>,
    /// STUN URL handed to peers; repeat for more [default: none].
    #[arg(long = "stun", env = "FERRY_STUN", value_delimiter = ',')]
    stun_urls: Vec<String>,
    /// TURN URL handed to peers with short-lived credentials; repeat for more [default: none].
    #[arg(long = "turn", env = "FERRY_TURN", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// Secret shared with the TURN server (coturn's static-auth-secret) [default: none, no TURN].
    #[arg(long, env = "FERRY_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Lifetime of TURN credentials in seconds [default: 21600].
    #[arg(long, env = "FERRY_TURN_TTL_SECS")]
    turn_ttl_secs: Option<u64>,
    /// Most rooms at once [default: 50000].
    #[arg(long, env = "FERRY_MAX_ROOMS")]
    max_rooms: Option<usize>,
    /// Messages per second per connection, on average [default: 50].
    #[arg(long, env = "FERRY_MESSAGES_PER_SEC")]
    messages_per_sec: Option<u32>,
    /// Messages per connection in a burst [default: 200].
    #[arg(long, env = "FERRY_MESSAGE_BURST")]
    message_burst: Option<u32>,
    /// New connections per client address per minute; 0 for no limit [default: 120].
    #[arg(long, env = "FERRY_CONNECTIONS_PER_IP_PER_MIN")]
    connections_per_ip_per_min: Option<u32>,
    /// Milliseconds a new connection has to join a room [default: 60000].
    #[arg(long, env = "FERRY_JOIN_TIMEOUT_MS")]
    join_timeout_ms: Option<u64>,
    /// Milliseconds a client may take to accept a frame before it is dropped as too slow [default: 10000].
    #[arg(long, env = "FERRY_WRITE_TIMEOUT_MS")]
    write_timeout_ms: Option<u64>,
    /// Origin allowed to open a signaling connection; repeat for more [default: any].
    #[arg(
        long = "allow-origin",
        env = "FERRY_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Redis URL shared by several instances, e.g. redis://10.0.0.5:6379 [default: none, rooms stay in this process].
    #[arg(long, env = "FERRY_REDIS")]
    redis: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "FERRY_LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn config(self) -> anyhow::Result<Config> {
        let mut c = Config::default();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            FileSettings::parse(&text)
                .with_context(|| format!("in {}", path.display()))?
                .apply(&mut c);
        }
        macro_rules! set {
            ($($dst:expr => $src:expr),* $(,)?) => { $(if let Some(v) = $src { $dst = v; })* };
        }
        let non_empty = |v: Vec<String>| (!v.is_empty()).then_some(v);
        set! {
            c.listen => self.listen,
            c.web_root => self.web_root,
            c.max_room_size => self.max_room_size,
            c.heartbeat => self.heartbeat_ms.map(Duration::from_millis),
            c.reconnect_grace => self.reconnect_grace_ms.map(Duration::from_millis),
            c.ice.stun_urls => non_empty(self.stun_urls),
            c.ice.turn_urls => non_empty(self.turn_urls),
            c.ice.turn_secret => self.turn_secret.map(Some),
            c.ice.turn_ttl => self.turn_ttl_secs.map(Duration::from_secs),
            c.limits.max_rooms => self.max_rooms,
            c.limits.messages_per_sec => self.messages_per_sec,
            c.limits.message_burst => self.message_burst,
            c.limits.connections_per_ip_per_min => self.connections_per_ip_per_min,
            c.limits.join_timeout => self.join_timeout_ms.map(Duration::from_millis),
            c.limits.write_timeout => self.write_timeout_ms.map(Duration::from_millis),
            c.limits.allowed_origins => non_empty(self.allowed_origins),
            c.redis => self.redis.map(Some),
        }
        c.max_room_size = c.max_room_size.max(1);
        c.heartbeat = c.heartbeat.max(Duration::from_millis(100));
        if !c.ice.turn_urls.is_empty() && c.ice.turn_secret.is_none() {
            anyhow::bail!(
                "TURN URLs are set but no TURN secret: set --turn-secret (coturn's static-auth-secret)"
            );
        }
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = args.config()?;
    ferry_signaling::validate(&config)?;
    if !config.web_root.join("pkg").exists() {
        tracing::warn!(web_root = %config.web_root.display(), "no pkg/ in the web root: build the wasm with `cargo xtask serve`");
    }
    let listener = ferry_signaling::listen(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("Ferry is running at http://{addr}/");
    tracing::info!(%addr, turn = !config.ice.turn_urls.is_empty(), "listening");
    ferry_signaling::serve(listener, config, async {
        shutdown_signal().await;
        tracing::info!("shutting down: telling every client to reconnect");
    })
    .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers and containers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
