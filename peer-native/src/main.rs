//! `ferry`: send and receive files and chat with browser or native peers.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_core::call::CallEvent;
use ferry_core::transfer::{TransferConfig, TransferEvent};
use ferry_core::{Config, Event, LinkState};
use ferry_native::source::{self, LocalFile};
use ferry_native::{MediaConfig, NetConfig, Node, NodeConfig, NodeEvent};
use ferry_protocol::{ErrorCode, PeerId, RoomCode};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

/// Exit codes, also listed in `ferry --help`.
mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const FAILED: u8 = 1;
    pub(crate) const REFUSED_BY_PEER: u8 = 3;
    pub(crate) const UNSAFE: u8 = 4;
    pub(crate) const NO_SERVER: u8 = 5;
    pub(crate) const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Send files and chat peer to peer, with browsers or other ferry peers",
    after_help = "Exit codes: 0 done; 1 failed (the partial files are kept for a resume); 2 bad usage; \
3 the other side declined or cancelled; 4 refused for safety (unsafe file names, would overwrite, \
not enough space); 5 signaling server unreachable or room refused; 130 interrupted."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// The Ferry server that introduces peers (its web address).
    #[arg(
        long,
        global = true,
        env = "FERRY_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Name shown to the others.
    #[arg(long, global = true, env = "FERRY_NAME")]
    name: Option<String>,
    /// Room password (set it when creating a room, give it to join one).
    #[arg(long, global = true, env = "FERRY_PASSWORD")]
    password: Option<String>,
    /// Local UDP address for WebRTC (repeatable). `0.0.0.0:0` means every
    /// network interface; loopback must be named.
    #[arg(long = "bind", global = true, default_values = ["0.0.0.0:0", "127.0.0.1:0"])]
    bind: Vec<String>,
    /// Connect only through TURN relays (hides this machine's addresses).
    #[arg(long, global = true)]
    relay_only: bool,
    /// Log what happens (-v info, -vv debug); also `FERRY_LOG`.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Create a room and send files and folders to whoever joins it.
    Send {
        /// Files and folders to send.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Use this room code instead of a fresh random one.
        #[arg(long)]
        room: Option<String>,
    },
    /// Join a room by code or link and receive what is offered.
    Receive {
        /// The room code, or the link the sender printed.
        code: String,
        /// Folder to save into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Accept without asking.
        #[arg(long, short)]
        yes: bool,
        /// Replace existing files of the same name.
        #[arg(long)]
        overwrite: bool,
    },
    /// Join a room by code or link and chat: lines you type go to everyone.
    Chat {
        /// The room code, or a link to the room.
        code: String,
    },
    /// Join a room's video call by code or link: answer when called, or
    /// start a call with everyone there. Media is recorded and played from
    /// files, never decoded.
    Call {
        /// The room code, or a link to the room.
        code: String,
        /// Record each remote peer's video (VP8, as `<peer>-<n>.ivf`) and
        /// audio (Opus, as `<peer>-<n>.ogg`) into this folder.
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// Send this IVF file (VP8) as our video, paced by its timestamps.
        #[arg(long, value_name = "VIDEO.ivf")]
        play: Option<PathBuf>,
        /// Send this Ogg file (Opus) as our audio.
        #[arg(long, value_name = "AUDIO.ogg")]
        play_audio: Option<PathBuf>,
        /// Play the files again and again until the call ends.
        #[arg(long = "loop")]
        repeat: bool,
        /// Only answer: never start a call.
        #[arg(long)]
        wait: bool,
    },
}

/// The server's web address, its WebSocket, and a room link on it.
struct Server {
    base: String,
}

impl Server {
    fn new(url: &str) -> Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--server must be an http:// or https:// address, not {url:?}"
        );
        Ok(Self { base })
    }

    fn ws_url(&self) -> String {
        let rest = self.base.split_once("://").map_or("", |(_, r)| r);
        let scheme = if self.base.starts_with("https://") {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{rest}/ws")
    }

    fn link(&self, room: &RoomCode) -> String {
        format!("{}/#{}", self.base, room)
    }
}

/// Splits `http://host/#code` into its server and code; a bare code keeps
/// the server given.
fn parse_code(input: &str, server: &str) -> Result<(Server, RoomCode)> {
    let (server, code) = match input.split_once("/#") {
        Some((base, code)) if base.contains("://") => (base.to_owned(), code.to_owned()),
        _ => (server.to_owned(), input.to_owned()),
    };
    let code =
        RoomCode::new(code.trim()).with_context(|| format!("{input:?} is not a room code"))?;
    Ok((Server::new(&server)?, code))
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "desktop".into());
    let mut name = format!("ferry on {host}");
    name.truncate(ferry_protocol::MAX_NAME_LEN);
    name
}

