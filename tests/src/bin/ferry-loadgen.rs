//! Load generator for signaling servers: Ferry's and, as the baseline,
//! PeerServer (the `peer` npm package, PeerJS's server), in the same run.
//!
//! `ferry-loadgen bench` starts each server on a loopback port, then spawns
//! worker processes (this binary, `worker`), each holding up to 9,000
//! WebSocket connections from its own source address (127.0.0.2, .3, …):
//! one process may hold only 20,000 open files here. Connections come in
//! pairs in rooms of two. Once all have joined, the phases run in turn:
//!
//! 1. **idle**: server RSS per connection, all connected and joined;
//! 2. **offer/answer**: each pair exchanges an SDP offer and answer, then
//!    the RSS per connection again (each connection has now carried a
//!    kilobyte-sized frame each way);
//! 3. **rate**: a fixed total rate (20,000/s by default) for some seconds;
//!    every message carries its send time, so the receiver records relay
//!    latency (p50, p99) and the workers count what never arrived;
//! 4. **blast**: every worker sends as fast as its connections take it;
//!    the relayed rate is what arrived per second.
//!
//! The generator has to be cheap: on two cores it takes CPU from the server
//! it measures. Each client connection is one task that writes everything
//! at hand with one flush, and a message is one allocation (its JSON is
//! built once per connection, around the spot for the send time).
//!
//! By default the server and the generator share every core.
//! `--server-cpus`, `--generator-cpus` (`taskset` lists) and
//! `--generator-nice` place them, the same way for both servers.
//!
//! Ferry's rate phase also reports `server_relay_p50_ms`/`_p99_ms`: the
//! bucket of the server's own relay-latency histogram (`/metrics`, from
//! reading a signal off the sender's socket to flushing it to the
//! recipient's) that holds that quantile, so the server's share of the
//! latency can be told from the generator's and the kernel's.
//!
//! The last line printed is one JSON object with both servers' figures and
//! the ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Which server's protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Ferry,
    Peerjs,
}

#[derive(Debug, Parser)]
enum Cli {
    /// Run the whole benchmark against Ferry and PeerServer.
    Bench {
        /// Connections per server (pairs × 2).
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        /// Total messages per second in the rate phase.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of each of the rate and blast phases.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Measure only Ferry (quick experiments; no ratios).
        #[arg(long)]
        only_ours: bool,
        /// CPUs the server under test may run on (a `taskset` list such
        /// as `0`); anywhere if not given.
        #[arg(long)]
        server_cpus: Option<String>,
        /// CPUs the generator's workers may run on; anywhere if not given.
        #[arg(long)]
        generator_cpus: Option<String>,
        /// `nice` level of the generator's workers: above 0, the server
        /// under test takes a core first whenever it has work.
        #[arg(long, default_value_t = 0)]
        generator_nice: i32,
    },
    /// Ferry alone, as several instances sharing rooms through a real
    /// `redis-server`: each pair's members sit on different instances.
    Cluster {
        /// Connections in all (pairs × 2).
        #[arg(long, default_value_t = 50_000)]
        connections: usize,
        /// Signaling instances.
        #[arg(long, default_value_t = 3)]
        instances: usize,
        /// Total messages per second in the rate phase.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of the rate and blast phases.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// One worker process (spawned by `bench`).
    Worker {
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        port: u16,
        /// Port for the second member of each pair (another instance of a
        /// cluster); the same as `--port` by default.
        #[arg(long)]
        port_b: Option<u16>,
        #[arg(long)]
        pairs: usize,
        #[arg(long)]
        src_ip: std::net::Ipv4Addr,
        #[arg(long)]
        prefix: String,
    },
}

// ---- Worker -----------------------------------------------------------------

const MARK: &str = "ferryload:";

/// A data-channel session description as Chromium writes one (its
/// answer differs in `a=setup`).
const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Vq3T\r\na=ice-pwd:Jm2dGzTzP6Jy1gQ1V3pTqB2k\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";
/// Latency histogram: 10 µs buckets up to 1 s.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 100_000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Stats {
    /// In the blast phase every arrival is answered with a new message the
    /// other way, so each pair keeps a fixed number in flight.
    echo: std::sync::atomic::AtomicBool,
    received: AtomicU64,
    /// Answers that reached the member that sent the offer.
    answered: AtomicU64,
    hist: Vec<AtomicU64>,
    errors: AtomicU64,
}

