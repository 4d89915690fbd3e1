//! The run loop: signaling, peer connections and disk in, session outputs
//! out. One tokio task owns the [`Session`]; everything else talks to it
//! through one channel of [`Input`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::transfer::{TransferEvent, TransferId, id_from_hex, id_hex};
use ferry_core::{Config, Event, Output, PeerCommand, PeerEvent, Session};
use ferry_protocol::PeerId;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::Error;
use crate::media::{CallMedia, MediaConfig};
use crate::peer::{NetConfig, PeerLink};
use crate::source::{self, LocalFile};
use crate::store::{self, Download, Plan};

/// Everything that reaches the run loop.
pub(crate) enum Input {
    ServerOpened(u32),
    ServerText(u32, String),
    ServerClosed(u32),
    Peer {
        peer: PeerId,
        generation: u32,
        event: PeerEvent,
    },
    Read {
        id: TransferId,
        file: u32,
        chunk: u64,
        result: Result<Vec<u8>, String>,
    },
    Written {
        id: TransferId,
        file: u32,
        chunk: u64,
        result: Result<(), String>,
    },
}

/// What the application asks of the run loop.
enum Command {
    Chat(String, oneshot::Sender<Result<usize, Error>>),
    Offer {
        peer: PeerId,
        files: Vec<LocalFile>,
        checked: bool,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Plan {
        id: String,
        dir: PathBuf,
        overwrite: bool,
        reply: oneshot::Sender<Result<Plan, Error>>,
    },
    Accept {
        id: String,
        dir: PathBuf,
        overwrite: bool,
        reply: oneshot::Sender<Result<Plan, Error>>,
    },
    Decline(String, String),
    Cancel(String, String),
    Name(PeerId, oneshot::Sender<Option<String>>),
    StartCall(oneshot::Sender<Result<(), Error>>),
    HangUp,
    Close(oneshot::Sender<()>),
}

/// What a [`Node`] reports to the application.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// Something the engine reported.
    Engine(Event),
    /// A received file matched its BLAKE3 and is in place under its name.
    Saved {
        /// Transfer id, hex.
        id: String,
        /// Where it is.
        path: PathBuf,
    },
    /// Writing received files failed; the partial files are kept.
    StorageFailed {
        /// Transfer id, hex.
        id: String,
        /// What went wrong.
        message: String,
    },
}

/// Where and how a [`Node`] joins.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The signaling WebSocket, for example `ws://127.0.0.1:8080/ws`.
    pub server_url: String,
    /// The engine's configuration (room, name, timeouts, transfer tuning).
    pub session: Config,
    /// Network tuning of peer connections.
    pub net: NetConfig,
    /// Whether (and how) this node takes part in calls. Without it, call
    /// invitations are declined.
    pub media: Option<MediaConfig>,
}

