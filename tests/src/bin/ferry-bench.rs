//! `ferry-bench`: benchmarks that drive real browsers. Run through
//! `cargo xtask bench <name>`, which builds everything and runs this inside a
//! loopback-only network namespace. The last line printed is one JSON object.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_e2e::{Browser, Page, Server};
use serde_json::json;

/// A minimal plain-JavaScript peer speaking Ferry's signaling protocol: the
/// same WebSocket server, join, relayed offer/answer and trickled candidates,
/// but no wasm and no engine. `window.__plainPeer(url, room)` resolves with the
/// milliseconds from `new WebSocket` to this side's data channel `open`.
const PLAIN_PEER_JS: &str = r#"
window.__plainPeer = (url, room) => new Promise((resolve) => {
  const t0 = performance.now();
  const ws = new WebSocket(url);
  let pc = null, other = null, pending = [];
  const finish = () => { resolve(performance.now() - t0); };
  window.__plainClose = () => { try { ws.close(); } catch {} if (pc) pc.close(); };
  const send = (signal) => ws.send(JSON.stringify({ type: "signal", to: other, signal }));
  const setup = (peer) => {
    other = peer;
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) send({ kind: "candidate", candidate: e.candidate.candidate, sdp_mid: e.candidate.sdpMid, sdp_m_line_index: e.candidate.sdpMLineIndex });
    };
    pc.ondatachannel = (e) => { if (e.channel.readyState === "open") finish(); else e.channel.onopen = finish; };
  };
  const flush = () => { for (const c of pending) pc.addIceCandidate(c).catch(() => {}); pending = []; };
  window.__plainTrace = [];
  const mark = (what) => window.__plainTrace.push(`${(performance.now() - t0).toFixed(1)} ${what}`);
  ws.onopen = () => { mark("open"); ws.send(JSON.stringify({ type: "join", version: 1, room })); };
  ws.onmessage = async (m) => {
    const msg = JSON.parse(m.data);
    mark(msg.type + (msg.signal ? " " + msg.signal.kind : ""));
    if (msg.type === "joined") {
      window.__plainJoined = true;
      if (msg.peers.length) {
        setup(msg.peers[0].id);
        const ch = pc.createDataChannel("ferry", { ordered: true });
        ch.onopen = finish;
        await pc.setLocalDescription(await pc.createOffer());
        send({ kind: "offer", sdp: pc.localDescription.sdp });
      }
    } else if (msg.type === "peer_joined") {
      setup(msg.peer.id);
    } else if (msg.type === "signal") {
      const s = msg.signal;
      if (s.kind === "offer") {
        await pc.setRemoteDescription({ type: "offer", sdp: s.sdp });
        flush();
        await pc.setLocalDescription(await pc.createAnswer());
        send({ kind: "answer", sdp: pc.localDescription.sdp });
      } else if (s.kind === "answer") {
        await pc.setRemoteDescription({ type: "answer", sdp: s.sdp });
        flush();
      } else if (s.kind === "candidate") {
        const c = { candidate: s.candidate, sdpMid: s.sdp_mid, sdpMLineIndex: s.sdp_m_line_index };
        if (pc && pc.remoteDescription) pc.addIceCandidate(c).catch(() => {}); else pending.push(c);
      }
    }
  };
});
return true;
"#;

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

/// Script that joins `room` the way a person does: type the code, submit.
fn join_script(room: &str) -> String {
    format!(
        "window.__ferry.openedAt = {{}};
         document.querySelector(\"[data-testid='join-code']\").value = '{room}';
         document.getElementById('join-form').requestSubmit();"
    )
}

async fn join(page: &Page, room: &str) -> Result<()> {
    page.eval(&format!("{} return true", join_script(room)))
        .await?;
    Ok(())
}

async fn leave(page: &Page) -> Result<()> {
    page.eval("const b = document.querySelector(\"[data-testid='leave']\"); if (!document.getElementById('room').hidden) b.click(); return true")
        .await?;
    Ok(())
}

/// One run of ours: A waits in a room, B joins; B's join-to-open time.
async fn ours_once(a: &Page, b: &Page, room: &str) -> Result<(f64, f64)> {
    join(a, room).await?;
    a.wait_for(
        "window.__ferry.client && window.__ferry.client.peerId && document.querySelector(\"[data-testid='server-status']\").dataset.state === 'joined'",
        Duration::from_secs(10),
    )
    .await
    .context("A did not join")?;
    // Wait inside the page: WebDriver polling would steal B's main thread
    // in the middle of the handshake.
    let v = b
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1];
             window.__ferry.onOpened = () => {{ const t = Object.values(window.__ferry.openedAt)[0]; done([t - window.__ferry.startedAt, t - window.__ferry.clickedAt]); }};
             {}",
            join_script(room)
        ))
        .await
        .context("B did not connect")?;
    b.eval("window.__ferry.onOpened = null; return true")
        .await?;
    if std::env::var_os("FERRY_BENCH_TRACE").is_some() {
        for (name, p) in [("A", a), ("B", b)] {
            let t = p.eval("const s = window.__ferry.startedAt; return window.__ferry.events.filter(e => e.at >= s - 5000).map(e => `${(e.at - s).toFixed(1)} ${e.type} ${e.state || ''}`).join('\\n')").await?;
            eprintln!("--- {name}\n{}", t.as_str().unwrap_or_default());
        }
    }
    leave(a).await?;
    leave(b).await?;
    let pair = v.as_array().context("not a pair")?;
    let num = |k: usize| pair.get(k).and_then(|x| x.as_f64()).context("not a number");
    Ok((num(0)?, num(1)?))
}