fn start(
    common: &Common,
    server: &Server,
    room: RoomCode,
) -> (Node, mpsc::UnboundedReceiver<NodeEvent>) {
    start_with(common, server, room, None)
}

fn start_with(
    common: &Common,
    server: &Server,
    room: RoomCode,
    media: Option<MediaConfig>,
) -> (Node, mpsc::UnboundedReceiver<NodeEvent>) {
    let mut session = Config::new(room, common.name.clone().unwrap_or_else(default_name));
    session.password = common.password.clone();
    session.transfer = TransferConfig::default();
    let net = NetConfig {
        udp_addrs: common.bind.clone(),
        relay_only: common.relay_only,
        ..NetConfig::default()
    };
    Node::start(NodeConfig {
        server_url: server.ws_url(),
        session,
        net,
        media,
    })
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

fn size(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// Prints a line without tearing a progress bar.
fn say(pb: Option<&ProgressBar>, line: &str) {
    match pb {
        Some(pb) if !pb.is_hidden() => pb.println(line),
        _ => println!("{line}"),
    }
}

/// Exits with the code for a fatal server error, if it is one.
fn server_error(code: ErrorCode, message: &str) -> Option<u8> {
    eprintln!("server: {message}");
    code.is_fatal().then_some(exit::NO_SERVER)
}

async fn send(common: Common, paths: Vec<PathBuf>, room: Option<String>) -> Result<u8> {
    let server = Server::new(&common.server)?;
    let found = source::find(&paths)?;
    let total: u64 = found.iter().map(|f| f.size).sum();
    let chunk_size = TransferConfig::default().chunk_size;
    let hashing = bar(total, "hashing");
    let mut files: Vec<LocalFile> = Vec::with_capacity(found.len());
    let started = Instant::now();
    for f in &found {
        let (f, pb) = (f.clone(), hashing.clone());
        let local =
            tokio::task::spawn_blocking(move || source::hash(&f, chunk_size, |n| pb.inc(n)))
                .await??;
        files.push(local);
    }
    hashing.finish_and_clear();
    tracing::info!(
        files = files.len(),
        bytes = total,
        secs = started.elapsed().as_secs_f64(),
        "hashed"
    );

    let room = match room {
        Some(r) => RoomCode::new(r.trim()).context("not a room code")?,
        None => loop {
            let random: [u8; 64] = rand::random();
            if let Some(code) = ferry_core::room_code::from_random(&random) {
                break code;
            }
        },
    };
    let link = server.link(&room);
    println!(
        "Sending {} file{} ({}).",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        size(total)
    );
    println!("Code: {room}");
    println!(
        "Open {link} in a browser, or run: ferry receive {room} --server {}",
        server.base
    );
    if std::io::stdout().is_terminal()
        && let Ok(qr) = qrcode::QrCode::new(link.as_bytes())
    {
        println!(
            "{}",
            qr.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        );
    }
    println!("Waiting for the receiver…");

    let (node, mut events) = start(&common, &server, room);
    let outcome: Result<u8> = async {
        let mut offered: Vec<PeerId> = Vec::new();
        let mut pb: Option<ProgressBar> = None;
        let mut ours: Vec<String> = Vec::new();
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = tokio::signal::ctrl_c() => {
                    for id in &ours { node.cancel(id, "the sender stopped"); }
                    return Ok(exit::INTERRUPTED);
                }
            };
            let Some(NodeEvent::Engine(event)) = event else {
                if event.is_none() {
                    return Ok(exit::FAILED);
                }
                continue;
            };
            match event {
                Event::PeerState {
                    peer_id,
                    state: LinkState::Connected,
                } if !offered.contains(&peer_id) => {
                    let who = node.member_name(&peer_id).await.unwrap_or_default();
                    match node.offer(&peer_id, files.clone()).await {
                        Ok(id) => {
                            offered.push(peer_id);
                            ours.push(id);
                            say(
                                pb.as_ref(),
                                &format!(
                                    "Offered to {}; waiting for them to accept…",
                                    display(&who)
                                ),
                            );
                        }
                        Err(e) => say(
                            pb.as_ref(),
                            &format!("Could not offer to {}: {e}", display(&who)),
                        ),
                    }
                }
                Event::ServerError { code, message } => {
                    if let Some(c) = server_error(code, &message) {
                        return Ok(c);
                    }
                }
                Event::Transfer { event } => match event {
                    TransferEvent::Accepted { id } if ours.contains(&id) => {
                        let p = bar(total, "sending");
                        say(Some(&p), "Accepted; sending.");
                        pb = Some(p);
                    }
                    TransferEvent::Progress { id, done_bytes, .. } if ours.contains(&id) => {
                        if let Some(p) = &pb {
                            p.set_position(done_bytes);
                        }
                    }
                    TransferEvent::Completed { id } if ours.contains(&id) => {
                        if let Some(p) = pb.take() {
                            p.finish_and_clear();
                        }
                        println!(
                        "Done: the receiver verified every file (BLAKE3). {} bytes sent in all.",
                        node.transfer_bytes_sent()
                    );
                        return Ok(exit::OK);
                    }
                    TransferEvent::Declined { id, reason } if ours.contains(&id) => {
                        println!("The receiver declined: {reason}");
                        return Ok(exit::REFUSED_BY_PEER);
                    }
                    TransferEvent::Cancelled {
                        id,
                        by_peer,
                        reason,
                    } if ours.contains(&id) => {
                        println!(
                            "Cancelled{}: {reason}",
                            if by_peer { " by the receiver" } else { "" }
                        );
                        return Ok(exit::REFUSED_BY_PEER);
                    }
                    TransferEvent::Interrupted { id, reason } if ours.contains(&id) => {
                        say(
                            pb.as_ref(),
                            &format!("Interrupted: {reason}. Waiting for the receiver…"),
                        );
                    }
                    TransferEvent::Failed { id, reason } if ours.contains(&id) => {
                        println!("Failed: {reason}");
                        return Ok(exit::FAILED);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    .await;
    node.close().await;
    outcome
}

fn display(name: &str) -> String {
    if name.is_empty() {
        "a peer".into()
    } else {
        format!("“{name}”")
    }
}

async fn ask_yes_no(question: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        print!("{question} [y/N] ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok()
            && matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
    })
    .await
    .unwrap_or(false)
}

async fn receive(
    common: Common,
    code: String,
    dir: PathBuf,
    yes: bool,
    overwrite: bool,
) -> Result<u8> {
    let (server, room) = parse_code(&code, &common.server)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("opening {}", dir.display()))?;
    println!("Joining {room}…");
    let (node, mut events) = start(&common, &server, room);
    let outcome: Result<u8> = async {
    let mut current: Option<String> = None;
    let mut pb: Option<ProgressBar> = None;
    let mut saved = 0usize;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                if let Some(p) = pb.take() { p.abandon(); }
                println!("Stopped; run the same command again to resume.");
                return Ok(exit::INTERRUPTED);
            }
        };
        let Some(event) = event else {
            return Ok(exit::FAILED);
        };
        let event = match event {
            NodeEvent::Saved { path, .. } => {
                saved += 1;
                say(
                    pb.as_ref(),
                    &format!("✓ {}", path.strip_prefix(&dir).unwrap_or(&path).display()),
                );
                continue;
            }
            NodeEvent::StorageFailed { message, .. } => {
                say(pb.as_ref(), &format!("Storage error: {message}"));
                continue;
            }
            NodeEvent::Engine(e) => e,
            _ => continue,
        };
        match event {
            Event::Joined { .. } => println!("Joined; waiting for an offer…"),
            Event::ServerError { code, message } => {
                if let Some(c) = server_error(code, &message) {
                    return Ok(c);
                }
            }
            Event::Transfer { event } => match event {
                TransferEvent::Offered {
                    id,
                    peer,
                    files,
                    total_bytes,
                } => {
                    if current.is_some() {
                        node.decline(&id, "busy with another transfer");
                        continue;
                    }
                    let who = node.member_name(&peer).await.unwrap_or_default();
                    println!(
                        "{} offers {} file{} ({}):",
                        display(&who),
                        files.len(),
                        if files.len() == 1 { "" } else { "s" },
                        size(total_bytes)
                    );
                    for f in files.iter().take(10) {
                        println!("  {}  {}", f.path, size(f.size));
                    }
                    if files.len() > 10 {
                        println!("  … and {} more", files.len() - 10);
                    }
                    let plan = match node.plan(&id, dir.clone(), overwrite).await {
                        Ok(p) => p,
                        Err(e) => {
                            println!("Refused: {e}");
                            node.decline(&id, &format!("the receiver refused: {e}"));
                            return Ok(exit::UNSAFE);
                        }
                    };
                    if plan.resumed_bytes > 0 {
                        println!(
                            "{} already here from an earlier try; only the rest will be fetched.",
                            size(plan.resumed_bytes)
                        );
                    }
                    if !yes && !ask_yes_no(format!("Save into {}?", dir.display())).await {
                        node.decline(&id, "the receiver declined");
                        println!("Declined.");
                        return Ok(exit::REFUSED_BY_PEER);
                    }
                    match node.accept(&id, dir.clone(), overwrite).await {
                        Ok(plan) => {
                            let p = bar(total_bytes, "receiving");
                            p.set_position(plan.resumed_bytes);
                            pb = Some(p);
                            current = Some(id);
                        }
                        Err(e) => {
                            println!("Could not accept: {e}");
                            node.decline(&id, &format!("the receiver could not accept: {e}"));
                            return Ok(exit::UNSAFE);
                        }
                    }
                }
                TransferEvent::OfferRejected { reason, .. } => {
                    println!("Refused an unsafe offer: {reason}");
                    return Ok(exit::UNSAFE);
                }
                TransferEvent::Progress { id, done_bytes, .. } if current.as_ref() == Some(&id) => {
                    if let Some(p) = &pb {
                        p.set_position(done_bytes);
                    }
                }
                TransferEvent::Completed { id } if current.as_ref() == Some(&id) => {
                    if let Some(p) = pb.take() {
                        p.finish_and_clear();
                    }
                    println!(
                        "Received {saved} file{} into {}; every one matches its BLAKE3 hash.",
                        if saved == 1 { "" } else { "s" },
                        dir.display()
                    );
                    return Ok(exit::OK);
                }
                TransferEvent::Interrupted { id, reason } if current.as_ref() == Some(&id) => {
                    say(pb.as_ref(), &format!("Interrupted: {reason}"));
                }
                TransferEvent::Cancelled { id, reason, .. } if current.as_ref() == Some(&id) => {
                    if let Some(p) = pb.take() {
                        p.abandon();
                    }
                    println!("Cancelled by the sender: {reason}");
                    return Ok(exit::REFUSED_BY_PEER);
                }
                TransferEvent::Failed { id, reason } if current.as_ref() == Some(&id) => {
                    if let Some(p) = pb.take() {
                        p.abandon();
                    }
                    println!(
                        "Failed: {reason}. Verified parts are kept; run the same command again to resume."
                    );
                    return Ok(exit::FAILED);
                }
                _ => {}
            },
            _ => {}
        }
    }
    }
    .await;
    node.close().await;
    outcome
}