/// A running native peer. Dropping every handle leaves the room.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::UnboundedSender<Command>,
    sent_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Node {
    /// Starts a peer on the current tokio runtime; its events arrive on the
    /// returned receiver, which closes when the peer has stopped.
    pub fn start(config: NodeConfig) -> (Self, mpsc::UnboundedReceiver<NodeEvent>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let (inputs, input_rx) = mpsc::unbounded_channel();
        let epoch = Instant::now();
        let mut transfer = config.session.transfer.clone();
        transfer.max_message = transfer.max_message.min(config.net.max_message as usize);
        let mut session_config = config.session;
        session_config.transfer = transfer;
        let driver = Driver {
            session: Session::new(session_config, 0),
            epoch,
            server_url: config.server_url,
            net: config.net,
            media: config.media.map(CallMedia::new),
            inputs,
            events,
            ws: None,
            ws_generation: 0,
            peers: HashMap::new(),
            closing: Vec::new(),
            peer_generation: 0,
            sources: HashMap::new(),
            downloads: HashMap::new(),
            last_save: HashMap::new(),
            unsaved: HashMap::new(),
            saving: Arc::default(),
            sent_bytes: Arc::default(),
        };
        let sent_bytes = driver.sent_bytes.clone();
        tokio::spawn(driver.run(input_rx, command_rx));
        (
            Self {
                commands,
                sent_bytes,
            },
            event_rx,
        )
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Sends a chat message to everyone connected; returns how many.
    pub async fn chat(&self, text: &str) -> Result<usize, Error> {
        let text = text.to_owned();
        self.ask(|tx| Command::Chat(text, tx)).await
    }

    /// Offers hashed files to a connected peer; returns the transfer id.
    pub async fn offer(&self, peer: &PeerId, files: Vec<LocalFile>) -> Result<String, Error> {
        let peer = peer.clone();
        self.ask(|reply| Command::Offer {
            peer,
            files,
            checked: true,
            reply,
        })
        .await
    }

    /// Offers files without the sender-side check of their names, as a
    /// malicious peer would: for tests of receivers only.
    #[cfg(feature = "hostile-sender")]
    pub async fn offer_unchecked(
        &self,
        peer: &PeerId,
        files: Vec<LocalFile>,
    ) -> Result<String, Error> {
        let peer = peer.clone();
        self.ask(|reply| Command::Offer {
            peer,
            files,
            checked: false,
            reply,
        })
        .await
    }

    /// Works out where an offer would go in `dir`, what can resume and
    /// whether it fits, without accepting it.
    pub async fn plan(&self, id: &str, dir: PathBuf, overwrite: bool) -> Result<Plan, Error> {
        let id = id.to_owned();
        self.ask(|reply| Command::Plan {
            id,
            dir,
            overwrite,
            reply,
        })
        .await
    }

    /// Accepts an offer into `dir`, resuming from partial files there.
    pub async fn accept(&self, id: &str, dir: PathBuf, overwrite: bool) -> Result<Plan, Error> {
        let id = id.to_owned();
        self.ask(|reply| Command::Accept {
            id,
            dir,
            overwrite,
            reply,
        })
        .await
    }

    /// Declines an offer.
    pub fn decline(&self, id: &str, reason: &str) {
        let _ = self
            .commands
            .send(Command::Decline(id.to_owned(), reason.to_owned()));
    }

    /// Cancels a transfer in either direction.
    pub fn cancel(&self, id: &str, reason: &str) {
        let _ = self
            .commands
            .send(Command::Cancel(id.to_owned(), reason.to_owned()));
    }

    /// File-transfer bytes handed to data channels so far (frames of every
    /// kind, so chunks sent twice count twice).
    pub fn transfer_bytes_sent(&self) -> u64 {
        self.sent_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Leaves the room: saves progress, lets queued frames go out, closes
    /// every connection (within a few seconds), then stops.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Starts a call with every connected peer (the node must have been
    /// started with [`NodeConfig::media`]).
    pub async fn start_call(&self) -> Result<(), Error> {
        self.ask(Command::StartCall).await
    }

    /// Leaves the call, or declines a ringing one.
    pub fn hang_up(&self) {
        let _ = self.commands.send(Command::HangUp);
    }

    /// The display name of a room member.
    pub async fn member_name(&self, peer: &PeerId) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Name(peer.clone(), tx)).ok()?;
        rx.await.ok().flatten()
    }
}

