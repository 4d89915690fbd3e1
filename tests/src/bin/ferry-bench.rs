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
    window.__plainPc = pc;
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) send({ kind: "candidate", candidate: e.candidate.candidate, sdp_mid: e.candidate.sdpMid, sdp_m_line_index: e.candidate.sdpMLineIndex });
    };
    pc.ondatachannel = (e) => { window.__plainChannel = e.channel; if (e.channel.readyState === "open") finish(); else e.channel.onopen = finish; };
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
        window.__plainChannel = ch;
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

/// Connects the plain-JS peers: A waits in `room`, B joins it. Resolves with
/// B's milliseconds from `new WebSocket` to its channel `open`.
async fn plain_connect(a: &Page, b: &Page, url: &str, room: &str) -> Result<serde_json::Value> {
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
    b.eval_async(&format!(
        "const done = arguments[arguments.length - 1]; window.__plainPeer('{url}', '{room}').then(done);"
    ))
    .await
}

/// One run of the plain-JS two-page baseline, shaped exactly like ours.
async fn plain_once(a: &Page, b: &Page, url: &str, room: &str) -> Result<f64> {
    let v = plain_connect(a, b, url, room).await?;
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
    if let Ok(css) = std::env::var("FERRY_BENCH_CSS") {
        for p in [&a, &b] {
            p.eval(&format!("const s = document.createElement('style'); s.textContent = {}; document.head.append(s); return true", serde_json::to_string(&css)?)).await?;
        }
    }
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

/// Raw data-channel throughput: `A` sends `total` bytes in `size`-byte
/// messages, paced on `bufferedAmount` like a well-tuned app.
fn raw_send_js(total: u64, size: u32) -> String {
    format!(
        "const done = arguments[arguments.length - 1];
         const ch = window.__plainChannel;
         const msg = new Uint8Array({size});
         for (let i = 0; i < msg.length; i += 65536) crypto.getRandomValues(msg.subarray(i, Math.min(msg.length, i + 65536)));
         ch.bufferedAmountLowThreshold = 1 << 20;
         let sent = 0;
         window.__rawStart = Date.now();
         const pump = () => {{
           while (sent < {total} && ch.bufferedAmount < (8 << 20)) {{ ch.send(msg); sent += {size}; }}
           if (sent >= {total}) ch.onbufferedamountlow = null;
         }};
         ch.onbufferedamountlow = pump;
         pump();
         done(window.__rawStart);"
    )
}

fn raw_receive_js(total: u64) -> String {
    format!(
        "const ch = window.__plainChannel;
         ch.binaryType = 'arraybuffer';
         window.__rx = {{ bytes: 0, last: 0 }};
         ch.onmessage = (e) => {{ const r = window.__rx; r.bytes += e.data.byteLength; if (r.bytes >= {total} && !r.last) r.last = Date.now(); }};
         return true;"
    )
}

/// One raw JavaScript transfer of `total` bytes A→B; returns MB/s.
async fn raw_once(a: &Page, b: &Page, url: &str, room: &str, total: u64, size: u32) -> Result<f64> {
    plain_connect(a, b, url, room).await?;
    a.wait_for(
        "window.__plainChannel && window.__plainChannel.readyState === 'open'",
        Duration::from_secs(10),
    )
    .await?;
    b.eval(&raw_receive_js(total)).await?;
    if tracing() {
        start_trace(a, "window.__plainPc", "bytesSent").await?;
        start_trace(b, "window.__plainPc", "bytesReceived").await?;
    }
    let start = a
        .eval_async(&raw_send_js(total, size))
        .await?
        .as_f64()
        .context("start")?;
    let end = b
        .wait_for("window.__rx.last", Duration::from_secs(900))
        .await?
        .as_f64()
        .context("end")?;
    if tracing() {
        finish_trace(a, b, total).await?;
    }
    for p in [a, b] {
        p.eval("window.__plainClose(); window.__plainChannel = null; return true")
            .await?;
    }
    Ok(total as f64 / 1e6 / ((end - start) / 1000.0))
}

/// `FERRY_BENCH_TRACE=1`: sample both ends of a transfer's channel every
/// 50 ms and print how steady the flow was.
fn tracing() -> bool {
    std::env::var_os("FERRY_BENCH_TRACE").is_some()
}

/// Samples `field` of the `ferry` data channel's stats of the peer
/// connection that `pc` evaluates to, every 50 ms.
async fn start_trace(p: &Page, pc: &str, field: &str) -> Result<()> {
    p.eval(&format!(
        "window.__samples = [];
         window.__sampler = setInterval(async () => {{
           const pc = {pc};
           if (!pc) return;
           const st = await pc.getStats();
           st.forEach((r) => {{ if (r.type === 'data-channel' && r.label === 'ferry') window.__samples.push([Date.now(), r.{field}]); }});
         }}, 50);
         return true"
    ))
    .await?;
    Ok(())
}

/// Prints the receiver's rate per 50 ms (spread, and how many intervals
/// nearly stalled) and what the sender had handed to the channel but the
/// receiver had not yet received, over time.
async fn finish_trace(a: &Page, b: &Page, total: u64) -> Result<()> {
    let mut series = Vec::new();
    for p in [a, b] {
        let v = p
            .eval("clearInterval(window.__sampler); return window.__samples")
            .await?;
        let pts: Vec<(f64, f64)> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| Some((x[0].as_f64()?, x[1].as_f64()?)))
            .collect();
        series.push(pts);
    }
    let recv_at = |t: f64| {
        series[1]
            .iter()
            .take_while(|(w, _)| *w <= t)
            .last()
            .map_or(0.0, |(_, b)| *b)
    };
    let mut rates: Vec<f64> = series[1]
        .windows(2)
        .filter(|w| w[1].1 > 0.0 && w[1].1 < total as f64)
        .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0) / 1000.0)
        .collect();
    rates.sort_by(f64::total_cmp);
    let q = |p: f64| {
        rates
            .get(((rates.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "  trace: receiver MB/s per 50 ms, p10 {:.1} p50 {:.1} p90 {:.1}; intervals under 5 MB/s: {}/{}",
        q(0.1),
        q(0.5),
        q(0.9),
        rates.iter().filter(|r| **r < 5.0).count(),
        rates.len()
    );
    let step = (series[0].len() / 40).max(1);
    let line: Vec<String> = series[0]
        .iter()
        .step_by(step)
        .map(|(t, s)| format!("{:.1}", (s - recv_at(*t)) / 1_048_576.0))
        .collect();
    println!("  trace: MiB sent but not yet received: {}", line.join(" "));
    Ok(())
}

/// One transfer through the page: pick the file in A, accept in B as soon as
/// the offer shows; returns MB/s from the pick to B's "completed" (sender
/// hashing, verification and writing included) and B's peak RSS growth.
async fn ours_swap_once(
    a: &Page,
    b: &Page,
    file: &std::path::Path,
    total: u64,
) -> Result<(f64, f64)> {
    b.eval("window.__autoAccept = setInterval(() => { const x = document.querySelector(\"li.transfer[data-direction='in'][data-state='offered'] [data-testid='accept-transfer']\"); if (x) x.click(); }, 20); return true").await?;
    let n = b.eval("return window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'completed').length").await?.as_u64().unwrap_or(0);
    let baseline = b.renderer_rss().unwrap_or(0);
    let mut peak = baseline;
    let trace = tracing();
    if trace {
        let (ida, idb) = (a.peer_id().await?, b.peer_id().await?);
        start_trace(
            a,
            &format!("window.__ferry.client.peerConnection('{idb}')"),
            "bytesSent",
        )
        .await?;
        start_trace(
            b,
            &format!("window.__ferry.client.peerConnection('{ida}')"),
            "bytesReceived",
        )
        .await?;
    }
    a.upload("pick-files", file).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    let end = loop {
        if let Some(r) = b.renderer_rss() {
            peak = peak.max(r);
        }
        let v = b
            .eval(&format!("const c = window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'completed'); return c.length > {n} ? c[c.length - 1].wall : 0"))
            .await?;
        if v.as_f64().is_some_and(|x| x > 0.0) {
            break v.as_f64().unwrap_or(0.0);
        }
        if std::time::Instant::now() > deadline {
            bail!("our transfer did not finish");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let start = a
        .eval("return window.__ferry.sendStartedAt")
        .await?
        .as_f64()
        .context("start")?;
    let accepted = a
        .eval("const c = window.__ferry.events.filter(e => e.type === 'transfer' && e.event.type === 'accepted'); return c.length ? c[c.length - 1].wall : 0")
        .await?
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "ours: hashing and offer took {:.1} s, the transfer {:.1} s",
        (accepted - start) / 1000.0,
        (end - accepted) / 1000.0
    );
    b.eval("clearInterval(window.__autoAccept); return true")
        .await?;
    // Each round writes a new file, as a user's transfer does: overwriting
    // the last round's file in OPFS would be cheaper than writing a new one.
    let removed = b
        .eval_async(
            "const done = arguments[arguments.length - 1];
             (async () => {
               for (let i = 0; i < 100; i++) {
                 try { await (await navigator.storage.getDirectory()).removeEntry('ferry', { recursive: true }); return true; }
                 catch (e) { if (e.name === 'NotFoundError') return true; await new Promise((r) => setTimeout(r, 100)); }
               }
               return false;
             })().then(done);",
        )
        .await?;
    if removed != serde_json::Value::Bool(true) {
        bail!("could not remove the received file from OPFS after the transfer");
    }
    if trace {
        finish_trace(a, b, total).await?;
    }
    Ok((
        total as f64 / 1e6 / ((end - start) / 1000.0),
        peak.saturating_sub(baseline) as f64 / 1e6,
    ))
}

type Cpu = std::collections::BTreeMap<String, f64>;

/// CPU seconds both pages' browsers used while `f` ran, by process type.
async fn with_cpu<T>(
    a: &Page,
    b: &Page,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Cpu, Cpu)> {
    let (a0, b0) = (a.cpu_seconds(), b.cpu_seconds());
    let out = f.await?;
    let diff = |before: &Cpu, after: Cpu| -> Cpu {
        after
            .into_iter()
            .map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0.0);
                (k, (d * 10.0).round() / 10.0)
            })
            .filter(|(_, v)| *v >= 0.5)
            .collect()
    };
    Ok((out, diff(&a0, a.cpu_seconds()), diff(&b0, b.cpu_seconds())))
}