async fn chat(common: Common, code: String) -> Result<u8> {
    let (server, room) = parse_code(&code, &common.server)?;
    let (node, mut events) = start(&common, &server, room.clone());
    let outcome: Result<u8> = async {
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) if !line.trim().is_empty() => match node.chat(&line).await {
                    Ok(n) => tracing::debug!("sent to {n}"),
                    Err(e) => println!("! {e}"),
                },
                Some(_) => {}
                None => {
                    return Ok(exit::OK);
                }
            },
            event = events.recv() => match event {
                Some(NodeEvent::Engine(event)) => {
                    if let Some(c) = room_event(&node, &event).await {
                        return Ok(c);
                    }
                    if let Event::Chat { from, text } = event {
                        let who = node.member_name(&from).await.unwrap_or_else(|| from.to_string());
                        println!("<{who}> {text}");
                    }
                }
                Some(_) => {}
                None => return Ok(exit::FAILED),
            },
            _ = tokio::signal::ctrl_c() => return Ok(exit::INTERRUPTED),
        }
    }
    }
    .await;
    node.close().await;
    outcome
}

/// Prints the room events that `chat` and `call` show alike; the exit code
/// if the server refused us for good.
async fn room_event(node: &Node, event: &Event) -> Option<u8> {
    match event {
        Event::Joined { room, .. } => println!("* joined {room}"),
        Event::PeerState {
            peer_id,
            state: LinkState::Connected,
        } => {
            let who = node.member_name(peer_id).await.unwrap_or_default();
            println!("* {} is connected", display(&who));
        }
        Event::PeerLeft { peer_id } => println!("* {peer_id} left"),
        Event::ServerError { code, message } => return server_error(*code, message),
        _ => {}
    }
    None
}

