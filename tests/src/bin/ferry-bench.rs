//! `ferry-bench`: benchmarks that drive real browsers. Run through
//! `cargo xtask bench <name>`, which builds everything and runs this inside a
//! loopback-only network namespace. The last line printed is one JSON object.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_e2e::{Browser, Page, Server};
use serde_json::json;

/// Time for a plain-JavaScript pair of `RTCPeerConnection`s in one page,
/// from construction to the offerer's data channel `open`.
const BASELINE_JS: &str = r#"
const done = arguments[arguments.length - 1];
const t0 = performance.now();
const a = new RTCPeerConnection({ iceServers: [] });
const b = new RTCPeerConnection({ iceServers: [] });
a.onicecandidate = (e) => { if (e.candidate) b.addIceCandidate(e.candidate); };
b.onicecandidate = (e) => { if (e.candidate) a.addIceCandidate(e.candidate); };
const ch = a.createDataChannel("bench", { ordered: true });
b.ondatachannel = () => {};
const timer = setTimeout(() => done(-1), 20000);
ch.onopen = () => { clearTimeout(timer); const t = performance.now() - t0; a.close(); b.close(); done(t); };
(async () => {
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
})().catch(() => done(-1));
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn join(page: &Page, room: &str) -> Result<()> {
    page.eval(&format!(
        "window.__ferry.openedAt = {{}}; location.hash = '#{room}'; return true"
    ))
    .await?;
    Ok(())
}

async fn leave(page: &Page) -> Result<()> {
    page.eval("const b = document.querySelector(\"[data-testid='leave']\"); if (!document.getElementById('room').hidden) b.click(); return true")
        .await?;
    Ok(())
}

/// One run of ours: A waits in a room, B joins; B's join-to-open time.
async fn ours_once(a: &Page, b: &Page, room: &str) -> Result<f64> {
    join(a, room).await?;
    a.wait_for(
        "window.__ferry.client && window.__ferry.client.peerId && document.querySelector(\"[data-testid='server-status']\").dataset.state === 'joined'",
        Duration::from_secs(10),
    )
    .await
    .context("A did not join")?;
    join(b, room).await?;
    let v = b
        .wait_for(
            "(() => { const o = Object.values(window.__ferry.openedAt); return o.length === 1 ? o[0] - window.__ferry.startedAt : 0; })()",
            Duration::from_secs(20),
        )
        .await
        .context("B did not connect")?;
    leave(a).await?;
    leave(b).await?;
    v.as_f64().context("not a number")
}

async fn baseline_once(page: &Page) -> Result<f64> {
    let v = page.eval_async(BASELINE_JS).await?;
    let ms = v.as_f64().context("not a number")?;
    if ms < 0.0 {
        bail!("baseline pair failed to connect");
    }
    Ok(ms)
}

async fn connect(runs: usize) -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let a = browser.page().await?;
    let b = browser.page().await?;
    a.open(&server.url()).await?;
    b.open(&server.url()).await?;
    let nonce = std::process::id();
    // Warm up both paths (JIT, network service, ICE agent).
    for i in 0..2 {
        ours_once(&a, &b, &format!("warm-{nonce}-{i}")).await?;
        baseline_once(&a).await?;
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Interleave so both see the same machine noise.
        let o = ours_once(&a, &b, &format!("bench-{nonce}-{i}")).await?;
        let bl = baseline_once(&a).await?;
        println!("run {i:>2}: ours {o:7.1} ms   plain JS {bl:7.1} ms");
        ours.push(o);
        base.push(bl);
    }
    ours.sort_by(f64::total_cmp);
    base.sort_by(f64::total_cmp);
    let (o50, o90) = (percentile(&ours, 0.5), percentile(&ours, 0.9));
    let (b50, b90) = (percentile(&base, 0.5), percentile(&base, 0.9));
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    println!("ours: p50 {o50:.1} ms, p90 {o90:.1} ms; plain JS: p50 {b50:.1} ms, p90 {b90:.1} ms");
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let out = json!({
        "bench": "connect",
        "runs": runs,
        "ours_p50_ms": round(o50),
        "ours_p90_ms": round(o90),
        "baseline_p50_ms": round(b50),
        "baseline_p90_ms": round(b90),
        "ratio": (o50 / b50 * 1000.0).round() / 1000.0,
        "ratio_p90": (o90 / b90 * 1000.0).round() / 1000.0,
        "wasm_bytes": env_num("FERRY_WASM_BYTES"),
        "wasm_gzip_bytes": env_num("FERRY_WASM_GZIP_BYTES"),
    });
    a.close().await?;
    b.close().await?;
    println!("{out}");
    Ok(())
}

/// Browser benchmarks for Ferry.
#[derive(Debug, Parser)]
enum Cli {
    /// Join-to-open time of two pages, against a plain-JS pair.
    Connect {
        /// Measured runs (after two warm-up runs).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Connect { runs } => connect(runs).await,
    }
}