fn print_cpu(label: &str, a: &Cpu, b: &Cpu) {
    let total = |m: &Cpu| m.values().sum::<f64>();
    let show = |m: &Cpu| {
        m.iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  cpu, {label}: sender {:.1} s ({}); receiver {:.1} s ({})",
        total(a),
        show(a),
        total(b),
        show(b)
    );
}

async fn swap(mib: u64, tuning: Option<String>, rounds: usize) -> Result<()> {
    let total = mib << 20;
    let dir = ferry_e2e::tempdir("ferry-bench-swap")?;
    let file = dir.join("payload.bin");
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&file)?);
        let mut xof = blake3::Hasher::new().update(b"bench").finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            xof.fill(&mut buf);
            out.write_all(&buf)?;
        }
        out.flush()?;
    }
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let a = browser.page().await?;
    let b = browser.page().await?;
    let set_tuning = match &tuning {
        Some(t) => format!(
            "localStorage.setItem('ferry.tuning', {}); return true",
            serde_json::to_string(t)?
        ),
        None => "localStorage.removeItem('ferry.tuning'); return true".into(),
    };
    for p in [&a, &b] {
        p.open(&server.url()).await?;
        p.eval(&set_tuning).await?;
    }
    a.click("create-room").await?;
    let link = a.room_link().await?;
    b.open(&link).await?;
    a.wait_connected_peers(1, Duration::from_secs(20)).await?;
    b.wait_connected_peers(1, Duration::from_secs(20)).await?;
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let nonce = std::process::id();
    let mut raw = Vec::new();
    for (i, size) in [65_536u32, 262_144].into_iter().enumerate() {
        let (mbs, ca, cb) = with_cpu(
            &a,
            &b,
            raw_once(&a, &b, &url, &format!("raw-{nonce}-{i}"), total, size),
        )
        .await?;
        println!(
            "raw JS data channel, {} KiB messages: {mbs:.1} MB/s",
            size / 1024
        );
        print_cpu("raw", &ca, &cb);
        raw.push((size, mbs));
    }
    // The best-tuned raw setting is the baseline. Then the paired rounds:
    // ours and a raw transfer at that setting back to back, alternating
    // which goes first, so that the machine's drift (its speed moves by a
    // third within an hour) hits both alike.
    let (best_size, _) = raw
        .iter()
        .copied()
        .fold((0, 0.0f64), |acc, x| if x.1 > acc.1 { x } else { acc });
    let profile = std::env::var_os("FERRY_BENCH_PROFILE").is_some();
    let mut pairs = Vec::new();
    let mut growth = 0.0f64;
    for round in 0..rounds {
        let mut pair = (0.0, 0.0);
        for ours_turn in [round % 2 == 0, round % 2 == 1] {
            if ours_turn {
                if profile {
                    a.start_profile().await?;
                    b.start_profile().await?;
                }
                let ((mbs, grew), ca, cb) =
                    with_cpu(&a, &b, ours_swap_once(&a, &b, &file, total)).await?;
                if profile {
                    for (who, p) in [("sender", &a), ("receiver", &b)] {
                        println!("  main-thread profile, {who}:");
                        for (f, share) in p.stop_profile(25).await? {
                            println!("    {:5.1} %  {f}", share * 100.0);
                        }
                    }
                }
                println!(
                    "round {}, ours (hash, offer, verify, write to OPFS): {mbs:.1} MB/s, receiver renderer growth {grew:.0} MB",
                    round + 1
                );
                print_cpu("ours", &ca, &cb);
                growth = growth.max(grew);
                pair.0 = mbs;
            } else {
                let room = format!("raw-{nonce}-round-{round}");
                let (mbs, ca, cb) =
                    with_cpu(&a, &b, raw_once(&a, &b, &url, &room, total, best_size)).await?;
                println!(
                    "round {}, raw JS data channel, {} KiB messages: {mbs:.1} MB/s",
                    round + 1,
                    best_size / 1024
                );
                print_cpu("raw", &ca, &cb);
                raw.push((best_size, mbs));
                pair.1 = mbs;
            }
        }
        println!(
            "round {}: ratio {:.3}",
            round + 1,
            pair.0 / pair.1.max(f64::MIN_POSITIVE)
        );
        pairs.push(pair);
    }
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut ratios: Vec<f64> = pairs.iter().map(|(o, r)| o / r).collect();
    ratios.sort_by(f64::total_cmp);
    let median = |v: &[f64]| percentile(v, 0.5);
    let mut ours: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    ours.sort_by(f64::total_cmp);
    let mut paired_raw: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    paired_raw.sort_by(f64::total_cmp);
    let best_ours = ours.last().copied().unwrap_or(0.0);
    let best_raw = raw.iter().map(|r| r.1).fold(0.0f64, f64::max);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "{}",
        json!({
            "bench": "swap",
            "mib": mib,
            "rounds": rounds,
            "ours_mb_s": round(median(&ours)),
            "baseline_mb_s": round(median(&paired_raw)),
            "baseline_message_bytes": best_size,
            "ratio": round3(median(&ratios)),
            "ratio_min": round3(ratios.first().copied().unwrap_or(0.0)),
            "ratio_max": round3(ratios.last().copied().unwrap_or(0.0)),
            "best_ours_mb_s": round(best_ours),
            "best_raw_mb_s": round(best_raw),
            "ratio_best_to_best": round3(best_ours / best_raw.max(f64::MIN_POSITIVE)),
            "receiver_peak_mb": round(growth),
            "tuning": tuning.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose()?,
        })
    );
    Ok(())
}

