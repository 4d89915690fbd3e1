//! The Ferry peer engine, without I/O.
//!
//! # Design
//!
//! [`Session`] holds everything a peer knows about its room: the signaling
//! connection's state, its own peer id, and a negotiation state machine per
//! remote peer. It performs no I/O and reads no clock. A driver (the browser
//! driver in `peer-wasm`, later the native one) feeds it inputs with the
//! current time and carries out what it asks, in the style of `str0m` and
//! `quinn-proto`:
//!
//! ```text
//!   driver                                   Session
//!   ──────                                   ───────
//!   WebSocket open/text/close ───────────▶  server_opened / server_text / server_closed
//!   RTCPeerConnection callbacks ─────────▶  peer_event(peer, PeerEvent, now)
//!   timer fired ─────────────────────────▶  handle_timeout(now)
//!   user typed a message ────────────────▶  send_chat(text)
//!                                  ◀──────  poll_output(): ConnectServer, SendServer,
//!                                           Peer { peer, PeerCommand }, Event
//!                                  ◀──────  poll_timeout(): when to call handle_timeout
//! ```
//!
//! **Who offers.** A newcomer offers to every peer listed in `joined`; the
//! members already there wait for its offer. Each link also follows the
//! WebRTC *perfect negotiation* pattern: the peer with the larger id is
//! *polite* and yields in an offer collision (glare), the other ignores the
//! colliding offer. Both sides may therefore offer at any time (an ICE
//! restart, later a new media track) and every pair still converges.
//!
//! **Serialized operations.** Description changes are asynchronous in every
//! WebRTC stack, so the engine issues one at a time per link and waits for
//! the driver's completion event. Remote ICE candidates are buffered until a
//! remote description is in place, including those that arrive while a
//! colliding offer is being ignored (they often share ICE credentials with
//! the answer that follows; the driver ignores `addIceCandidate` failures).
//!
//! **Time.** Times are milliseconds on a clock the driver chooses
//! ([`Millis`]). The engine uses them for the join timeout, the signaling
//! reconnect backoff, the per-link connect timeout and ICE restarts.
//!
//! **Surviving the server.** Direct links do not depend on the signaling
//! server. When it goes away the engine keeps them, reconnects with backoff,
//! and rejoins asking for its old id (`rejoin_as`) so that peers it is
//! still connected to recognise it.
#![forbid(unsafe_code)]

pub mod call;
mod link;
pub mod room_code;
pub mod transfer;

use std::collections::{BTreeMap, VecDeque};

use ferry_protocol::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, PeerId, PeerInfo, PeerMessage, ProtocolError,
    RoomCode, ServerMessage, Signal,
};
use serde::Serialize;

use call::{CallEngine, CallError, CallEvent, CallOutput};
use link::{Link, LinkOutput};
pub use link::{LinkState, PeerCommand, SdpKind};
use transfer::{
    HaveMap, SourceFile, TransferConfig, TransferEngine, TransferError, TransferEvent, TransferId,
    TransferOutput,
};

/// What happened on a link that the transfer engine must hear about.
enum TransferInput {
    Ready,
    Lost,
    Frame(Vec<u8>),
}

/// Milliseconds on the driver's clock.
pub type Millis = u64;

/// Label of the data channel that carries peer messages.
pub const CHANNEL_LABEL: &str = "ferry";

/// Errors the engine reports to its driver.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A frame or field broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// There is nobody connected to send to.
    #[error("no peer is connected yet")]
    NoConnectedPeers,
    /// The session was closed.
    #[error("the session is closed")]
    Closed,
    /// A file transfer request was refused.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// A call request was refused.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Tuning of a [`Session`]. The defaults suit interactive use.
#[derive(Debug, Clone)]
pub struct Config {
    /// The room to join.
    pub room: RoomCode,
    /// Display name shown to the others.
    pub name: String,
    /// How long the server may take to answer `join`.
    pub join_timeout: Millis,
    /// How long a link may take to open its data channel before an ICE restart.
    pub connect_timeout: Millis,
    /// ICE restarts before a link is declared failed.
    pub max_ice_restarts: u32,
    /// How long a disconnected link may take to recover before an ICE restart.
    pub disconnect_grace: Millis,
    /// First delay before reconnecting to the server; doubles per attempt.
    pub reconnect_base: Millis,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Millis,
    /// The peer id to ask for on the first join, for example the one this
    /// tab had before a reload, so that peers recognise it and resume.
    pub rejoin_as: Option<PeerId>,
    /// The resume token that went with `rejoin_as`, to take the seat back
    /// silently within the server's grace period.
    pub resume_token: Option<String>,
    /// The room's password: sets it if this peer creates the room, and is
    /// needed to join it otherwise.
    pub password: Option<String>,
    /// File transfer tuning.
    pub transfer: TransferConfig,
}