/// How long `call` waits to be called after someone connects before it
/// calls them itself.
const CALL_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

async fn call(common: Common, code: String, media: MediaConfig, wait: bool) -> Result<u8> {
    media.check()?;
    let (server, room) = parse_code(&code, &common.server)?;
    let (node, mut events) = start_with(&common, &server, room, Some(media));
    let outcome: Result<u8> = async {
        let mut in_call = false;
        let mut call_at: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match call_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = timer => {
                    call_at = None;
                    if !in_call {
                        match node.start_call().await {
                            Ok(()) => println!("* calling everyone in the room…"),
                            Err(e) => println!("! cannot start a call: {e}"),
                        }
                    }
                }
                event = events.recv() => match event {
                    Some(NodeEvent::Engine(event)) => {
                        if let Some(c) = room_event(&node, &event).await {
                            return Ok(c);
                        }
                        match event {
                            Event::PeerState { state: LinkState::Connected, .. }
                                if !wait && !in_call && call_at.is_none() =>
                            {
                                call_at = Some(tokio::time::Instant::now() + CALL_AFTER);
                            }
                            Event::Call { event } => match event {
                                CallEvent::Incoming { from, .. } => {
                                    let who = node.member_name(&from).await.unwrap_or_default();
                                    println!("* {} is calling; answering", display(&who));
                                }
                                CallEvent::Joined { .. } => in_call = true,
                                CallEvent::SendMedia { peer } => {
                                    in_call = true;
                                    let who = node.member_name(&peer).await.unwrap_or_default();
                                    println!("* in the call with {}", display(&who));
                                }
                                CallEvent::StopMedia { peer } => {
                                    let who = node.member_name(&peer).await.unwrap_or_default();
                                    println!("* {} left the call", display(&who));
                                }
                                CallEvent::Declined { peer, reason } => {
                                    let who = node.member_name(&peer).await.unwrap_or_default();
                                    println!("* {} declined: {reason}", display(&who));
                                }
                                CallEvent::Ended { reason, .. } => {
                                    println!("* the call ended: {reason}");
                                    return Ok(exit::OK);
                                }
                                _ => {}
                            },
                            _ => {}
                        }
                    }
                    Some(_) => {}
                    None => return Ok(exit::FAILED),
                },
                _ = tokio::signal::ctrl_c() => {
                    node.hang_up();
                    return Ok(exit::INTERRUPTED);
                }
            }
        }
    }
    .await;
    node.close().await;
    outcome
}