/// A candidate-like signal to one peer, cut around the spot where each
/// message carries its send time: stamping one is a single allocation.
#[derive(Clone)]
struct Addressed {
    kind: Kind,
    to: Arc<str>,
    head: Arc<str>,
    tail: Arc<str>,
}

impl Addressed {
    fn new(kind: Kind, to: &str) -> Self {
        const HOLE: &str = "@@";
        let whole = match kind {
            Kind::Ferry => json!({"type": "signal", "to": to, "signal": {"kind": "candidate", "candidate": HOLE}}),
            Kind::Peerjs => json!({"type": "CANDIDATE", "dst": to, "payload": {"candidate": HOLE}}),
        }
        .to_string();
        let (head, tail) = whole.split_once(HOLE).unwrap_or((&whole, ""));
        Self {
            kind,
            to: to.into(),
            head: format!("{head}{MARK}").into(),
            tail: tail.into(),
        }
    }

    /// An SDP offer (`answer` false) or answer, as each server's clients
    /// send them.
    fn sdp(&self, answer: bool) -> String {
        let (kind, to) = (self.kind, &*self.to);
        let (word, sdp) = if answer {
            ("answer", SDP.replace("actpass", "active"))
        } else {
            ("offer", SDP.to_owned())
        };
        match kind {
            Kind::Ferry => json!({"type": "signal", "to": to, "signal": {"kind": word, "sdp": sdp}}),
            Kind::Peerjs => json!({
                "type": word.to_uppercase(),
                "dst": to,
                "payload": {"sdp": {"type": word, "sdp": sdp}, "type": "data", "connectionId": "dc_load", "label": "dc_load", "reliable": true, "serialization": "binary"},
            }),
        }
        .to_string()
    }

    /// The frame, stamped with the time now.
    fn stamped(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.head.len() + 24);
        s.push_str(&self.head);
        let _ = write!(s, "{}", now_ns());
        s.push_str(&self.tail);
        s
    }
}

/// One client connection: reads what the server relays (recording its
/// latency, and answering it in the closed loop) and writes what the
/// generator queues, flushing once for everything at hand, so that a burst
/// costs one system call, not one per frame.
async fn client(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut rx: mpsc::UnboundedReceiver<String>,
    back: Addressed,
    stats: Arc<Stats>,
) {
    use futures_util::FutureExt;
    loop {
        let mut dirty = false;
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m)) => dirty |= arrived(&mut ws, &m, &back, &stats).await,
                _ => return,
            },
            t = rx.recv() => match t {
                Some(t) => {
                    if ws.feed(Message::text(t)).await.is_err() { return; }
                    dirty = true;
                }
                None => return,
            },
        }
        // Take what is already at hand before flushing once.
        loop {
            if let Ok(t) = rx.try_recv() {
                if ws.feed(Message::text(t)).await.is_err() {
                    return;
                }
                dirty = true;
                continue;
            }
            match ws.next().now_or_never() {
                Some(Some(Ok(m))) => dirty |= arrived(&mut ws, &m, &back, &stats).await,
                Some(_) => return,
                None => break,
            }
        }
        if dirty && ws.flush().await.is_err() {
            return;
        }
    }
}