impl Config {
    /// Default tuning for a room and a display name.
    pub fn new(room: RoomCode, name: impl Into<String>) -> Self {
        Self {
            room,
            name: name.into(),
            join_timeout: 10_000,
            connect_timeout: 10_000,
            max_ice_restarts: 2,
            disconnect_grace: 4_000,
            reconnect_base: 250,
            reconnect_max: 5_000,
            rejoin_as: None,
            resume_token: None,
            password: None,
            transfer: TransferConfig::default(),
        }
    }
}

/// Transport-level happenings on one peer connection, reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// `CreateOffer` or `AcceptOffer` completed with this local description.
    LocalDescription {
        /// Offer or answer.
        kind: SdpKind,
        /// The SDP.
        sdp: String,
    },
    /// `ApplyAnswer` completed.
    RemoteDescriptionSet,
    /// The current description operation failed.
    OperationFailed(String),
    /// A local ICE candidate was gathered.
    IceCandidate {
        /// The candidate line.
        candidate: String,
        /// Its media stream id.
        sdp_mid: Option<String>,
        /// Its m-line index.
        sdp_m_line_index: Option<u16>,
    },
    /// Candidate gathering finished.
    EndOfCandidates,
    /// `connectionState` changed.
    ConnectionState(TransportState),
    /// The data channel opened.
    ChannelOpen,
    /// The data channel closed.
    ChannelClosed,
    /// A text frame arrived on the data channel.
    Text(String),
    /// A binary frame (file transfer) arrived on the data channel.
    Binary(Vec<u8>),
    /// The selected candidate pair, once connected.
    Route {
        /// Type of the local candidate.
        local: CandidateType,
        /// Type of the remote candidate.
        remote: CandidateType,
    },
}

/// `RTCPeerConnection.connectionState`, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportState {
    /// `new` or `connecting`.
    Connecting,
    /// `connected`.
    Connected,
    /// `disconnected`.
    Disconnected,
    /// `failed`.
    Failed,
    /// `closed`.
    Closed,
}

/// ICE candidate type of one end of the selected pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CandidateType {
    /// A local interface address.
    Host,
    /// An address learned from STUN.
    Srflx,
    /// An address learned from a peer (peer-reflexive).
    Prflx,
    /// A TURN relay.
    Relay,
    /// Not reported.
    Unknown,
}

impl CandidateType {
    /// Parses a `candidateType` string from `getStats`.
    pub fn parse(s: &str) -> Self {
        match s {
            "host" => Self::Host,
            "srflx" => Self::Srflx,
            "prflx" => Self::Prflx,
            "relay" => Self::Relay,
            _ => Self::Unknown,
        }
    }
}

/// The signaling connection's state, as shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerState {
    /// Opening the WebSocket.
    Connecting,
    /// Open, waiting for `joined`.
    Joining,
    /// In the room.
    Joined,
    /// Lost; a reconnect is scheduled.
    Lost,
    /// Closed for good (left, or a fatal error).
    Closed,
}

/// What the engine tells the user interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The signaling connection changed state.
    Server {
        /// The new state.
        state: ServerState,
        /// For `lost`: milliseconds until the next attempt.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<Millis>,
    },
    /// Joined the room.
    Joined {
        /// The room.
        room: RoomCode,
        /// Our id.
        peer_id: PeerId,
    },
    /// The server reported an error.
    ServerError {
        /// The stable code.
        code: ErrorCode,
        /// The explanation.
        message: String,
    },
    /// A peer joined the room (or was there when we joined).
    PeerJoined {
        /// Its id.
        peer_id: PeerId,
        /// Its display name.
        name: String,
    },
    /// A peer left the room.
    PeerLeft {
        /// Its id.
        peer_id: PeerId,
    },
    /// The link to a peer changed state.
    PeerState {
        /// The peer.
        peer_id: PeerId,
        /// The new state.
        state: LinkState,
    },
    /// The selected candidate pair of a connected link.
    PeerRoute {
        /// The peer.
        peer_id: PeerId,
        /// Local candidate type.
        local: CandidateType,
        /// Remote candidate type.
        remote: CandidateType,
    },
    /// A chat message from a peer.
    Chat {
        /// The sender.
        from: PeerId,
        /// The text.
        text: String,
    },
    /// Something happened to a file transfer.
    Transfer {
        /// What happened.
        event: TransferEvent,
    },
    /// Something happened to a call.
    Call {
        /// What happened.
        event: CallEvent,
    },
    /// A peer sent something we could not understand; it was dropped.
    PeerError {
        /// The peer.
        peer_id: PeerId,
        /// What was wrong.
        message: String,
    },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Open the signaling WebSocket; report `server_opened` or `server_closed`.
    ConnectServer,
    /// Send this text frame on the signaling WebSocket.
    SendServer(String),
    /// Close the signaling WebSocket.
    CloseServer,
    /// Do something to the connection with one peer.
    Peer {
        /// The peer.
        peer: PeerId,
        /// What to do.
        command: PeerCommand,
    },
    /// Read part of a file we offered, then call [`Session::chunk_read`].
    ReadChunk {
        /// The transfer.
        id: TransferId,
        /// File index in the offer.
        file: u32,
        /// Chunk index.
        chunk: u64,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        len: u32,
    },
    /// Write verified bytes of a file we receive, then call
    /// [`Session::chunk_written`]. A zero-length write creates an empty file.
    WriteChunk {
        /// The transfer.
        id: TransferId,
        /// File index in the offer.
        file: u32,
        /// Chunk index.
        chunk: u64,
        /// Byte offset.
        offset: u64,
        /// The verified bytes.
        data: Vec<u8>,
    },
    /// Tell the user.
    Event(Event),
}