#[path = "../native_bench.rs"]
mod native_bench;

/// One call: A rings, B answers; milliseconds from B's click on Answer to
/// the first frame of A's video decoded in B.
async fn answer_to_frame(a: &Page, b: &Page, ida: &str) -> Result<f64> {
    a.click("start-call").await?;
    answer_to_frame_from(b, ida).await
}

/// Waits for `b` to ring, answers, and returns the milliseconds from the
/// click to the first frame from `ida` decoded.
async fn answer_to_frame_from(b: &Page, ida: &str) -> Result<f64> {
    b.wait_for(
        "!document.querySelector(\"[data-testid='incoming-call']\").hidden",
        Duration::from_secs(20),
    )
    .await?;
    let ms = b
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{
             const c = window.__ferry.calls;
             // Counters of an earlier call's receiver stay in getStats:
             // wait for new frames, not for any.
             const base = ((await c.peerStats('{ida}')) || {{}}).framesDecoded || 0;
             const t0 = performance.now();
             document.querySelector(\"[data-testid='answer-call']\").click();
             const poll = async () => {{
               const s = await c.peerStats('{ida}');
               if (s && s.framesDecoded > base) return done(performance.now() - t0);
               if (performance.now() - t0 > 20000) return done(-1);
               setTimeout(poll, 5);
             }};
             poll();
             }})();"
        ))
        .await?
        .as_f64()
        .context("no time")?;
    anyhow::ensure!(ms >= 0.0, "no frame within 20 s");
    Ok(ms)
}

