//! `ferry-signaling`: runs the Ferry signaling server and web app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_signaling::{Config, DEFAULT_WEB_ROOT};
use tracing_subscriber::EnvFilter;

/// Ferry signaling server: introduces peers to each other and serves the web app.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder holding index.html and the built wasm in pkg/.
    #[arg(long, env = "FERRY_WEB_ROOT", default_value = DEFAULT_WEB_ROOT)]
    web_root: PathBuf,
    /// Most peers in one room.
    #[arg(long, env = "FERRY_MAX_ROOM_SIZE", default_value_t = 8)]
    max_room_size: usize,
    /// Heartbeat interval in milliseconds; silent connections are dropped after three.
    #[arg(long, env = "FERRY_HEARTBEAT_MS", default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "FERRY_LOG_JSON")]
    log_json: bool,
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
    let config = Config {
        listen: args.listen,
        web_root: args.web_root,
        max_room_size: args.max_room_size.max(1),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(100)),
        ..Config::default()
    };
    if !config.web_root.join("pkg").exists() {
        tracing::warn!(web_root = %config.web_root.display(), "no pkg/ in the web root: build the wasm with `cargo xtask serve`");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("Ferry is running at http://{addr}/");
    tracing::info!(%addr, "listening");
    ferry_signaling::serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