struct Member {
    name: String,
    link: Option<Link>,
}

/// One peer's view of its room. See the crate docs for the run loop.
pub struct Session {
    config: Config,
    server: ServerState,
    server_since: Millis,
    reconnect_attempt: u32,
    reconnect_at: Option<Millis>,
    my_id: Option<PeerId>,
    ice_servers: Vec<ferry_protocol::IceServer>,
    resume_token: Option<String>,
    members: BTreeMap<PeerId, Member>,
    outputs: VecDeque<Output>,
    transfers: TransferEngine,
    calls: CallEngine,
}

impl Session {
    /// Creates a session; the first output asks the driver to connect.
    pub fn new(config: Config, now: Millis) -> Self {
        let mut s = Self {
            server: ServerState::Connecting,
            server_since: now,
            reconnect_attempt: 0,
            reconnect_at: None,
            my_id: None,
            ice_servers: Vec::new(),
            resume_token: None,
            members: BTreeMap::new(),
            outputs: VecDeque::new(),
            transfers: TransferEngine::new(config.transfer.clone()),
            calls: CallEngine::new(),
            config,
        };
        s.connect_server(now);
        s
    }

    /// The STUN and TURN servers the signaling server handed out on join
    /// (TURN with short-lived credentials); empty if it has none.
    pub fn ice_servers(&self) -> &[ferry_protocol::IceServer] {
        &self.ice_servers
    }

    /// The token that takes this peer's seat back after a lost connection
    /// or a reload (with its peer id as `rejoin_as`), if the server keeps
    /// seats.
    pub fn resume_token(&self) -> Option<&str> {
        self.resume_token.as_deref()
    }

    /// Our peer id, once joined.
    pub fn peer_id(&self) -> Option<&PeerId> {
        self.my_id.as_ref()
    }

    /// The room this session is for.
    pub fn room(&self) -> &RoomCode {
        &self.config.room
    }

    /// The signaling connection's state.
    pub fn server_state(&self) -> ServerState {
        self.server
    }