async fn hang_up_both(a: &Page, b: &Page) -> Result<()> {
    for p in [a, b] {
        p.eval("const c = window.__ferry.calls; if (c.call || c.ringing) c.hangUp(); return true")
            .await?;
    }
    for p in [a, b] {
        p.wait_for(
            "document.querySelectorAll(\"[data-testid='tile']\").length === 0 && document.querySelector(\"[data-testid='call']\").dataset.state === 'idle'",
            Duration::from_secs(20),
        )
        .await?;
    }
    // Let the renegotiation that removes the tracks settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn call_bench(runs: usize, secs: u64) -> Result<()> {
    let server = Server::start(5_000).await?;
    let browser = Browser::start().await?;
    let (a, link) = browser.page_in_new_room(&server).await?;
    let b = browser.page().await?;
    b.open(&link).await?;
    a.wait_connected_peers(1, Duration::from_secs(20)).await?;
    b.wait_connected_peers(1, Duration::from_secs(20)).await?;
    let ida = a.peer_id().await?;
    let mut times = Vec::new();
    for i in 0..runs + 1 {
        let ms = answer_to_frame(&a, &b, &ida)
            .await
            .with_context(|| format!("call {i}"))?;
        eprintln!("call {i}: {ms:.0} ms");
        if i > 0 {
            times.push(ms);
        }
        hang_up_both(&a, &b).await?;
    }
    times.sort_by(f64::total_cmp);
    let p50 = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    println!(
        "browser <-> browser, answer to first remote frame decoded: p50 {p50:.0} ms, p90 {p90:.0} ms ({runs} runs)"
    );
    // CPU while a 1:1 call runs (two fake 640x480 cameras and microphones).
    answer_to_frame(&a, &b, &ida).await?;
    let ((), cpu_a, cpu_b) = with_cpu(&a, &b, async {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        Ok(())
    })
    .await?;
    let ida_stats = b
        .eval_async(&format!(
            "const done = arguments[arguments.length - 1]; window.__ferry.calls.peerStats('{ida}').then(done);"
        ))
        .await?;
    print_cpu(&format!("{secs} s of a 1:1 call"), &cpu_a, &cpu_b);
    let cores = |m: &Cpu| m.values().sum::<f64>() / secs as f64;
    hang_up_both(&a, &b).await?;
    a.close().await?;
    b.close().await?;
    let native = native_calls(&server, &browser, runs).await?;
    println!(
        "{}",
        serde_json::json!({
            "bench": "call",
            "runs": runs,
            "answer_to_frame_p50_ms": p50.round(),
            "answer_to_frame_p90_ms": p90.round(),
            "call_cpu_cores_a": (cores(&cpu_a) * 100.0).round() / 100.0,
            "call_cpu_cores_b": (cores(&cpu_b) * 100.0).round() / 100.0,
            "received_video": {"width": ida_stats["width"], "height": ida_stats["height"], "fps": ida_stats["fps"]},
            "native": native,
        })
    );
    Ok(())
}