/// Records one frame from the server; true if it queued an answer.
async fn arrived(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    m: &Message,
    back: &Addressed,
    stats: &Stats,
) -> bool {
    let Message::Text(t) = m else { return false };
    let Some(at) = t.find(MARK) else {
        let (offer, answer) = match back.kind {
            Kind::Ferry => (r#""kind":"offer""#, r#""kind":"answer""#),
            Kind::Peerjs => (r#""type":"OFFER""#, r#""type":"ANSWER""#),
        };
        if t.contains(offer) {
            return ws.feed(Message::text(back.sdp(true))).await.is_ok();
        }
        if t.contains(answer) {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        } else if t.contains("error") || t.contains("ERROR") {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        return false;
    };
    let digits = &t[at + MARK.len()..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let Ok(sent) = digits[..end].parse::<u64>() else {
        return false;
    };
    let us = now_ns().saturating_sub(sent) / 1000;
    let b = ((us / BUCKET_US) as usize).min(BUCKETS - 1);
    stats.hist[b].fetch_add(1, Ordering::Relaxed);
    stats.received.fetch_add(1, Ordering::Relaxed);
    stats.echo.load(Ordering::Relaxed) && ws.feed(Message::text(back.stamped())).await.is_ok()
}

/// Each client's WebSocket read buffer.
const READ_BUFFER: usize = 4096;

async fn connect(
    kind: Kind,
    port: u16,
    src: std::net::Ipv4Addr,
    id: &str,
    room: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((src, 0).into())?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    stream.set_nodelay(true)?;
    let url = match kind {
        Kind::Ferry => format!("ws://127.0.0.1:{port}/ws"),
        Kind::Peerjs => format!("ws://127.0.0.1:{port}/peerjs?key=peerjs&id={id}&token=t{id}"),
    };
    // tungstenite's default read buffer is 128 KiB, zero-filled for every
    // read: a fifth of the generator's CPU went to memset, and every
    // client held that much memory. These frames are a few hundred bytes.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    match kind {
        Kind::Ferry => {
            ws.send(Message::text(
                json!({"type": "join", "version": 1, "room": room, "name": "", "rejoin_as": id})
                    .to_string(),
            ))
            .await?;
            loop {
                let m = ws.next().await.context("closed before joined")??;
                if let Message::Text(t) = m {
                    if t.contains("\"joined\"") {
                        if !t.contains(&format!("\"peer_id\":\"{id}\"")) {
                            bail!("server gave another id: {t}");
                        }
                        break;
                    }
                    bail!("unexpected: {t}");
                }
            }
        }
        Kind::Peerjs => loop {
            let m = ws.next().await.context("closed before OPEN")??;
            if let Message::Text(t) = m {
                if t.contains("\"OPEN\"") {
                    break;
                }
                bail!("unexpected: {t}");
            }
        },
    }
    Ok(ws)
}

async fn worker(
    kind: Kind,
    port: u16,
    port_b: u16,
    pairs: usize,
    src: std::net::Ipv4Addr,
    prefix: String,
) -> Result<()> {
    let stats = Arc::new(Stats {
        echo: std::sync::atomic::AtomicBool::new(false),
        received: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
    });
    // Connect in waves, so that the server's accept queue never overflows.
    let mut senders: Vec<(mpsc::UnboundedSender<String>, Addressed)> =
        Vec::with_capacity(pairs * 2);
    let wave = 100;
    let ids: Vec<(String, String, String)> = (0..pairs)
        .map(|i| {
            (
                format!("{prefix}a{i}"),
                format!("{prefix}b{i}"),
                format!("{prefix}-r{i}"),
            )
        })
        .collect();
    for chunk in ids.chunks(wave) {
        let mut tasks = Vec::new();
        for (a, b, room) in chunk {
            for (me, other, port) in [(a, b, port), (b, a, port_b)] {
                let (me, other, room) = (me.clone(), other.clone(), room.clone());
                tasks.push(tokio::spawn(async move {
                    connect(kind, port, src, &me, &room)
                        .await
                        .map(|ws| (ws, other))
                }));
            }
        }
        for t in tasks {
            let (ws, other) = t.await??;
            let (tx, rx) = mpsc::unbounded_channel::<String>();
            let to = Addressed::new(kind, &other);
            tokio::spawn(client(ws, rx, to.clone(), stats.clone()));
            senders.push((tx, to));
        }
    }
    let mut out = tokio::io::stdout();
    out.write_all(format!("ready {}\n", senders.len()).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // PeerServer drops clients that send nothing for a minute.
    let keepalive = {
        let senders: Vec<_> = senders.iter().map(|(tx, _)| tx.clone()).collect();
        tokio::spawn(async move {
            if kind == Kind::Peerjs {
                loop {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    for tx in &senders {
                        let _ = tx.send(r#"{"type":"HEARTBEAT"}"#.to_owned());
                    }
                }
            }
        })
    };
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["send", rate, secs] => {
                let rate: u64 = rate.parse()?;
                let secs: u64 = secs.parse()?;
                for h in &stats.hist {
                    h.store(0, Ordering::Relaxed);
                }
                let before = stats.received.load(Ordering::Relaxed);
                let errors_before = stats.errors.load(Ordering::Relaxed);
                let started = Instant::now();
                let mut sent = 0u64;
                let mut next = 0usize;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while started.elapsed() < Duration::from_secs(secs) {
                    tick.tick().await;
                    let due = (rate as f64 * started.elapsed().as_secs_f64()) as u64;
                    while sent < due {
                        let (tx, to) = &senders[next % senders.len()];
                        next += 1;
                        let _ = tx.send(to.stamped());
                        sent += 1;
                    }
                }
                let sending = started.elapsed().as_secs_f64();
                // Let the last ones arrive.
                let mut last = u64::MAX;
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = stats.received.load(Ordering::Relaxed);
                    if now - before >= sent || now == last {
                        break;
                    }
                    last = now;
                }
                let received = stats.received.load(Ordering::Relaxed) - before;
                let hist: Vec<u64> = stats
                    .hist
                    .iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .collect();
                // Sparse: [bucket, count] pairs.
                let sparse: Vec<[u64; 2]> = hist
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, c)| [i as u64, *c])
                    .collect();
                let result = json!({
                    "sent": sent,
                    "received": received,
                    "secs": sending,
                    "errors": stats.errors.load(Ordering::Relaxed) - errors_before,
                    "hist": sparse,
                });
                out.write_all(format!("result {result}\n").as_bytes())
                    .await?;
                out.flush().await?;
            }
            ["blast", window, secs] => {
                // Closed loop: `window` messages in flight per pair, each
                // arrival answered at once; what arrives per second is the
                // relay rate the server sustains without dropping anything.
                let window: usize = window.parse()?;
                let secs: u64 = secs.parse()?;
                let before = stats.received.load(Ordering::Relaxed);
                stats.echo.store(true, Ordering::Relaxed);
                let started = Instant::now();
                for (tx, to) in senders.iter().step_by(2) {
                    for _ in 0..window {
                        let _ = tx.send(to.stamped());
                    }
                }
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let received = stats.received.load(Ordering::Relaxed) - before;
                let took = started.elapsed().as_secs_f64();
                stats.echo.store(false, Ordering::Relaxed);
                // Drain what is still in flight before anything else.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let result = json!({"received": received, "secs": took, "in_flight": senders.len() / 2 * window});
                out.write_all(format!("result {result}\n").as_bytes())
                    .await?;
                out.flush().await?;
            }
            ["negotiate"] => {
                // Each pair negotiates once, as peers do after joining: the
                // first member sends an SDP offer and the second answers it.
                let started = Instant::now();
                let before = stats.answered.load(Ordering::Relaxed);
                for (tx, to) in senders.iter().step_by(2) {
                    let _ = tx.send(to.sdp(false));
                }
                let answered = || stats.answered.load(Ordering::Relaxed) - before;
                while answered() < pairs as u64 {
                    if started.elapsed() > Duration::from_secs(120) {
                        bail!("only {} of {pairs} offers were answered", answered());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let result =
                    json!({"answered": answered(), "secs": started.elapsed().as_secs_f64()});
                out.write_all(format!("result {result}\n").as_bytes())
                    .await?;
                out.flush().await?;
            }
            ["quit"] | [] => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    keepalive.abort();
    Ok(())
}

// ---- Orchestration ----------------------------------------------------------

struct Worker {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn expect(&mut self, word: &str, timeout: Duration) -> Result<String> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .with_context(|| format!("worker did not answer {word} in time"))??
            .context("worker exited")?;
        line.strip_prefix(word)
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("worker said {line}"))
    }

    async fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }
}

/// A server process's (RSS bytes, CPU seconds so far).
fn proc_stat(pid: u32) -> Option<(u64, f64)> {
    Some((
        ferry_e2e::process_rss(pid)?,
        ferry_e2e::process_cpu_seconds(pid)?,
    ))
}

fn percentile(hist: &[u64], p: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let want = (total as f64 * p).ceil() as u64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= want {
            return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
        }
    }
    f64::NAN
}