    /// The state of the link to `peer`, if there is one.
    pub fn link_state(&self, peer: &PeerId) -> Option<LinkState> {
        self.members.get(peer)?.link.as_ref().map(|l| l.state)
    }

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let mut consider = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        match self.server {
            ServerState::Connecting | ServerState::Joining => {
                consider(self.server_since + self.config.join_timeout);
            }
            ServerState::Lost => {
                if let Some(t) = self.reconnect_at {
                    consider(t);
                }
            }
            ServerState::Joined | ServerState::Closed => {}
        }
        if let Some(t) = self.transfers.poll_timeout() {
            consider(t);
        }
        for member in self.members.values() {
            if let Some(link) = &member.link
                && let Some(t) = self.link_deadline(link)
            {
                consider(t);
            }
        }
        next
    }

    fn link_deadline(&self, link: &Link) -> Option<Millis> {
        match link.state {
            LinkState::Connecting => Some(link.attempt_started + self.config.connect_timeout),
            LinkState::Disconnected => link
                .disconnected_at
                .map(|t| t.max(link.attempt_started) + self.config.disconnect_grace),
            _ => self.offer_deadline(link),
        }
    }

    /// When a connected link's unanswered offer is given up and made again.
    fn offer_deadline(&self, link: &Link) -> Option<Millis> {
        link.offer_sent_at
            .filter(|_| link.awaiting_answer())
            .map(|t| t + self.config.connect_timeout)
    }

    /// Handles whatever was due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        match self.server {
            ServerState::Connecting | ServerState::Joining
                if now >= self.server_since + self.config.join_timeout =>
            {
                self.outputs.push_back(Output::CloseServer);
                self.server_lost(now);
            }
            ServerState::Lost if self.reconnect_at.is_some_and(|t| now >= t) => {
                self.connect_server(now);
            }
            _ => {}
        }
        let due: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.link
                    .as_ref()
                    .and_then(|l| self.link_deadline(l))
                    .is_some_and(|t| now >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for peer in due {
            self.link_timed_out(&peer, now);
        }
        self.transfers.handle_timeout(now);
        self.pump_transfers();
    }

    fn link_timed_out(&mut self, peer: &PeerId, now: Millis) {
        let max = self.config.max_ice_restarts;
        let Some(link) = self.members.get_mut(peer).and_then(|m| m.link.as_mut()) else {
            return;
        };
        if !matches!(link.state, LinkState::Connecting | LinkState::Disconnected) {
            // Connected, with an offer that got no answer.
            let mut out = Vec::new();
            link.offer_unanswered(&mut out);
            self.emit_link(peer, out);
            return;
        }
        if link.restarts >= max {
            link.state = LinkState::Failed;
            self.outputs.push_back(Output::Event(Event::PeerState {
                peer_id: peer.clone(),
                state: LinkState::Failed,
            }));
            return;
        }
        link.restarts += 1;
        link.attempt_started = now;
        link.disconnected_at = None;
        let mut out = Vec::new();
        // Either side may restart; perfect negotiation settles a collision.
        // The impolite side restarts at once, the polite one a little later,
        // so that usually only one offer is in flight.
        if !link.polite || link.restarts > 1 {
            link.request_offer(true, &mut out);
        }
        if link.state != LinkState::Connecting {
            link.state = LinkState::Connecting;
            self.outputs.push_back(Output::Event(Event::PeerState {
                peer_id: peer.clone(),
                state: LinkState::Connecting,
            }));
        }
        self.emit_link(peer, out);
    }

    fn connect_server(&mut self, now: Millis) {
        self.server = ServerState::Connecting;
        self.server_since = now;
        self.reconnect_at = None;
        self.outputs.push_back(Output::ConnectServer);
        self.outputs.push_back(Output::Event(Event::Server {
            state: ServerState::Connecting,
            retry_in_ms: None,
        }));
    }

    /// The signaling WebSocket opened: join the room.
    pub fn server_opened(&mut self, now: Millis) {
        if self.server != ServerState::Connecting {
            return;
        }
        self.server = ServerState::Joining;
        self.server_since = now;
        let join = ClientMessage::Join {
            version: PROTOCOL_VERSION,
            room: self.config.room.clone(),
            name: self.config.name.clone(),
            rejoin_as: self.my_id.clone().or_else(|| self.config.rejoin_as.clone()),
            resume_token: self
                .resume_token
                .clone()
                .or_else(|| self.config.resume_token.clone()),
            password: self.config.password.clone(),
        };
        self.outputs.push_back(Output::SendServer(join.encode()));
        self.outputs.push_back(Output::Event(Event::Server {
            state: ServerState::Joining,
            retry_in_ms: None,
        }));
    }

    /// The signaling WebSocket closed or failed to open.
    pub fn server_closed(&mut self, now: Millis) {
        if matches!(self.server, ServerState::Closed | ServerState::Lost) {
            return;
        }
        self.server_lost(now);
    }

    fn server_lost(&mut self, now: Millis) {
        let exp = self.reconnect_attempt.min(16);
        let delay = (self.config.reconnect_base << exp).min(self.config.reconnect_max);
        self.reconnect_attempt += 1;
        self.server = ServerState::Lost;
        self.reconnect_at = Some(now + delay);
        self.outputs.push_back(Output::Event(Event::Server {
            state: ServerState::Lost,
            retry_in_ms: Some(delay),
        }));
        // Links that never connected cannot finish without the server.
        let stale: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.link.as_ref().is_none_or(|l| !l.channel_open))
            .map(|(id, _)| id.clone())
            .collect();
        for peer in stale {
            self.remove_member(&peer);
        }
    }

    /// A text frame arrived from the signaling server.
    pub fn server_text(&mut self, text: &str, now: Millis) {
        match ServerMessage::decode(text) {
            Ok(msg) => self.server_message(msg, now),
            Err(e) => self.outputs.push_back(Output::Event(Event::ServerError {
                code: ErrorCode::Malformed,
                message: format!("the server sent a frame we do not understand: {e}"),
            })),
        }
    }

    fn server_message(&mut self, msg: ServerMessage, now: Millis) {
        match msg {
            ServerMessage::Joined {
                peer_id,
                peers,
                room,
                ice_servers,
                resume_token,
                ..
            } => {
                self.ice_servers = ice_servers;
                self.resume_token = resume_token;
                self.server = ServerState::Joined;
                self.reconnect_attempt = 0;
                self.my_id = Some(peer_id.clone());
                self.outputs.push_back(Output::Event(Event::Server {
                    state: ServerState::Joined,
                    retry_in_ms: None,
                }));
                self.outputs
                    .push_back(Output::Event(Event::Joined { room, peer_id }));
                // Members we only remember from before an outage, and can no
                // longer reach directly, are gone.
                let gone: Vec<PeerId> = self
                    .members
                    .iter()
                    .filter(|(id, m)| {
                        !peers.iter().any(|p| &p.id == *id)
                            && m.link.as_ref().is_none_or(|l| !l.channel_open)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    self.remove_member(&id);
                }
                for PeerInfo { id, name } in peers {
                    self.add_member(id, name, true, now);
                }
            }
            ServerMessage::PeerJoined { peer } => self.add_member(peer.id, peer.name, false, now),
            ServerMessage::PeerLeft { peer_id } if self.members.contains_key(&peer_id) => {
                self.remove_member(&peer_id);
            }
            ServerMessage::Signal { from, signal } => self.signal_from(from, signal, now),
            ServerMessage::Error { code, message } => {
                // `going_away` (the server is shutting down) and `idle` (a
                // socket opened early sat unused too long): the server closes
                // the socket next, and that close starts the usual reconnect.
                if code.is_fatal() && !matches!(code, ErrorCode::GoingAway | ErrorCode::Idle) {
                    self.server = ServerState::Closed;
                    self.outputs.push_back(Output::CloseServer);
                    self.outputs.push_back(Output::Event(Event::Server {
                        state: ServerState::Closed,
                        retry_in_ms: None,
                    }));
                }
                self.outputs
                    .push_back(Output::Event(Event::ServerError { code, message }));
            }
            _ => {}
        }
    }

    fn add_member(&mut self, id: PeerId, name: String, we_offer: bool, now: Millis) {
        if Some(&id) == self.my_id.as_ref() {
            return;
        }
        if let Some(existing) = self.members.get_mut(&id) {
            // Still connected from before a server outage: keep the link.
            if existing.link.as_ref().is_some_and(|l| l.channel_open) {
                return;
            }
            // The same member is back (a reload or a reconnect that kept its
            // seat): a fresh link, without telling anyone it left.
            existing.name = name;
            if existing.link.take().is_some() {
                self.transfers.peer_lost(&id);
                self.pump_transfers();
                self.outputs.push_back(Output::Peer {
                    peer: id.clone(),
                    command: PeerCommand::Close,
                });
            }
            self.open_link(&id, we_offer, now);
            return;
        }
        self.members.insert(
            id.clone(),
            Member {
                name: name.clone(),
                link: None,
            },
        );
        self.outputs.push_back(Output::Event(Event::PeerJoined {
            peer_id: id.clone(),
            name,
        }));
        self.open_link(&id, we_offer, now);
    }

    /// Whether this side is the polite one of perfect negotiation towards
    /// `peer` (the larger id is polite; false before we have an id).
    pub fn polite_towards(&self, peer: &PeerId) -> bool {
        self.my_id.as_ref().is_some_and(|me| me > peer)
    }

    fn open_link(&mut self, peer: &PeerId, we_offer: bool, now: Millis) {
        let polite = self.polite_towards(peer);
        let mut link = Link::new(polite, now);
        self.outputs.push_back(Output::Peer {
            peer: peer.clone(),
            command: PeerCommand::Create {
                polite,
                open_channel: we_offer,
            },
        });
        self.outputs.push_back(Output::Event(Event::PeerState {
            peer_id: peer.clone(),
            state: LinkState::Connecting,
        }));
        let mut out = Vec::new();
        if we_offer {
            link.request_offer(false, &mut out);
        }
        if let Some(m) = self.members.get_mut(peer) {
            m.link = Some(link);
        }
        self.emit_link(peer, out);
    }

    fn remove_member(&mut self, peer: &PeerId) {
        self.transfers.peer_lost(peer);
        self.pump_transfers();
        self.calls.peer_gone(peer);
        self.pump_calls();
        if let Some(member) = self.members.remove(peer) {
            if member.link.is_some() {
                self.outputs.push_back(Output::Peer {
                    peer: peer.clone(),
                    command: PeerCommand::Close,
                });
            }
            self.outputs.push_back(Output::Event(Event::PeerLeft {
                peer_id: peer.clone(),
            }));
        }
    }

    fn signal_from(&mut self, from: PeerId, signal: Signal, now: Millis) {
        if !self.members.contains_key(&from) {
            // The server relays only within the room, so this is a member
            // whose arrival we have not seen (we joined after it offered).
            self.members.insert(
                from.clone(),
                Member {
                    name: String::new(),
                    link: None,
                },
            );
            self.outputs.push_back(Output::Event(Event::PeerJoined {
                peer_id: from.clone(),
                name: String::new(),
            }));
        }
        let needs_link = self.members.get(&from).is_some_and(|m| m.link.is_none());
        if needs_link {
            self.open_link(&from, false, now);
        }
        let mut out = Vec::new();
        if let Some(link) = self.members.get_mut(&from).and_then(|m| m.link.as_mut()) {
            link.handle_signal(signal, &mut out);
        }
        self.emit_link(&from, out);
    }

    fn emit_link(&mut self, peer: &PeerId, out: Vec<LinkOutput>) {
        for o in out {
            match o {
                LinkOutput::Command(command) => self.outputs.push_back(Output::Peer {
                    peer: peer.clone(),
                    command,
                }),
                LinkOutput::Signal(signal) => {
                    if self.server == ServerState::Joined {
                        let msg = ClientMessage::Signal {
                            to: peer.clone(),
                            signal,
                        };
                        self.outputs.push_back(Output::SendServer(msg.encode()));
                    }
                }
            }
        }
    }

    /// Something happened on the connection with `peer`.
    pub fn peer_event(&mut self, peer: &PeerId, event: PeerEvent, now: Millis) {
        let Some(link) = self.members.get_mut(peer).and_then(|m| m.link.as_mut()) else {
            return;
        };
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut transfer_input: Option<TransferInput> = None;
        let mut call_input: Option<PeerMessage> = None;
        let mut gone = false;
        let set_state = |link: &mut Link, state: LinkState, events: &mut Vec<Event>| {
            if link.state != state {
                link.state = state;
                events.push(Event::PeerState {
                    peer_id: peer.clone(),
                    state,
                });
            }
        };
        match event {
            PeerEvent::LocalDescription { kind, sdp } => {
                link.local_description(kind, sdp, &mut out);
                link.offer_sent_at = link.awaiting_answer().then_some(now);
            }
            PeerEvent::RemoteDescriptionSet => link.remote_description_set(&mut out),
            PeerEvent::OperationFailed(message) => {
                link.operation_failed(&mut out);
                events.push(Event::PeerError {
                    peer_id: peer.clone(),
                    message: format!("negotiation step failed: {message}"),
                });
            }
            PeerEvent::IceCandidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => out.push(LinkOutput::Signal(Signal::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            })),
            PeerEvent::EndOfCandidates => out.push(LinkOutput::Signal(Signal::EndOfCandidates)),
            PeerEvent::ConnectionState(state) => match state {
                TransportState::Connected if link.channel_open => {
                    link.disconnected_at = None;
                    link.restarts = 0;
                    set_state(link, LinkState::Connected, &mut events);
                }
                TransportState::Disconnected | TransportState::Failed
                    if link.state == LinkState::Connected =>
                {
                    // `failed` skips the grace period.
                    link.disconnected_at = Some(if state == TransportState::Failed {
                        now.saturating_sub(self.config.disconnect_grace)
                    } else {
                        now
                    });
                    set_state(link, LinkState::Disconnected, &mut events);
                }
                TransportState::Closed => set_state(link, LinkState::Closed, &mut events),
                _ => {}
            },
            PeerEvent::ChannelOpen => {
                link.channel_open = true;
                link.restarts = 0;
                link.disconnected_at = None;
                set_state(link, LinkState::Connected, &mut events);
                transfer_input = Some(TransferInput::Ready);
            }
            PeerEvent::ChannelClosed => {
                link.channel_open = false;
                set_state(link, LinkState::Closed, &mut events);
                transfer_input = Some(TransferInput::Lost);
                gone = true;
            }
            PeerEvent::Binary(bytes) => transfer_input = Some(TransferInput::Frame(bytes)),
            PeerEvent::Text(text) => match PeerMessage::decode(&text) {
                Ok(PeerMessage::Chat { text }) => events.push(Event::Chat {
                    from: peer.clone(),
                    text,
                }),
                Ok(msg) => call_input = Some(msg),
                Err(e) => events.push(Event::PeerError {
                    peer_id: peer.clone(),
                    message: format!("dropped a message: {e}"),
                }),
            },
            PeerEvent::Route { local, remote } => events.push(Event::PeerRoute {
                peer_id: peer.clone(),
                local,
                remote,
            }),
        }
        self.outputs.extend(events.into_iter().map(Output::Event));
        self.emit_link(peer, out);
        if let Some(msg) = call_input {
            self.calls.handle(peer, msg);
        }
        if gone {
            self.calls.peer_gone(peer);
        }
        self.pump_calls();
        match transfer_input {
            Some(TransferInput::Ready) => self.transfers.peer_ready(peer),
            Some(TransferInput::Lost) => self.transfers.peer_lost(peer),
            Some(TransferInput::Frame(bytes)) => {
                if let Err(e) = self.transfers.handle_frame(peer, &bytes, now) {
                    self.outputs.push_back(Output::Event(Event::PeerError {
                        peer_id: peer.clone(),
                        message: format!("dropped a file-transfer frame: {e}"),
                    }));
                }
            }
            None => {}
        }
        self.pump_transfers();
    }

    /// Moves the call engine's outputs into the session's.
    fn pump_calls(&mut self) {
        while let Some(o) = self.calls.poll_output() {
            match o {
                CallOutput::Send(peer, msg) => {
                    let open = self
                        .members
                        .get(&peer)
                        .and_then(|m| m.link.as_ref())
                        .is_some_and(|l| l.channel_open);
                    if open {
                        self.outputs.push_back(Output::Peer {
                            peer,
                            command: PeerCommand::SendText(msg.encode()),
                        });
                    }
                }
                CallOutput::Event(event) => {
                    self.outputs.push_back(Output::Event(Event::Call { event }))
                }
            }
        }
    }

    /// Starts a call (`call`: a random id of letters and digits from the
    /// driver) and invites every connected peer.
    pub fn start_call(&mut self, call: &str) -> Result<(), Error> {
        let peers = self.connected_peers();
        self.calls.start(call.to_owned(), &peers)?;
        self.pump_calls();
        Ok(())
    }

    /// Invites one more connected peer to the call we are in.
    pub fn invite_to_call(&mut self, peer: &PeerId) -> Result<(), Error> {
        self.calls.invite(peer)?;
        self.pump_calls();
        Ok(())
    }

    /// Answers the ringing call.
    pub fn answer_call(&mut self) -> Result<(), Error> {
        let peers = self.connected_peers();
        self.calls.answer(&peers)?;
        self.pump_calls();
        Ok(())
    }

    /// Declines the ringing call.
    pub fn decline_call(&mut self) -> Result<(), Error> {
        self.calls.decline()?;
        self.pump_calls();
        Ok(())
    }

    /// Leaves the call (or declines a ringing one).
    pub fn hang_up(&mut self) -> Result<(), Error> {
        self.calls.hang_up()?;
        self.pump_calls();
        Ok(())
    }

    /// The peers our media goes to, in the call we are in.
    pub fn call_participants(&self) -> Vec<PeerId> {
        self.calls.participants()
    }

    /// Moves the transfer engine's outputs into the session's.
    fn pump_transfers(&mut self) {
        while let Some(o) = self.transfers.poll_output() {
            let out = match o {
                TransferOutput::Send { peer, frame } => {
                    let open = self
                        .members
                        .get(&peer)
                        .and_then(|m| m.link.as_ref())
                        .is_some_and(|l| l.channel_open);
                    if !open {
                        // The transfer pauses and resumes when the link is back.
                        continue;
                    }
                    Output::Peer {
                        peer,
                        command: PeerCommand::SendBinary(frame),
                    }
                }
                TransferOutput::ReadChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    len,
                } => Output::ReadChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    len,
                },
                TransferOutput::WriteChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    data,
                } => Output::WriteChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    data,
                },
                TransferOutput::Event(event) => Output::Event(Event::Transfer { event }),
            };
            self.outputs.push_back(out);
        }
    }

    /// Offers files without the sender-side safety check, as a malicious
    /// peer would: for tests of receivers only.
    #[cfg(feature = "hostile-sender")]
    pub fn offer_files_unchecked(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        files: Vec<SourceFile>,
        now: Millis,
    ) -> Result<(), Error> {
        self.transfers
            .offer_unchecked(peer.clone(), id, files, now)?;
        self.pump_transfers();
        Ok(())
    }

    /// Offers files to a connected peer. `id` must be random (16 bytes from
    /// the driver's RNG); files must be hashed at the configured chunk size.
    pub fn offer_files(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        files: Vec<SourceFile>,
        now: Millis,
    ) -> Result<(), Error> {
        let open = self
            .members
            .get(peer)
            .and_then(|m| m.link.as_ref())
            .is_some_and(|l| l.channel_open);
        if !open {
            return Err(Error::NoConnectedPeers);
        }
        self.transfers.offer(peer.clone(), id, files, now)?;
        self.pump_transfers();
        Ok(())
    }

    /// Accepts an offer, resuming from saved have-maps if given.
    pub fn accept_transfer(
        &mut self,
        id: &TransferId,
        resume: Option<Vec<HaveMap>>,
        now: Millis,
    ) -> Result<(), Error> {
        self.transfers.accept(id, resume, now)?;
        self.pump_transfers();
        Ok(())
    }

    /// Declines an offer.
    pub fn decline_transfer(&mut self, id: &TransferId, reason: &str) -> Result<(), Error> {
        self.transfers.decline(id, reason)?;
        self.pump_transfers();
        Ok(())
    }

    /// Cancels a transfer in either direction.
    pub fn cancel_transfer(&mut self, id: &TransferId, reason: &str) -> Result<(), Error> {
        self.transfers.cancel(id, reason)?;
        self.pump_transfers();
        Ok(())
    }

    /// The driver read a chunk asked for by [`Output::ReadChunk`].
    pub fn chunk_read(
        &mut self,
        id: &TransferId,
        file: u32,
        chunk: u64,
        data: Vec<u8>,
        now: Millis,
    ) {
        self.transfers.chunk_read(id, file, chunk, data, now);
        self.pump_transfers();
    }

    /// The driver could not read a file it offered.
    pub fn read_failed(&mut self, id: &TransferId, reason: &str) {
        self.transfers.read_failed(id, reason);
        self.pump_transfers();
    }

    /// The driver stored a chunk asked for by [`Output::WriteChunk`].
    pub fn chunk_written(&mut self, id: &TransferId, file: u32, chunk: u64, now: Millis) {
        self.transfers.chunk_written(id, file, chunk, now);
        self.pump_transfers();
    }

    /// The driver could not store a chunk.
    pub fn write_failed(&mut self, id: &TransferId, reason: &str) {
        self.transfers.write_failed(id, reason);
        self.pump_transfers();
    }

    /// Peers whose data channel is open.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.members
            .iter()
            .filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.channel_open))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The transfer engine, for saved progress and file lists.
    pub fn transfers(&self) -> &TransferEngine {
        &self.transfers
    }

    /// Sends a chat message to every connected peer; returns how many.
    pub fn send_chat(&mut self, text: &str) -> Result<usize, Error> {
        if self.server == ServerState::Closed && self.members.is_empty() {
            return Err(Error::Closed);
        }
        let frame = PeerMessage::Chat {
            text: text.to_owned(),
        };
        let encoded = frame.encode();
        // Validate exactly as a receiver would.
        PeerMessage::decode(&encoded)?;
        let targets: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.channel_open))
            .map(|(id, _)| id.clone())
            .collect();
        if targets.is_empty() {
            return Err(Error::NoConnectedPeers);
        }
        for peer in &targets {
            self.outputs.push_back(Output::Peer {
                peer: peer.clone(),
                command: PeerCommand::SendText(encoded.clone()),
            });
        }
        Ok(targets.len())
    }

    /// Starts a new offer/answer round with `peer`, for example after adding
    /// a media track. Safe to call on both sides at once.
    pub fn renegotiate(&mut self, peer: &PeerId) {
        let mut out = Vec::new();
        if let Some(link) = self.members.get_mut(peer).and_then(|m| m.link.as_mut()) {
            link.request_offer(false, &mut out);
        }
        self.emit_link(peer, out);
    }

    /// Leaves the room and closes every link.
    pub fn leave(&mut self) {
        self.close(true);
    }

    /// Closes everything like [`Session::leave`] but without telling the
    /// server: it keeps this peer's seat for its grace period, so that the
    /// same tab coming back (a reload) takes it again with
    /// [`Session::resume_token`], and the others never see it leave.
    pub fn suspend(&mut self) {
        self.close(false);
    }

    fn close(&mut self, say_leave: bool) {
        if say_leave && (self.server == ServerState::Joined || self.server == ServerState::Joining)
        {
            self.outputs
                .push_back(Output::SendServer(ClientMessage::Leave.encode()));
        }
        self.outputs.push_back(Output::CloseServer);
        self.server = ServerState::Closed;
        let ids: Vec<PeerId> = self.members.keys().cloned().collect();
        for id in ids {
            self.remove_member(&id);
        }
        self.outputs.push_back(Output::Event(Event::Server {
            state: ServerState::Closed,
            retry_in_ms: None,
        }));
    }

    /// The display name of a member, if known.
    pub fn member_name(&self, peer: &PeerId) -> Option<&str> {
        self.members.get(peer).map(|m| m.name.as_str())
    }
}

#[cfg(test)]
mod tests;