/// Browser ↔ native calls. A `ferry call --record` first records a page's
/// fake camera and microphone (VP8 in IVF, Opus in Ogg); then, `runs + 1`
/// times, a fresh `ferry call --play` of that recording calls a page, and
/// the time from the page's Answer to its first decoded frame of the native
/// video is measured, with the native process's CPU while it plays.
async fn native_calls(
    server: &Server,
    browser: &Browser,
    runs: usize,
) -> Result<serde_json::Value> {
    use ferry_e2e::Native;
    let work = ferry_e2e::tempdir("ferry-bench-call")?;
    let rec = work.join("rec");
    let (page, link) = browser.page_in_new_room(server).await?;
    let bind = ["--bind", "127.0.0.1:0"];
    let rec_arg = rec.to_string_lossy().into_owned();
    let recorder = Native::start(
        server,
        &[&["call", &link, "--wait", "--record", &rec_arg], &bind[..]].concat(),
    )?;
    page.wait_connected_peers(1, Duration::from_secs(20))
        .await?;
    page.click("start-call").await?;
    recorder
        .wait_line("in the call with", Duration::from_secs(20))
        .await?;
    // Ten seconds of media, so that a run never reaches the loop point.
    tokio::time::sleep(Duration::from_secs(10)).await;
    page.eval("window.__ferry.calls.hangUp(); return true")
        .await?;
    drop(recorder);
    page.close().await?;
    let find = |ext: &str| {
        std::fs::read_dir(&rec)
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|e| e == ext))
            })
            .with_context(|| format!("no .{ext} recorded"))
    };
    let (clip, sound) = (find("ivf")?, find("ogg")?);
    let clip_bytes = std::fs::metadata(&clip)?.len();
    let (clip_arg, sound_arg) = (
        clip.to_string_lossy().into_owned(),
        sound.to_string_lossy().into_owned(),
    );

    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for i in 0..runs + 1 {
        let (page, link) = browser.page_in_new_room(server).await?;
        let mut player = Native::start(
            server,
            &[
                &[
                    "call",
                    &link,
                    "--play",
                    &clip_arg,
                    "--play-audio",
                    &sound_arg,
                    "--loop",
                ],
                &bind[..],
            ]
            .concat(),
        )?;
        page.wait_connected_peers(1, Duration::from_secs(20))
            .await?;
        let id = page
            .eval("return document.querySelector('[data-testid=peers] li[data-peer-id]').dataset.peerId")
            .await?
            .as_str()
            .context("no native peer listed")?
            .to_owned();
        // The native peer calls (2 s after connecting); the page answers.
        let ms = answer_to_frame_from(&page, &id)
            .await
            .with_context(|| format!("native call {i}: {:?}", player.output()))?;
        eprintln!("native call {i}: {ms:.0} ms");
        if i > 0 {
            times.push(ms);
        }
        if i == runs {
            // CPU of the playing native process over 5 s of the call.
            let pid = player.pid().context("no pid")?;
            let before = ferry_e2e::process_cpu_seconds(pid).context("no cpu")?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let after = ferry_e2e::process_cpu_seconds(pid).context("no cpu")?;
            cpu.push((after - before) / 5.0);
        }
        page.eval("window.__ferry.calls.hangUp(); return true")
            .await?;
        let _ = player.wait_exit(Duration::from_secs(10)).await;
        page.close().await?;
    }
    times.sort_by(f64::total_cmp);
    let p50 = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    println!(
        "native -> browser, answer to first remote frame decoded: p50 {p50:.0} ms, p90 {p90:.0} ms ({runs} runs); native CPU while playing {:.3} cores",
        cpu.first().copied().unwrap_or(0.0)
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(serde_json::json!({
        "answer_to_frame_p50_ms": p50.round(),
        "answer_to_frame_p90_ms": p90.round(),
        "native_cpu_cores": (cpu.first().copied().unwrap_or(0.0) * 1000.0).round() / 1000.0,
        "clip_bytes": clip_bytes,
    }))
}