/// Where the server under test and the generator run: CPU lists for
/// `taskset` (`None`: anywhere) and the generator's `nice` level.
#[derive(Debug, Clone, Default)]
struct Layout {
    server_cpus: Option<String>,
    generator_cpus: Option<String>,
    generator_nice: i32,
}

impl Layout {
    fn describe(&self) -> Value {
        json!({
            "server_cpus": self.server_cpus.as_deref().unwrap_or("any"),
            "generator_cpus": self.generator_cpus.as_deref().unwrap_or("any"),
            "generator_nice": self.generator_nice,
        })
    }
}

/// `program`, started through `taskset` when `cpus` is given and through
/// `nice` when `nice` is not 0 (both exec the program, so the pid stays).
fn placed(program: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>, nice: i32) -> Command {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(cpus) = cpus {
        args.extend(["taskset".into(), "-c".into(), cpus.into()]);
    }
    if nice != 0 {
        args.extend(["nice".into(), "-n".into(), nice.to_string().into()]);
    }
    args.push(program.as_ref().to_owned());
    let mut c = Command::new(&args[0]);
    c.args(&args[1..]);
    c
}

async fn start_ferry(port: u16, extra: &[&str]) -> Result<Child> {
    start_command(ferry_command(port, extra, None)?, port).await
}

