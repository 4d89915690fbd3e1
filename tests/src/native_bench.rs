//! `ferry-bench native`: the native peer against raw webrtc-crate channels,
//! raw TCP and the raw browser channel, all in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use ferry_e2e::{Browser, Native, Page, Server, make_file, process_rss, tempdir};
use ferry_native::NetConfig;
use ferry_native::peer::new_connection;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
};

/// Raw messages: the largest Chromium and the webrtc crate accept.
const RAW_MESSAGE: usize = 256 * 1024;

struct RawHandler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
    /// With `FERRY_BENCH_TRACE`: when each state change happened.
    trace: Option<(&'static str, Instant)>,
}

impl RawHandler {
    fn note(&self, what: &str) {
        if let Some((who, t0)) = self.trace {
            eprintln!(
                "{:7.1} ms {who}: {what}",
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for RawHandler {
    async fn on_ice_connection_state_change(
        &self,
        state: webrtc::peer_connection::RTCIceConnectionState,
    ) {
        self.note(&format!("ice {state}"));
    }
    async fn on_connection_state_change(
        &self,
        state: webrtc::peer_connection::RTCPeerConnectionState,
    ) {
        self.note(&format!("connection {state}"));
    }
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        self.note("candidate");
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.candidates.send(c);
        }
    }
    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.channels.send(channel);
    }
}

/// Two connected webrtc-crate peers in this process, no engine.
struct RawPair {
    a: Arc<dyn PeerConnection>,
    b: Arc<dyn PeerConnection>,
    tx: Arc<dyn DataChannel>,
    rx: Arc<dyn DataChannel>,
    open_ms: f64,
}

async fn raw_pair(net: &NetConfig, kick: bool) -> Result<RawPair> {
    let started = Instant::now();
    let trace = std::env::var_os("FERRY_BENCH_TRACE").is_some();
    let (ca_tx, mut ca_rx) = mpsc::unbounded_channel();
    let (cb_tx, mut cb_rx) = mpsc::unbounded_channel();
    let (cha_tx, _cha_rx) = mpsc::unbounded_channel();
    let (chb_tx, mut chb_rx) = mpsc::unbounded_channel();
    let a = new_connection(
        net,
        Vec::new(),
        Arc::new(RawHandler {
            candidates: ca_tx,
            channels: cha_tx,
            trace: trace.then_some(("a", started)),
        }),
    )
    .await?;
    let b = new_connection(
        net,
        Vec::new(),
        Arc::new(RawHandler {
            candidates: cb_tx,
            channels: chb_tx,
            trace: trace.then_some(("b", started)),
        }),
    )
    .await?;
    let tx = a
        .create_data_channel(
            "raw",
            Some(RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            }),
        )
        .await?;
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if kick {
        let (tx, opened) = (tx.clone(), opened.clone());
        tokio::spawn(async move {
            ferry_native::peer::kick(tx.as_ref(), &opened, Duration::from_secs(3)).await;
        });
    }
    let offer = a.create_offer(None).await?;
    a.set_local_description(offer.clone()).await?;
    b.set_remote_description(offer).await?;
    let answer = b.create_answer(None).await?;
    b.set_local_description(answer.clone()).await?;
    a.set_remote_description(answer).await?;
    // Trickle candidates both ways until the channel opens.
    let (a2, b2) = (a.clone(), b.clone());
    let trickle = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(c) = ca_rx.recv() => { let _ = b2.add_ice_candidate(c).await; }
                Some(c) = cb_rx.recv() => { let _ = a2.add_ice_candidate(c).await; }
                else => break,
            }
        }
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tx.poll()).await {
            Ok(Some(DataChannelEvent::OnOpen)) => {
                opened.store(true, std::sync::atomic::Ordering::Release);
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("the raw channel did not open"),
        }
    }
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    if trace {
        eprintln!("{open_ms:7.1} ms a: channel open");
    }
    let rx = tokio::time::timeout(Duration::from_secs(10), chb_rx.recv())
        .await?
        .context("no channel on the answerer")?;
    trickle.abort();
    Ok(RawPair {
        a,
        b,
        tx,
        rx,
        open_ms,
    })
}