/// Browser and native benchmarks for Ferry.
#[derive(Debug, Parser)]
enum Cli {
    /// Calls: answer to first remote frame, and CPU during a 1:1 call.
    Call {
        /// Measured calls (after one warm-up call).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Seconds of the CPU measurement.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// The native peer: native to native against a raw webrtc-crate channel
    /// and raw TCP, browser to native and back against a raw JS channel, and
    /// channel-open times.
    Native {
        /// Size of the native-to-native transfer in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Size of the memory run (native to native) in MiB; 0 skips it.
        #[arg(long, default_value_t = 4096)]
        rss_mib: u64,
        /// Size of the browser transfers in MiB.
        #[arg(long, default_value_t = 1024)]
        browser_mib: u64,
        /// Measured channel-open runs (after two warm-up runs).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// A file swap through the engine against a raw JS data channel.
    Swap {
        /// Size of the transfer in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Engine tuning for both pages, as JSON, e.g. '{"chunkSize":65536,"window":128}'.
        #[arg(long)]
        tuning: Option<String>,
        /// Paired rounds after the tuning runs: each is one transfer of ours
        /// and one raw transfer at the best message size, back to back. Use an
        /// odd number: with an even one, the median is the upper middle round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
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
        Cli::Swap {
            mib,
            tuning,
            rounds,
        } => swap(mib, tuning, rounds.max(1)).await,
        Cli::Call { runs, secs } => call_bench(runs, secs).await,
        Cli::Native {
            mib,
            rss_mib,
            browser_mib,
            runs,
        } => native_bench::native(mib, rss_mib, runs, browser_mib).await,
    }
}