fn ferry_command(port: u16, extra: &[&str], cpus: Option<&str>) -> Result<Command> {
    let bin = std::env::var("FERRY_SIGNALING_BIN").context("FERRY_SIGNALING_BIN")?;
    let mut c = placed(bin, cpus, 0);
    c.args(["--listen", &format!("127.0.0.1:{port}")])
        // Load-test settings: the limits are for abuse, not for a benchmark.
        .args(["--connections-per-ip-per-min", "0"])
        .args(["--messages-per-sec", "100000", "--message-burst", "100000"])
        .args(["--max-rooms", "1000000"])
        .args(extra)
        .env("FERRY_LOG", "warn");
    Ok(c)
}

async fn start_server(kind: Kind, port: u16, cpus: Option<&str>) -> Result<Child> {
    let cmd = match kind {
        Kind::Ferry => ferry_command(port, &[], cpus)?,
        Kind::Peerjs => {
            let dir = std::env::var("FERRY_PEERSERVER_DIR").context("FERRY_PEERSERVER_DIR")?;
            let mut c = placed("node", cpus, 0);
            c.arg(format!("{dir}/peerserver.js")).arg(port.to_string());
            c
        }
    };
    start_command(cmd, port).await
}

async fn start_command(mut cmd: Command, port: u16) -> Result<Child> {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the server")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("server did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let it settle before its baseline memory is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(child)
}

/// One sending phase across all workers; the merged figures.
/// Summed (RSS bytes, CPU seconds) of the server processes.
fn servers_stat(pids: &[u32]) -> Result<(u64, f64)> {
    let mut out = (0u64, 0f64);
    for &p in pids {
        let (r, c) = proc_stat(p).context("server stats")?;
        out.0 += r;
        out.1 += c;
    }
    Ok(out)
}