impl RawPair {
    async fn close(self) {
        let _ = self.a.close().await;
        let _ = self.b.close().await;
    }

    /// Sends `total` bytes in 256 KiB messages; returns MB/s at the receiver.
    async fn throughput(&self, total: u64) -> Result<f64> {
        let rx = self.rx.clone();
        let counter = tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(e) = rx.poll().await {
                if let DataChannelEvent::OnMessage(m) = e {
                    got += m.data.len() as u64;
                    if got >= total {
                        return Ok(Instant::now());
                    }
                }
            }
            bail!("the raw channel closed after {got} bytes")
        });
        let msg = BytesMut::from(&vec![0x5au8; RAW_MESSAGE][..]);
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            self.tx.send(msg.clone()).await?;
            sent += RAW_MESSAGE as u64;
        }
        let end = tokio::time::timeout(Duration::from_secs(600), counter).await???;
        Ok(total as f64 / 1e6 / (end - started).as_secs_f64())
    }
}

/// Raw TCP on loopback, for context: MB/s for `total` bytes.
async fn tcp(total: u64) -> Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                bail!("tcp closed early");
            }
            got += n as u64;
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    let end = reader.await??;
    Ok(total as f64 / 1e6 / (end - started).as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `ferry send` → `ferry receive` through the server: MB/s from starting
/// the sender (hashing included) to the receiver's exit, and the peak RSS of
/// each process in MB.
async fn native_to_native(
    server: &Server,
    file: &std::path::Path,
    total: u64,
) -> Result<(f64, f64, f64)> {
    let dest = tempdir("ferry-bench-native-dest")?;
    let started = Instant::now();
    let mut sender = Native::start(server, &["send", file.to_str().context("path")?])?;
    let link = sender.room_link().await?;
    let mut receiver = Native::start(
        server,
        &[
            "receive",
            &link,
            "--yes",
            "--dir",
            dest.to_str().context("path")?,
        ],
    )?;
    let (mut peak_s, mut peak_r) = (0u64, 0u64);
    let code = loop {
        if let Some(p) = sender.pid().and_then(process_rss) {
            peak_s = peak_s.max(p);
        }
        if let Some(p) = receiver.pid().and_then(process_rss) {
            peak_r = peak_r.max(p);
        }
        if let Ok(code) = receiver.wait_exit(Duration::from_millis(100)).await {
            break code;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("native transfer did not finish");
        }
    };
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(code == 0, "receiver failed: {:?}", receiver.output());
    sender.wait_exit(Duration::from_secs(30)).await?;
    let _ = std::fs::remove_dir_all(&dest);
    Ok((
        total as f64 / 1e6 / secs,
        peak_s as f64 / 1e6,
        peak_r as f64 / 1e6,
    ))
}

/// `ferry send` → a page that accepts: MB/s from starting the sender to the
/// page's "completed".
async fn native_to_browser(
    server: &Server,
    page: &Page,
    file: &std::path::Path,
    total: u64,
) -> Result<f64> {
    let started = Instant::now();
    let mut sender = Native::start(server, &["send", file.to_str().context("path")?])?;
    let link = sender.room_link().await?;
    page.open(&link).await?;
    page.wait_for(
        "document.querySelector(\"li.transfer[data-direction='in'][data-state='offered']\") !== null",
        Duration::from_secs(60),
    )
    .await?;
    page.click("accept-transfer").await?;
    page.wait_for(
        "document.querySelector(\"li.transfer[data-direction='in']\").dataset.state === 'completed'",
        Duration::from_secs(1800),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    sender.wait_exit(Duration::from_secs(30)).await?;
    Ok(total as f64 / 1e6 / secs)
}

/// A page picks the file; `ferry receive` takes it: MB/s from the pick to
/// the receiver's exit.
async fn browser_to_native(
    server: &Server,
    page: &Page,
    file: &std::path::Path,
    total: u64,
) -> Result<f64> {
    let dest = tempdir("ferry-bench-b2n")?;
    page.open(&server.url()).await?;
    page.click("create-room").await?;
    let link = page.room_link().await?;
    let mut receiver = Native::start(
        server,
        &[
            "receive",
            &link,
            "--yes",
            "--dir",
            dest.to_str().context("path")?,
        ],
    )?;
    page.wait_connected_peers(1, Duration::from_secs(20))
        .await?;
    let started = Instant::now();
    page.upload("pick-files", file).await?;
    let code = receiver.wait_exit(Duration::from_secs(1800)).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(code == 0, "receiver failed: {:?}", receiver.output());
    let _ = std::fs::remove_dir_all(&dest);
    Ok(total as f64 / 1e6 / secs)
}

/// Time from starting a second node to its channel being open with the
/// first, through the real server (signaling round trips included).
async fn node_open_once(server: &Server, net: &NetConfig, room: &str) -> Result<f64> {
    use ferry_core::{Config, Event, LinkState};
    use ferry_native::{Node, NodeConfig, NodeEvent};
    let start_node = |name: &str| {
        Node::start(NodeConfig {
            server_url: format!("ws://127.0.0.1:{}/ws", server.port),
            session: Config::new(ferry_protocol::RoomCode::new(room).expect("room"), name),
            net: net.clone(),
            media: None,
        })
    };
    let (a, mut a_events) = start_node("a");
    loop {
        match a_events.recv().await {
            Some(NodeEvent::Engine(Event::Joined { .. })) => break,
            Some(_) => {}
            None => bail!("node a stopped"),
        }
    }
    let started = Instant::now();
    let (b, mut b_events) = start_node("b");
    let ms = loop {
        match tokio::time::timeout(Duration::from_secs(10), b_events.recv()).await? {
            Some(NodeEvent::Engine(Event::PeerState {
                state: LinkState::Connected,
                ..
            })) => break started.elapsed().as_secs_f64() * 1000.0,
            Some(_) => {}
            None => bail!("node b stopped"),
        }
    };
    b.close().await;
    a.close().await;
    Ok(ms)
}

pub(crate) async fn native(mib: u64, rss_mib: u64, runs: usize, browser_mib: u64) -> Result<()> {
    if let Ok(filter) = std::env::var("FERRY_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let total = mib << 20;
    let tuned = NetConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        ..NetConfig::default()
    };
    // The webrtc crate's own defaults where we changed them: a 200 ms ICE
    // check interval, no driver kicks (the DTLS role setting stays: it only
    // matters with kicks).
    let stock = NetConfig {
        ice_check_interval: Duration::from_millis(200),
        ..tuned.clone()
    };

    // Channel open, raw pairs in this process: the crate's default ICE
    // check interval against ours.
    let mut open_stock = Vec::new();
    let mut open_tuned = Vec::new();
    for i in 0..runs + 2 {
        for (net, kick, out) in [
            (&stock, false, &mut open_stock),
            (&tuned, true, &mut open_tuned),
        ] {
            let pair = raw_pair(net, kick).await?;
            if i >= 2 {
                out.push(pair.open_ms);
            }
            pair.close().await;
        }
    }
    let open_stock_ms = median(&mut open_stock);
    let open_tuned_ms = median(&mut open_tuned);
    println!(
        "raw channel open, webrtc-crate defaults: p50 {open_stock_ms:.1} ms; tuned: p50 {open_tuned_ms:.1} ms ({runs} runs)"
    );

    let server = Server::start(5_000).await?;
    let mut node_open = Vec::new();
    for i in 0..runs + 2 {
        let ms = node_open_once(&server, &tuned, &format!("open-{i:04}")).await?;
        if i >= 2 {
            node_open.push(ms);
        }
    }
    let node_open_ms = median(&mut node_open);
    println!(
        "ferry node open through the server (join, offer/answer, ICE, DTLS, SCTP): p50 {node_open_ms:.1} ms"
    );

    let tcp_mb_s = tcp(total).await?;
    println!("raw TCP loopback: {tcp_mb_s:.0} MB/s");
    let pair = raw_pair(&tuned, true).await?;
    let raw_mb_s = pair.throughput(total).await?;
    pair.close().await;
    println!("raw webrtc-crate data channel, 256 KiB messages, same tuning: {raw_mb_s:.1} MB/s");

    let work = tempdir("ferry-bench-native")?;
    let file = work.join("big.bin");
    make_file(&file, total, "native-bench")?;
    let (ours_mb_s, sender_rss, receiver_rss) = native_to_native(&server, &file, total).await?;
    println!(
        "ours native -> native (hash, verify, write): {ours_mb_s:.1} MB/s; peak RSS sender {sender_rss:.0} MB, receiver {receiver_rss:.0} MB"
    );
    let pair = raw_pair(&tuned, true).await?;
    let raw_again = pair.throughput(total).await?;
    pair.close().await;
    println!("raw webrtc-crate data channel, again: {raw_again:.1} MB/s");
    let raw_best = raw_mb_s.max(raw_again);

    let mut rss = json!(null);
    if rss_mib > 0 {
        let big = work.join("rss.bin");
        make_file(&big, rss_mib << 20, "native-rss")?;
        let (mb_s, s, r) = native_to_native(&server, &big, rss_mib << 20).await?;
        println!(
            "ours native -> native, {rss_mib} MiB: {mb_s:.1} MB/s; peak RSS sender {s:.0} MB, receiver {r:.0} MB"
        );
        rss = json!({"mib": rss_mib, "mb_s": round1(mb_s), "sender_peak_rss_mb": round1(s), "receiver_peak_rss_mb": round1(r)});
        let _ = std::fs::remove_file(&big);
    }

    // Browser legs, against the raw JS channel between two pages.
    let btotal = browser_mib << 20;
    let bfile = work.join("browser.bin");
    make_file(&bfile, btotal, "native-bench-browser")?;
    let browser = Browser::start().await?;
    let (a, b) = (browser.page().await?, browser.page().await?);
    for p in [&a, &b] {
        p.open(&server.url()).await?;
    }
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let raw_js = crate::raw_once(&a, &b, &url, "raw-js", btotal, RAW_MESSAGE as u32).await?;
    println!("raw JS data channel, two pages, 256 KiB messages: {raw_js:.1} MB/s");
    let n2b = native_to_browser(&server, &b, &bfile, btotal).await?;
    println!("ours native -> browser: {n2b:.1} MB/s");
    let b2n = browser_to_native(&server, &a, &bfile, btotal).await?;
    println!("ours browser -> native: {b2n:.1} MB/s");
    a.close().await?;
    b.close().await?;
    let _ = std::fs::remove_dir_all(&work);

    let out = json!({
        "bench": "native",
        "mib": mib,
        "ours_mb_s": round1(ours_mb_s),
        "raw_webrtc_mb_s": round1(raw_best),
        "ratio": round3(ours_mb_s / raw_best),
        "tcp_mb_s": tcp_mb_s.round(),
        "ratio_to_tcp": round3(ours_mb_s / tcp_mb_s),
        "sender_peak_rss_mb": round1(sender_rss),
        "receiver_peak_rss_mb": round1(receiver_rss),
        "rss_run": rss,
        "browser_mib": browser_mib,
        "raw_js_mb_s": round1(raw_js),
        "native_to_browser_mb_s": round1(n2b),
        "native_to_browser_ratio": round3(n2b / raw_js),
        "browser_to_native_mb_s": round1(b2n),
        "browser_to_native_ratio": round3(b2n / raw_js),
        "open_runs": runs,
        "raw_open_default_p50_ms": round1(open_stock_ms),
        "raw_open_tuned_p50_ms": round1(open_tuned_ms),
        "node_open_p50_ms": round1(node_open_ms),
    });
    println!("{out}");
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