fn init_logs(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,webrtc=off,rtc=off",
        1 => "info,webrtc=warn,rtc=warn",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.common.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let common = cli.common.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Send { paths, room } => send(common, paths, room).await,
            Command::Receive {
                code,
                dir,
                yes,
                overwrite,
            } => receive(common, code, dir, yes, overwrite).await,
            Command::Chat { code } => chat(common, code).await,
            Command::Call {
                code,
                record,
                play,
                play_audio,
                repeat,
                wait,
            } => {
                let media = MediaConfig {
                    record,
                    play_video: play,
                    play_audio,
                    repeat,
                };
                call(common, code, media, wait).await
            }
        }
    });
    // The node closed its connections; stray tasks need not finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ferry: {e:#}");
            let code = match e.downcast_ref::<ferry_native::Error>() {
                Some(
                    ferry_native::Error::UnsafePath(_)
                    | ferry_native::Error::WouldOverwrite(_)
                    | ferry_native::Error::NoSpace { .. },
                ) => exit::UNSAFE,
                _ => exit::FAILED,
            };
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_codes_parse() {
        let (s, code) =
            parse_code("http://10.0.0.2:8080/#abcd-efgh", "http://127.0.0.1:8080").unwrap();
        assert_eq!(s.ws_url(), "ws://10.0.0.2:8080/ws");
        assert_eq!(code.as_str(), "abcd-efgh");
        let (s, _) = parse_code("abcd-efgh", "https://ferry.example.org/").unwrap();
        assert_eq!(s.ws_url(), "wss://ferry.example.org/ws");
        assert_eq!(s.link(&code), "https://ferry.example.org/#abcd-efgh");
        assert!(parse_code("not a code!", "http://x").is_err());
        assert!(Server::new("ftp://x").is_err());
    }
}