struct Driver {
    session: Session,
    epoch: Instant,
    server_url: String,
    net: NetConfig,
    media: Option<CallMedia>,
    inputs: mpsc::UnboundedSender<Input>,
    events: mpsc::UnboundedSender<NodeEvent>,
    ws: Option<mpsc::UnboundedSender<String>>,
    ws_generation: u32,
    peers: HashMap<PeerId, PeerLink>,
    /// Connections closing; waited for on shutdown so their last frames leave.
    closing: Vec<PeerLink>,
    peer_generation: u32,
    sources: HashMap<TransferId, Vec<Arc<std::fs::File>>>,
    downloads: HashMap<TransferId, Arc<Download>>,
    last_save: HashMap<TransferId, Instant>,
    /// Bytes written per download since its progress was last saved.
    unsaved: HashMap<TransferId, u64>,
    /// Downloads whose progress is being saved right now.
    saving: Arc<std::sync::Mutex<std::collections::HashSet<TransferId>>>,
    /// Binary bytes handed to data channels, for the whole session.
    sent_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// How long closing waits for queued frames to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// How often a download's progress is saved while it runs...
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// ...and after how many bytes, so that a killed receiver fetches at most
/// about one request window again.
const SAVE_BYTES: u64 = 2 * 1024 * 1024;

impl Driver {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut closed = None;
        loop {
            self.pump();
            let deadline = self
                .session
                .poll_timeout()
                .map(|t| self.epoch + Duration::from_millis(t));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(Command::Close(reply)) => {
                        closed = Some(reply);
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                () = sleep => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
            }
        }
        self.save_all();
        // Last frames (a final acknowledgement, a cancel) go out before the
        // server tells the others that we left.
        futures_util::future::join_all(self.peers.values().map(|l| l.flush(CLOSE_GRACE))).await;
        self.session.leave();
        self.pump();
        let mut links: Vec<PeerLink> = self.peers.drain().map(|(_, l)| l).collect();
        links.append(&mut self.closing);
        futures_util::future::join_all(links.into_iter().map(|l| l.close(CLOSE_GRACE))).await;
        if let Some(media) = &self.media {
            media.recordings.finish(CLOSE_GRACE).await;
        }
        // The leave frame goes out with the socket's close.
        self.ws = None;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::ServerOpened(g) if g == self.ws_generation => self.session.server_opened(now),
            Input::ServerText(g, text) if g == self.ws_generation => {
                self.session.server_text(&text, now);
            }
            Input::ServerClosed(g) if g == self.ws_generation => {
                self.ws = None;
                self.session.server_closed(now);
            }
            Input::Peer {
                peer,
                generation,
                event,
            } if self
                .peers
                .get(&peer)
                .is_some_and(|l| l.generation() == generation) =>
            {
                self.session.peer_event(&peer, event, now);
            }
            Input::Read {
                id,
                file,
                chunk,
                result,
            } => match result {
                Ok(data) => self.session.chunk_read(&id, file, chunk, data, now),
                Err(e) => self.session.read_failed(&id, &e),
            },
            Input::Written {
                id,
                file,
                chunk,
                result,
            } => match result {
                Ok(()) => {
                    self.session.chunk_written(&id, file, chunk, now);
                    let n = self.unsaved.entry(id).or_default();
                    *n += u64::from(self.session.transfers().chunk_size(&id).unwrap_or(0));
                    if *n >= SAVE_BYTES {
                        self.save(&id);
                    }
                }
                Err(e) => {
                    let _ = self.events.send(NodeEvent::StorageFailed {
                        id: id_hex(&id),
                        message: e.clone(),
                    });
                    self.session.write_failed(&id, &e);
                }
            },
            _ => {}
        }
    }

    fn incoming(&self, id: &str) -> Result<TransferId, Error> {
        id_from_hex(id)
            .filter(|i| self.session.transfers().files(i).is_some())
            .ok_or(Error::UnknownTransfer)
    }

    fn plan(
        &self,
        id: &str,
        dir: &std::path::Path,
        overwrite: bool,
    ) -> Result<(TransferId, Plan), Error> {
        let tid = self.incoming(id)?;
        let t = self.session.transfers();
        let files = t.files(&tid).ok_or(Error::UnknownTransfer)?;
        let chunk_size = t.chunk_size(&tid).ok_or(Error::UnknownTransfer)?;
        Ok((tid, store::plan(dir, files, chunk_size, overwrite)?))
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Chat(text, reply) => {
                let _ = reply.send(self.session.send_chat(&text).map_err(Error::from));
            }
            Command::Offer {
                peer,
                files,
                checked,
                reply,
            } => {
                let result = (|| {
                    let mut opened = Vec::with_capacity(files.len());
                    for f in &files {
                        let file = std::fs::File::open(&f.disk).map_err(|e| Error::Io {
                            what: format!("opening {}", f.disk.display()),
                            source: e,
                        })?;
                        opened.push(Arc::new(file));
                    }
                    let id: TransferId = rand::random();
                    let sources = files.into_iter().map(|f| f.source).collect();
                    if checked {
                        self.session.offer_files(&peer, id, sources, now)?;
                    } else {
                        #[cfg(feature = "hostile-sender")]
                        self.session
                            .offer_files_unchecked(&peer, id, sources, now)?;
                        #[cfg(not(feature = "hostile-sender"))]
                        return Err(Error::Internal("unchecked offers are for tests".into()));
                    }
                    self.sources.insert(id, opened);
                    Ok(id_hex(&id))
                })();
                let _ = reply.send(result);
            }
            Command::Plan {
                id,
                dir,
                overwrite,
                reply,
            } => {
                let _ = reply.send(self.plan(&id, &dir, overwrite).map(|(_, p)| p));
            }
            Command::Accept {
                id,
                dir,
                overwrite,
                reply,
            } => {
                let result = (|| {
                    let (tid, plan) = self.plan(&id, &dir, overwrite)?;
                    let t = self.session.transfers();
                    let entries = t.files(&tid).ok_or(Error::UnknownTransfer)?.to_vec();
                    let chunk_size = t.chunk_size(&tid).ok_or(Error::UnknownTransfer)?;
                    let download = Download::open(plan.clone(), entries, chunk_size, overwrite)?;
                    let resume = download.resume();
                    self.downloads.insert(tid, Arc::new(download));
                    if let Err(e) = self.session.accept_transfer(&tid, resume, now) {
                        self.downloads.remove(&tid);
                        return Err(e.into());
                    }
                    Ok(plan)
                })();
                let _ = reply.send(result);
            }
            Command::Decline(id, reason) => {
                if let Some(tid) = id_from_hex(&id) {
                    let _ = self.session.decline_transfer(&tid, &reason);
                }
            }
            Command::Cancel(id, reason) => {
                if let Some(tid) = id_from_hex(&id) {
                    let _ = self.session.cancel_transfer(&tid, &reason);
                }
            }
            Command::Name(peer, reply) => {
                let _ = reply.send(self.session.member_name(&peer).map(str::to_owned));
            }
            Command::StartCall(reply) => {
                let result = if self.media.is_none() {
                    Err(Error::Media(
                        "this peer was started without call media".into(),
                    ))
                } else {
                    let id: String = (0..12)
                        .map(|_| {
                            char::from(
                                b"abcdefghijkmnpqrstuvwxyz23456789"[rand::random_range(0..32)],
                            )
                        })
                        .collect();
                    self.session.start_call(&id).map_err(Error::from)
                };
                let _ = reply.send(result);
            }
            Command::HangUp => {
                let _ = self.session.hang_up();
            }
            Command::Close(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn pump(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::ConnectServer => self.connect_server(),
                Output::SendServer(text) => {
                    if let Some(ws) = &self.ws {
                        let _ = ws.send(text);
                    }
                }
                Output::CloseServer => {
                    self.ws = None;
                    self.ws_generation += 1;
                }
                Output::Peer { peer, command } => self.peer_command(peer, command),
                Output::ReadChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    len,
                } => {
                    let source = self
                        .sources
                        .get(&id)
                        .and_then(|f| f.get(file as usize))
                        .cloned();
                    let inputs = self.inputs.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = match source {
                            Some(f) => source::read_at(&f, offset, len).map_err(|e| e.to_string()),
                            None => Err("the file is no longer available".into()),
                        };
                        let _ = inputs.send(Input::Read {
                            id,
                            file,
                            chunk,
                            result,
                        });
                    });
                }
                Output::WriteChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    data,
                } => {
                    let part = self.downloads.get(&id).and_then(|d| d.part(file));
                    let inputs = self.inputs.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = match part {
                            Some(f) => store::write_chunk(&f, offset, &data),
                            None => Err("the download is no longer open".into()),
                        };
                        let _ = inputs.send(Input::Written {
                            id,
                            file,
                            chunk,
                            result,
                        });
                    });
                }
                Output::Event(event) => {
                    if let Event::Transfer { event } = &event {
                        self.on_transfer_event(event);
                    }
                    if let Event::Call { event } = &event {
                        self.on_call_event(event);
                    }
                    let _ = self.events.send(NodeEvent::Engine(event));
                }
                _ => {}
            }
        }
    }

    fn peer_command(&mut self, peer: PeerId, command: PeerCommand) {
        match command {
            PeerCommand::Create { open_channel, .. } => {
                if let Some(old) = self.peers.remove(&peer) {
                    self.retire(old);
                }
                self.peer_generation += 1;
                let link = PeerLink::start(
                    peer.clone(),
                    self.peer_generation,
                    open_channel,
                    self.session.ice_servers().to_vec(),
                    self.net.clone(),
                    self.media.clone(),
                    self.inputs.clone(),
                );
                self.peers.insert(peer, link);
            }
            PeerCommand::Close => {
                if let Some(link) = self.peers.remove(&peer) {
                    self.retire(link);
                }
            }
            command => {
                if let PeerCommand::SendBinary(frame) = &command {
                    self.sent_bytes
                        .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(link) = self.peers.get(&peer) {
                    link.perform(command);
                }
            }
        }
    }

    /// Calls: a node with media answers every invitation (running `ferry
    /// call` is the consent) and adds or stops its media as the engine says;
    /// one without declines.
    fn on_call_event(&mut self, event: &ferry_core::call::CallEvent) {
        use ferry_core::call::CallEvent;
        match event {
            CallEvent::Incoming { .. } => {
                let answered = if self.media.is_some() {
                    self.session.answer_call()
                } else {
                    self.session.decline_call()
                };
                if let Err(e) = answered {
                    tracing::warn!("call invitation: {e}");
                }
            }
            CallEvent::SendMedia { peer } => {
                if let Some(link) = self.peers.get(peer) {
                    // The link adds the media before it carries out the
                    // offer that the renegotiation asks for.
                    link.start_media();
                    self.session.renegotiate(peer);
                }
            }
            CallEvent::StopMedia { peer } => {
                if let Some(link) = self.peers.get(peer) {
                    link.stop_media();
                }
            }
            _ => {}
        }
    }

    fn retire(&mut self, link: PeerLink) {
        link.start_close();
        self.closing.retain_mut(|l| !l.is_closed());
        self.closing.push(link);
    }

    fn connect_server(&mut self) {
        self.ws_generation += 1;
        let generation = self.ws_generation;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        self.ws = Some(tx);
        let url = self.server_url.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let socket = match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!("cannot reach the signaling server at {url}: {e}");
                    let _ = inputs.send(Input::ServerClosed(generation));
                    return;
                }
            };
            let _ = inputs.send(Input::ServerOpened(generation));
            let (mut write, mut read) = socket.split();
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(text) => {
                            if write.send(Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            let _ = write.send(Message::Close(None)).await;
                            return;
                        }
                    },
                    msg = read.next() => match msg {
                        Some(Ok(Message::Text(text))) => {
                            let _ = inputs.send(Input::ServerText(generation, text.to_string()));
                        }
                        Some(Ok(Message::Ping(data))) => {
                            let _ = write.send(Message::Pong(data)).await;
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = inputs.send(Input::ServerClosed(generation));
        });
    }

    fn save(&mut self, id: &TransferId) {
        let t = self.session.transfers();
        if !t.is_receiving(id) {
            return;
        }
        let (Some(download), Some(have)) = (self.downloads.get(id), t.have_maps(id)) else {
            return;
        };
        // One save at a time per download; the next one catches up.
        if !self.saving.lock().is_ok_and(|mut s| s.insert(*id)) {
            return;
        }
        let (download, have) = (download.clone(), have.to_vec());
        self.last_save.insert(*id, Instant::now());
        self.unsaved.insert(*id, 0);
        let (events, saving, id) = (self.events.clone(), self.saving.clone(), *id);
        let hex = id_hex(&id);
        tokio::task::spawn_blocking(move || {
            let result = download.save_progress(&have);
            if let Ok(mut s) = saving.lock() {
                s.remove(&id);
            }
            if let Err(e) = result {
                let _ = events.send(NodeEvent::StorageFailed {
                    id: hex,
                    message: e.to_string(),
                });
            }
        });
    }

    /// Saves every running download's progress, synchronously (on exit).
    fn save_all(&mut self) {
        let t = self.session.transfers();
        for (id, download) in &self.downloads {
            if t.is_receiving(id)
                && let Some(have) = t.have_maps(id)
                && let Err(e) = download.save_progress(have)
            {
                tracing::warn!("cannot save progress: {e}");
            }
        }
    }

    fn on_transfer_event(&mut self, event: &TransferEvent) {
        let tid = |id: &str| id_from_hex(id);
        match event {
            TransferEvent::Progress { id, .. } => {
                if let Some(t) = tid(id)
                    && self
                        .last_save
                        .get(&t)
                        .is_none_or(|at| at.elapsed() >= SAVE_EVERY)
                {
                    self.save(&t);
                }
            }
            TransferEvent::FileVerified { id, file, .. } => {
                let Some(t) = tid(id) else { return };
                let Some(download) = self.downloads.get(&t).cloned() else {
                    return;
                };
                match download.finish_file(*file) {
                    Ok(path) => {
                        let _ = self.events.send(NodeEvent::Saved {
                            id: id.clone(),
                            path,
                        });
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let _ = self.events.send(NodeEvent::StorageFailed {
                            id: id.clone(),
                            message: message.clone(),
                        });
                        let _ = self.session.cancel_transfer(&t, &message);
                    }
                }
            }
            TransferEvent::Interrupted { id, .. } | TransferEvent::Failed { id, .. } => {
                if let Some(t) = tid(id) {
                    if matches!(event, TransferEvent::Failed { .. }) {
                        // Keep what is verified: a later run resumes from it.
                        if let (Some(d), Some(have)) = (
                            self.downloads.get(&t),
                            self.session.transfers().have_maps(&t),
                        ) && let Err(e) = d.save_progress(have)
                        {
                            tracing::warn!("cannot save progress: {e}");
                        }
                        self.sources.remove(&t);
                    } else {
                        self.save(&t);
                    }
                }
            }
            TransferEvent::Cancelled { id, .. } => {
                if let Some(t) = tid(id) {
                    self.sources.remove(&t);
                    if let Some(d) = self.downloads.remove(&t) {
                        d.discard();
                    }
                }
            }
            TransferEvent::Completed { id } | TransferEvent::Declined { id, .. } => {
                if let Some(t) = tid(id) {
                    self.sources.remove(&t);
                    self.downloads.remove(&t);
                    self.last_save.remove(&t);
                }
            }
            _ => {}
        }
    }
}