/// One run of the plain-JS two-page baseline, shaped exactly like ours.
async fn plain_once(a: &Page, b: &Page, url: &str, room: &str) -> Result<f64> {
    for p in [a, b] {
        p.eval("window.__plainJoined = false; return true").await?;
        p.eval(PLAIN_PEER_JS).await?;
    }
    a.eval(&format!(
        "window.__plainPeer('{url}', '{room}'); return true"
    ))
    .await?;
    a.wait_for("window.__plainJoined", Duration::from_secs(10))
        .await?;
    let v = b
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1]; window.__plainPeer('{url}', '{room}').then(done);"
        ))
        .await?;
    if std::env::var_os("FERRY_BENCH_TRACE").is_some() {
        let t = b.eval("return window.__plainTrace.join('\\n')").await?;
        eprintln!("--- plain B\n{}", t.as_str().unwrap_or_default());
    }
    for p in [a, b] {
        p.eval("window.__plainClose(); return true").await?;
    }
    v.as_f64().context("not a number")
}

/// Our engine without the page UI: `FerryClient` driven by a bare callback.
async fn headless_once(a: &Page, b: &Page, url: &str, room: &str) -> Result<f64> {
    let start = |p: &'static str| {
        format!(
            "const done = arguments[arguments.length - 1]; const t0 = performance.now(); window.__hl = new window.__ferry.FerryClient({{serverUrl: '{url}', room: '{room}', name: '{p}'}}, (e) => {{ if (e.type === 'joined') window.__hlJoined = true; if (e.type === 'peer_state' && e.state === 'connected') done(performance.now() - t0); }}); if ('{p}' === 'a') done(0);"
        )
    };
    a.eval("window.__hlJoined = false; return true").await?;
    a.eval_async(&start("a")).await?;
    a.wait_for("window.__hlJoined", Duration::from_secs(10))
        .await?;
    let v = b.eval_async(&start("b")).await?;
    for p in [a, b] {
        p.eval("window.__hl.leave(); window.__hl.free(); return true")
            .await?;
    }
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
    let ws_url = format!("ws://127.0.0.1:{}/ws", server.port);
    // Warm up every path (JIT, network service, ICE agent).
    for i in 0..2 {
        ours_once(&a, &b, &format!("warm-{nonce}-{i}")).await?;
        headless_once(&a, &b, &ws_url, &format!("warm-engine-{nonce}-{i}")).await?;
        plain_once(&a, &b, &ws_url, &format!("warm-plain-{nonce}-{i}")).await?;
        baseline_once(&a).await?;
    }
    let (mut ours, mut click, mut engine, mut base, mut in_page) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Interleave so every path sees the same machine noise.
        let (o, c) = ours_once(&a, &b, &format!("bench-{nonce}-{i}")).await?;
        let e = headless_once(&a, &b, &ws_url, &format!("engine-{nonce}-{i}")).await?;
        let bl = plain_once(&a, &b, &ws_url, &format!("plain-{nonce}-{i}")).await?;
        let ip = baseline_once(&a).await?;
        println!(
            "run {i:>2}: page {o:6.1} ms (click-to-open {c:6.1})   engine {e:6.1}   plain JS two pages {bl:6.1}   plain JS one page {ip:6.1}"
        );
        ours.push(o);
        click.push(c);
        engine.push(e);
        base.push(bl);
        in_page.push(ip);
    }
    for v in [&mut ours, &mut click, &mut engine, &mut base, &mut in_page] {
        v.sort_by(f64::total_cmp);
    }
    let (o50, o90) = (percentile(&ours, 0.5), percentile(&ours, 0.9));
    let (b50, b90) = (percentile(&base, 0.5), percentile(&base, 0.9));
    let (i50, i90) = (percentile(&in_page, 0.5), percentile(&in_page, 0.9));
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let (c50, c90) = (percentile(&click, 0.5), percentile(&click, 0.9));
    let (e50, e90) = (percentile(&engine, 0.5), percentile(&engine, 0.9));
    println!("ours, the page (join to open): p50 {o50:.1} ms, p90 {o90:.1} ms");
    println!("ours, the page (click to open, with rendering): p50 {c50:.1} ms, p90 {c90:.1} ms");
    println!("ours, the engine without the page UI: p50 {e50:.1} ms, p90 {e90:.1} ms");
    println!("plain JS, two pages through the same server: p50 {b50:.1} ms, p90 {b90:.1} ms");
    println!("plain JS, both ends in one page (no signaling): p50 {i50:.1} ms, p90 {i90:.1} ms");
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let ratio = |x: f64, y: f64| (x / y * 1000.0).round() / 1000.0;
    let out = json!({
        "bench": "connect",
        "runs": runs,
        "ours_p50_ms": round(o50),
        "ours_p90_ms": round(o90),
        "baseline_p50_ms": round(b50),
        "baseline_p90_ms": round(b90),
        "ratio": ratio(o50, b50),
        "ratio_p90": ratio(o90, b90),
        "ours_click_p50_ms": round(c50),
        "ours_click_p90_ms": round(c90),
        "engine_p50_ms": round(e50),
        "engine_p90_ms": round(e90),
        "engine_ratio": ratio(e50, b50),
        "in_page_p50_ms": round(i50),
        "in_page_p90_ms": round(i90),
        "ratio_to_in_page": ratio(o50, i50),
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