/// The summed relay-latency histograms of Ferry servers, from their
/// `/metrics`: (bucket upper bound in seconds, cumulative count).
async fn relay_histogram(ports: &[u16]) -> Vec<(f64, u64)> {
    let mut sum: Vec<(f64, u64)> = Vec::new();
    for &port in ports {
        let Ok(text) = ferry_e2e::http_get(port, "/metrics").await else {
            continue;
        };
        let buckets = text.lines().filter_map(|l| {
            let rest = l.strip_prefix("ferry_relay_latency_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse::<u64>().ok()?))
        });
        for (i, (le, n)) in buckets.enumerate() {
            match sum.get_mut(i) {
                Some(b) => b.1 += n,
                None => sum.push((le, n)),
            }
        }
    }
    sum
}

/// The upper bound (ms) of the bucket that holds quantile `q` of what the
/// histogram counted between `before` and `after`.
fn histogram_quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .enumerate()
        .map(|(i, &(le, n))| (le, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil() as u64;
    delta
        .iter()
        .find(|(_, n)| *n >= want)
        .map(|(le, _)| le * 1000.0)
}

async fn phase(
    workers: &mut [Worker],
    kind: Kind,
    pids: &[u32],
    metrics_ports: &[u16],
    name: &str,
    total_rate: u64,
    secs: u64,
) -> Result<Value> {
    let hist0 = relay_histogram(metrics_ports).await;
    let (_, t0) = servers_stat(pids)?;
    let n = workers.len() as u64;
    for w in workers.iter_mut() {
        w.say(&format!("send {} {secs}", total_rate / n)).await?;
    }
    let mut hist = vec![0u64; BUCKETS];
    let (mut sent, mut received, mut errors, mut took) = (0u64, 0u64, 0u64, 0f64);
    for w in workers.iter_mut() {
        let r: Value =
            serde_json::from_str(&w.expect("result", Duration::from_secs(secs + 60)).await?)?;
        sent += r["sent"].as_u64().unwrap_or(0);
        received += r["received"].as_u64().unwrap_or(0);
        errors += r["errors"].as_u64().unwrap_or(0);
        took = took.max(r["secs"].as_f64().unwrap_or(0.0));
        for pair in r["hist"].as_array().into_iter().flatten() {
            let b = pair[0].as_u64().unwrap_or(0) as usize;
            hist[b.min(BUCKETS - 1)] += pair[1].as_u64().unwrap_or(0);
        }
    }
    let (_, t1) = servers_stat(pids)?;
    let hist1 = relay_histogram(metrics_ports).await;
    let cpu = (t1 - t0) / took.max(0.001);
    let out = json!({
        "server_relay_p50_ms": histogram_quantile_ms(&hist0, &hist1, 0.5),
        "server_relay_p99_ms": histogram_quantile_ms(&hist0, &hist1, 0.99),
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received),
        "errors": errors,
        "relayed_per_s": (received as f64 / took.max(0.001)).round(),
        "p50_ms": (percentile(&hist, 0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&hist, 0.99) * 1000.0).round() / 1000.0,
        "server_cpu": (cpu * 100.0).round() / 100.0,
    });
    println!("{kind:?} {name}: {out}");
    Ok(out)
}

/// Every pair exchanges an SDP offer and answer; then, once things settle,
/// the servers' RSS per connection again, now that each connection has
/// carried a kilobyte-sized frame each way.
async fn offer_answer_phase(
    workers: &mut [Worker],
    kind: Kind,
    pids: &[u32],
    empty_rss: u64,
    held: usize,
) -> Result<Value> {
    for w in workers.iter_mut() {
        w.say("negotiate").await?;
    }
    let (mut answered, mut took) = (0u64, 0f64);
    for w in workers.iter_mut() {
        let r: Value = serde_json::from_str(&w.expect("result", Duration::from_secs(180)).await?)?;
        answered += r["answered"].as_u64().unwrap_or(0);
        took = took.max(r["secs"].as_f64().unwrap_or(0.0));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: u64 = pids.iter().filter_map(|&p| ferry_e2e::process_rss(p)).sum();
    let out = json!({
        "answered": answered,
        "secs": (took * 100.0).round() / 100.0,
        "server_rss_mb": (rss as f64 / 1e6 * 10.0).round() / 10.0,
        "rss_per_conn_kib": (rss.saturating_sub(empty_rss) as f64 / held.max(1) as f64 / 1024.0 * 100.0).round() / 100.0,
    });
    println!("{kind:?} offer/answer: {out}");
    Ok(out)
}

/// The closed-loop phase: the relayed rate the server sustains.
async fn blast_phase(workers: &mut [Worker], kind: Kind, pids: &[u32], secs: u64) -> Result<Value> {
    let (_, t0) = servers_stat(pids)?;
    for w in workers.iter_mut() {
        w.say(&format!("blast 4 {secs}")).await?;
    }
    let (mut received, mut took, mut in_flight) = (0u64, 0f64, 0u64);
    for w in workers.iter_mut() {
        let r: Value =
            serde_json::from_str(&w.expect("result", Duration::from_secs(secs + 60)).await?)?;
        received += r["received"].as_u64().unwrap_or(0);
        took = took.max(r["secs"].as_f64().unwrap_or(0.0));
        in_flight += r["in_flight"].as_u64().unwrap_or(0);
    }
    let (_, t1) = servers_stat(pids)?;
    let out = json!({
        "relayed_per_s": (received as f64 / took.max(0.001)).round(),
        "in_flight": in_flight,
        "server_cpu": (((t1 - t0) / took.max(0.001)) * 100.0).round() / 100.0,
    });
    println!("{kind:?} blast: {out}");
    Ok(out)
}

fn spawn_worker(
    me: &std::path::Path,
    kind: Kind,
    port: u16,
    port_b: u16,
    pairs: usize,
    i: usize,
    layout: Option<&Layout>,
) -> Result<Worker> {
    let (cpus, nice) = layout.map_or((None, 0), |l| {
        (l.generator_cpus.as_deref(), l.generator_nice)
    });
    let mut child = placed(me, cpus, nice)
        .args([
            "worker",
            "--kind",
            if kind == Kind::Ferry {
                "ferry"
            } else {
                "peerjs"
            },
        ])
        .args(["--port", &port.to_string(), "--port-b", &port_b.to_string()])
        .args(["--pairs", &pairs.to_string()])
        .args([
            "--src-ip",
            &format!("127.0.0.{}", 2 + i),
            "--prefix",
            &format!("w{i}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    Ok(Worker { child, lines })
}

/// Pairs per worker process: 9,000 connections, under the 20,000 open
/// files a process may hold here.
const PAIRS_PER_WORKER: usize = 4_500;

async fn run_cluster(connections: usize, instances: usize, rate: u64, secs: u64) -> Result<()> {
    let redis_port = ferry_e2e::free_port()?;
    let _redis = ferry_e2e::Redis::start_on(redis_port).await?;
    let url = format!("redis://127.0.0.1:{redis_port}");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..instances.max(1) {
        let port = ferry_e2e::free_port()?;
        servers.push(start_ferry(port, &["--redis", &url]).await?);
        ports.push(port);
    }
    let pids: Vec<u32> = servers.iter().filter_map(|s| s.id()).collect();
    let rss0: Vec<u64> = pids
        .iter()
        .filter_map(|&p| ferry_e2e::process_rss(p))
        .collect();
    let me = std::env::current_exe()?;
    let mut workers = Vec::new();
    let started = Instant::now();
    let (mut left, mut i) = (connections / 2, 0usize);
    while left > 0 {
        let n = left.min(PAIRS_PER_WORKER);
        let (a, b) = (ports[i % ports.len()], ports[(i + 1) % ports.len()]);
        workers.push(spawn_worker(&me, Kind::Ferry, a, b, n, i, None)?);
        left -= n;
        i += 1;
    }
    let mut held = 0usize;
    for w in &mut workers {
        held += w
            .expect("ready", Duration::from_secs(600))
            .await?
            .parse::<usize>()?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1: Vec<u64> = pids
        .iter()
        .filter_map(|&p| ferry_e2e::process_rss(p))
        .collect();
    let per_conn =
        rss1.iter().sum::<u64>().saturating_sub(rss0.iter().sum()) as f64 / held.max(1) as f64;
    println!(
        "Ferry x{}: {held} connections in {connect_secs:.1} s, every pair split across two instances; server RSS {:?} MB, {:.2} KiB per connection",
        ports.len(),
        rss1.iter().map(|r| r / 1_000_000).collect::<Vec<_>>(),
        per_conn / 1024.0
    );
    let negotiated =
        offer_answer_phase(&mut workers, Kind::Ferry, &pids, rss0.iter().sum(), held).await?;
    let steady = phase(
        &mut workers,
        Kind::Ferry,
        &pids,
        &ports,
        "cluster rate",
        rate,
        secs,
    )
    .await?;
    let blast = blast_phase(&mut workers, Kind::Ferry, &pids, secs).await?;
    for w in &mut workers {
        let _ = w.say("quit").await;
    }
    println!(
        "{}",
        json!({
            "bench": "signaling-cluster",
            "instances": ports.len(),
            "connections": held,
            "connect_secs": (connect_secs * 10.0).round() / 10.0,
            "rss_per_conn_kib": (per_conn / 1024.0 * 100.0).round() / 100.0,
            "offer_answer": negotiated,
            "rate": steady,
            "blast": blast,
        })
    );
    Ok(())
}

async fn run_one(
    kind: Kind,
    connections: usize,
    rate: u64,
    secs: u64,
    layout: &Layout,
) -> Result<Value> {
    let port = ferry_e2e::free_port()?;
    let server = start_server(kind, port, layout.server_cpus.as_deref()).await?;
    let pid = server.id().context("no pid")?;
    let (rss0, c0) = proc_stat(pid).context("server stats")?;
    let per_worker_pairs = PAIRS_PER_WORKER;
    let pairs = connections / 2;
    let me = std::env::current_exe()?;
    let mut workers = Vec::new();
    let started = Instant::now();
    let mut left = pairs;
    let mut i = 0;
    while left > 0 {
        let n = left.min(per_worker_pairs);
        workers.push(spawn_worker(&me, kind, port, port, n, i, Some(layout))?);
        left -= n;
        i += 1;
    }
    let mut held = 0usize;
    for w in &mut workers {
        held += w
            .expect("ready", Duration::from_secs(300))
            .await?
            .parse::<usize>()?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, c1) = proc_stat(pid).context("server stats")?;
    let per_conn = (rss1.saturating_sub(rss0)) as f64 / held.max(1) as f64;
    let connect_cpu = c1 - c0;
    println!(
        "{kind:?}: {held} connections in {connect_secs:.1} s (server CPU {connect_cpu:.1} s); server RSS {:.1} MB -> {:.1} MB, {:.2} KiB per connection",
        rss0 as f64 / 1e6,
        rss1 as f64 / 1e6,
        per_conn / 1024.0
    );
    let negotiated = offer_answer_phase(&mut workers, kind, &[pid], rss0, held).await?;
    let metrics_ports: &[u16] = if kind == Kind::Ferry { &[port] } else { &[] };
    let steady = phase(
        &mut workers,
        kind,
        &[pid],
        metrics_ports,
        "rate",
        rate,
        secs,
    )
    .await?;
    let blast = blast_phase(&mut workers, kind, &[pid], secs).await?;
    for w in &mut workers {
        let _ = w.say("quit").await;
    }
    drop(server);
    Ok(json!({
        "connections": held,
        "connect_secs": (connect_secs * 10.0).round() / 10.0,
        "connect_server_cpu_s": (connect_cpu * 100.0).round() / 100.0,
        "rss_per_conn_kib": (per_conn / 1024.0 * 100.0).round() / 100.0,
        "offer_answer": negotiated,
        "rate": steady,
        "blast": blast,
    }))
}

async fn bench(connections: usize, rate: u64, secs: u64, layout: &Layout) -> Result<()> {
    let ours = run_one(Kind::Ferry, connections, rate, secs, layout).await?;
    let theirs = run_one(Kind::Peerjs, connections, rate, secs, layout).await?;
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    let f = |v: &Value, path: &[&str]| {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        json!({
            "bench": "signaling",
            "connections": connections,
            "rate_per_s": rate,
            "layout": layout.describe(),
            "ours": ours,
            "peerserver": theirs,
            "rss_per_conn_ratio": ratio(f(&ours, &["rss_per_conn_kib"]), f(&theirs, &["rss_per_conn_kib"])),
            "rss_after_offer_answer_ratio": ratio(f(&ours, &["offer_answer", "rss_per_conn_kib"]), f(&theirs, &["offer_answer", "rss_per_conn_kib"])),
            "max_rate_ratio": ratio(f(&ours, &["blast", "relayed_per_s"]), f(&theirs, &["blast", "relayed_per_s"])),
            "p99_ratio": ratio(f(&ours, &["rate", "p99_ms"]), f(&theirs, &["rate", "p99_ms"])),
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A worker runs on one thread: several of them share the two cores
    // with the server under test, and every extra thread competes with it
    // and adds scheduling delay to the latencies being measured.
    let runtime = if matches!(cli, Cli::Worker { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli {
        Cli::Bench {
            connections,
            rate,
            secs,
            only_ours,
            server_cpus,
            generator_cpus,
            generator_nice,
        } => {
            let layout = Layout {
                server_cpus,
                generator_cpus,
                generator_nice,
            };
            println!("layout: {}", layout.describe());
            if only_ours {
                let ours = run_one(Kind::Ferry, connections, rate, secs, &layout).await?;
                println!(
                    "{}",
                    json!({"bench": "signaling", "layout": layout.describe(), "ours": ours})
                );
                Ok(())
            } else {
                bench(connections, rate, secs, &layout).await
            }
        }
        Cli::Cluster {
            connections,
            instances,
            rate,
            secs,
        } => run_cluster(connections, instances, rate, secs).await,
        Cli::Worker {
            kind,
            port,
            port_b,
            pairs,
            src_ip,
            prefix,
        } => worker(kind, port, port_b.unwrap_or(port), pairs, src_ip, prefix).await,
    }
}
