//! In-memory peers on virtual time.
//!
//! [`Net`] runs several [`Session`]s against an in-memory signaling relay and
//! simulated peer connections. The simulated connection follows the WebRTC
//! rules that matter for negotiation: one signaling state, implicit rollback
//! of a local offer when a remote offer is applied, `addIceCandidate` only
//! with a remote description, and connectivity only when both sides hold
//! each other's current descriptions and a candidate from the other's
//! current generation. Every delivery has a random latency, and the network
//! can drop signal frames.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use ferry_protocol::{ClientMessage, PeerInfo, RoomCode, ServerMessage};
#[cfg(not(target_arch = "wasm32"))]
use proptest::prelude::*;

use super::*;

/// Deterministic xorshift PRNG, so failures reproduce from a seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Stable,
    HaveLocalOffer,
    HaveRemoteOffer,
}

/// A simulated `RTCPeerConnection` owned by session `owner` towards `remote`.
#[derive(Debug)]
struct FakePc {
    sig: Sig,
    local: Option<String>,
    remote: Option<String>,
    /// Candidates received, by the remote description generation they follow.
    candidates: Vec<String>,
    channel_open: bool,
    closed: bool,
    counter: u32,
    /// Media changes the driver made (tracks added or removed), each of
    /// which needs an offer from this side to reach the other.
    tracks: u32,
    /// The media changes our current local offer carries.
    offered: Option<u32>,
    /// The media changes an applied answer confirmed.
    negotiated: u32,
}

#[derive(Debug)]
enum Delivery {
    /// A client frame reaching the relay.
    ToServer { from: usize, text: String },
    /// A server frame reaching a session.
    FromServer { to: usize, text: String },
    /// A driver completion or transport event reaching a session.
    Peer {
        to: usize,
        peer: PeerId,
        event: PeerEvent,
    },
}

struct Net {
    now: Millis,
    rng: Rng,
    sessions: Vec<Session>,
    pcs: HashMap<(usize, PeerId), FakePc>,
    /// Relay state: session index -> (room, id).
    joined: BTreeMap<usize, PeerId>,
    server_up: bool,
    next_id: u32,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    pending: HashMap<usize, Delivery>,
    seq: u64,
    signal_loss: f64,
    fifo: HashMap<(usize, bool), Millis>,
    chats: Vec<(usize, PeerId, String)>,
    transfer_events: Vec<(usize, transfer::TransferEvent)>,
    call_events: Vec<(usize, crate::call::CallEvent)>,
    sources: HashMap<transfer::TransferId, Vec<Vec<u8>>>,
    disk: HashMap<(usize, transfer::TransferId, u32), Vec<u8>>,
    /// Every `addIceCandidate` issued without a remote description.
    violations: Vec<String>,
}

impl Net {
    fn new(seed: u64) -> Self {
        Self {
            now: 0,
            rng: Rng(seed.max(1)),
            sessions: Vec::new(),
            pcs: HashMap::new(),
            joined: BTreeMap::new(),
            server_up: true,
            next_id: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            signal_loss: 0.0,
            fifo: HashMap::new(),
            chats: Vec::new(),
            transfer_events: Vec::new(),
            call_events: Vec::new(),
            sources: HashMap::new(),
            disk: HashMap::new(),
            violations: Vec::new(),
        }
    }

    fn add_session(&mut self) -> usize {
        let cfg = Config::new(
            RoomCode::new("room").unwrap(),
            format!("s{}", self.sessions.len()),
        );
        self.sessions.push(Session::new(cfg, self.now));
        let i = self.sessions.len() - 1;
        self.drain(i);
        i
    }

    fn id_of(&self, i: usize) -> PeerId {
        self.sessions[i].peer_id().cloned().unwrap()
    }

    fn index_of(&self, id: &PeerId) -> Option<usize> {
        self.joined
            .iter()
            .find(|(_, p)| *p == id)
            .map(|(i, _)| *i)
            .or_else(|| self.sessions.iter().position(|s| s.peer_id() == Some(id)))
    }

    fn schedule(&mut self, delay: Millis, d: Delivery) {
        self.seq += 1;
        let key = self.seq as usize;
        self.pending.insert(key, d);
        self.queue.push(Reverse((self.now + delay, self.seq, key)));
    }

    fn latency(&mut self) -> Millis {
        self.rng.range(1, 30)
    }

    /// Signaling runs over one WebSocket per peer, so frames between the
    /// relay and a session keep their order: delivery times never go back.
    fn ordered_latency(&mut self, link: (usize, bool)) -> Millis {
        let lat = self.latency();
        let floor = self.fifo.get(&link).copied().unwrap_or(0);
        let at = (self.now + lat).max(floor);
        self.fifo.insert(link, at);
        at - self.now
    }

    /// Carries out everything session `i` asked for.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.sessions[i].poll_output() {
            match out {
                Output::ConnectServer => {
                    let lat = self.latency();
                    if self.server_up {
                        self.schedule(
                            lat,
                            Delivery::Peer {
                                to: i,
                                peer: PeerId::new("server").unwrap(),
                                event: PeerEvent::ChannelOpen,
                            },
                        );
                    } else {
                        self.schedule(
                            lat,
                            Delivery::Peer {
                                to: i,
                                peer: PeerId::new("server").unwrap(),
                                event: PeerEvent::ChannelClosed,
                            },
                        );
                    }
                }
                Output::SendServer(text) => {
                    let lat = self.ordered_latency((i, true));
                    self.schedule(lat, Delivery::ToServer { from: i, text });
                }
                Output::CloseServer => self.relay_leave(i),
                Output::Peer { peer, command } => self.pc_command(i, peer, command),
                Output::Event(Event::Chat { from, text }) => self.chats.push((i, from, text)),
                Output::Event(Event::Transfer { event }) => {
                    if let transfer::TransferEvent::Offered { id, .. } = &event {
                        let id = transfer::id_from_hex(id).unwrap();
                        self.sessions[i]
                            .accept_transfer(&id, None, self.now)
                            .unwrap();
                    }
                    self.transfer_events.push((i, event));
                }
                Output::Event(Event::Call { event }) => {
                    match &event {
                        // Everyone answers; media changes renegotiate, as a
                        // driver does after adding or removing tracks.
                        crate::call::CallEvent::Incoming { .. } => {
                            self.sessions[i].answer_call().unwrap();
                        }
                        crate::call::CallEvent::SendMedia { peer }
                        | crate::call::CallEvent::StopMedia { peer } => {
                            if let Some(pc) = self.pcs.get_mut(&(i, peer.clone())) {
                                pc.tracks += 1;
                            }
                            self.sessions[i].renegotiate(peer);
                        }
                        _ => {}
                    }
                    self.call_events.push((i, event));
                }
                Output::Event(_) => {}
                Output::ReadChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    len,
                } => {
                    let data = self.sources[&id][file as usize]
                        [offset as usize..offset as usize + len as usize]
                        .to_vec();
                    self.sessions[i].chunk_read(&id, file, chunk, data, self.now);
                }
                Output::WriteChunk {
                    id,
                    file,
                    chunk,
                    offset,
                    data,
                } => {
                    let f = self.disk.entry((i, id, file)).or_default();
                    let end = offset as usize + data.len();
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[offset as usize..end].copy_from_slice(&data);
                    self.sessions[i].chunk_written(&id, file, chunk, self.now);
                }
            }
        }
    }

    fn relay_leave(&mut self, i: usize) {
        if let Some(id) = self.joined.remove(&i) {
            let others: Vec<usize> = self.joined.keys().copied().collect();
            for o in others {
                let lat = self.ordered_latency((o, false));
                let text = ServerMessage::PeerLeft {
                    peer_id: id.clone(),
                }
                .encode();
                self.schedule(lat, Delivery::FromServer { to: o, text });
            }
        }
    }

    fn relay(&mut self, from: usize, text: &str) {
        if !self.server_up {
            return;
        }
        match ClientMessage::decode(text).unwrap() {
            ClientMessage::Join {
                rejoin_as,
                name,
                room,
                ..
            } => {
                let taken = |id: &PeerId| self.joined.values().any(|p| p == id);
                let id = match rejoin_as {
                    Some(id) if !taken(&id) => id,
                    _ => {
                        self.next_id += 1;
                        PeerId::new(format!("p{:03}", self.next_id)).unwrap()
                    }
                };
                let peers: Vec<PeerInfo> = self
                    .joined
                    .values()
                    .map(|p| PeerInfo {
                        id: p.clone(),
                        name: String::new(),
                    })
                    .collect();
                let others: Vec<usize> = self.joined.keys().copied().collect();
                for o in others {
                    let lat = self.ordered_latency((o, false));
                    let text = ServerMessage::PeerJoined {
                        peer: PeerInfo {
                            id: id.clone(),
                            name: name.clone(),
                        },
                    }
                    .encode();
                    self.schedule(lat, Delivery::FromServer { to: o, text });
                }
                self.joined.insert(from, id.clone());
                let lat = self.ordered_latency((from, false));
                let text = ServerMessage::Joined {
                    version: 1,
                    room,
                    peer_id: id,
                    peers,
                    heartbeat_ms: 5000,
                    ice_servers: Vec::new(),
                    resume_token: None,
                    grace_ms: None,
                }
                .encode();
                self.schedule(lat, Delivery::FromServer { to: from, text });
            }
            ClientMessage::Signal { to, signal } => {
                let Some(sender) = self.joined.get(&from).cloned() else {
                    return;
                };
                let Some((&target, _)) = self.joined.iter().find(|(_, p)| **p == to) else {
                    return;
                };
                if self.rng.chance(self.signal_loss) {
                    return;
                }
                let lat = self.ordered_latency((target, false));
                let text = ServerMessage::Signal {
                    from: sender,
                    signal,
                }
                .encode();
                self.schedule(lat, Delivery::FromServer { to: target, text });
            }
            ClientMessage::Leave => self.relay_leave(from),
            _ => {}
        }
    }

    fn pc_command(&mut self, i: usize, peer: PeerId, command: PeerCommand) {
        let key = (i, peer.clone());
        let lat = self.rng.range(1, 8);
        let me = self.sessions[i].peer_id().cloned();
        match command {
            PeerCommand::Create { .. } => {
                self.pcs.insert(
                    key,
                    FakePc {
                        sig: Sig::Stable,
                        local: None,
                        remote: None,
                        candidates: Vec::new(),
                        channel_open: false,
                        closed: false,
                        counter: 0,
                        tracks: 0,
                        offered: None,
                        negotiated: 0,
                    },
                );
            }
            PeerCommand::CreateOffer { .. } => {
                let pc = self.pcs.get_mut(&key).unwrap();
                let event = if pc.sig == Sig::HaveRemoteOffer {
                    PeerEvent::OperationFailed("createOffer in have-remote-offer".into())
                } else {
                    pc.counter += 1;
                    let sdp = format!("offer:{}:{}", me.clone().unwrap(), pc.counter);
                    pc.local = Some(sdp.clone());
                    pc.offered = Some(pc.tracks);
                    pc.sig = Sig::HaveLocalOffer;
                    PeerEvent::LocalDescription {
                        kind: SdpKind::Offer,
                        sdp,
                    }
                };
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: i,
                        peer: peer.clone(),
                        event,
                    },
                );
                self.gather(i, &peer);
            }
            PeerCommand::AcceptOffer { sdp } => {
                let pc = self.pcs.get_mut(&key).unwrap();
                // Implicit rollback of our own offer. An answer names the
                // offer it answers.
                pc.offered = None;
                pc.counter += 1;
                let answer = format!("answer:{}:{}|{sdp}", me.clone().unwrap(), pc.counter);
                pc.remote = Some(sdp);
                pc.local = Some(answer.clone());
                pc.sig = Sig::Stable;
                let event = PeerEvent::LocalDescription {
                    kind: SdpKind::Answer,
                    sdp: answer,
                };
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: i,
                        peer: peer.clone(),
                        event,
                    },
                );
                self.gather(i, &peer);
            }
            PeerCommand::ApplyAnswer { sdp } => {
                let pc = self.pcs.get_mut(&key).unwrap();
                let answers_ours = pc
                    .local
                    .as_ref()
                    .is_some_and(|l| sdp.ends_with(&format!("|{l}")));
                let event = if pc.sig == Sig::HaveLocalOffer && answers_ours {
                    pc.remote = Some(sdp);
                    pc.sig = Sig::Stable;
                    pc.negotiated = pc.offered.take().unwrap_or(pc.negotiated);
                    PeerEvent::RemoteDescriptionSet
                } else {
                    PeerEvent::OperationFailed("answer in wrong state".into())
                };
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: i,
                        peer: peer.clone(),
                        event,
                    },
                );
            }
            PeerCommand::AddCandidate { candidate, .. } => {
                let pc = self.pcs.get_mut(&key).unwrap();
                if pc.remote.is_none() {
                    self.violations.push(format!(
                        "session {i} added {candidate} without a remote description"
                    ));
                }
                pc.candidates.push(candidate);
            }
            PeerCommand::SendText(text) => {
                let target = self.index_of(&peer).unwrap();
                let lat = self.latency();
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: target,
                        peer: me.unwrap(),
                        event: PeerEvent::Text(text),
                    },
                );
            }
            PeerCommand::SendBinary(bytes) => {
                // One ordered channel: keep delivery order per pair.
                let target = self.index_of(&peer).unwrap();
                let lat = self.ordered_latency((target + 1000 * (i + 1), true));
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: target,
                        peer: me.unwrap(),
                        event: PeerEvent::Binary(bytes),
                    },
                );
            }
            PeerCommand::Close => {
                let _ = &key;
                self.pcs.remove(&key);
                if let (Some(target), Some(me)) = (self.index_of(&peer), me)
                    && let Some(other) = self.pcs.get_mut(&(target, me.clone()))
                    && other.channel_open
                {
                    other.closed = true;
                    other.channel_open = false;
                    let lat = self.latency();
                    self.schedule(
                        lat,
                        Delivery::Peer {
                            to: target,
                            peer: me,
                            event: PeerEvent::ChannelClosed,
                        },
                    );
                }
            }
        }
    }

    /// Trickles one candidate for the current local description.
    fn gather(&mut self, i: usize, peer: &PeerId) {
        let pc = &self.pcs[&(i, peer.clone())];
        let cand = format!("cand-for:{}", pc.local.clone().unwrap());
        let lat = self.rng.range(5, 20);
        self.schedule(
            lat,
            Delivery::Peer {
                to: i,
                peer: peer.clone(),
                event: PeerEvent::IceCandidate {
                    candidate: cand,
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            },
        );
    }

    /// Opens channels between pairs whose negotiation has converged.
    fn check_connectivity(&mut self) {
        let keys: Vec<(usize, PeerId)> = self.pcs.keys().cloned().collect();
        for (i, peer) in keys {
            let Some(j) = self.index_of(&peer) else {
                continue;
            };
            let me = match self.sessions[i].peer_id() {
                Some(m) => m.clone(),
                None => continue,
            };
            let (Some(a), Some(b)) = (
                self.pcs.get(&(i, peer.clone())),
                self.pcs.get(&(j, me.clone())),
            ) else {
                continue;
            };
            if a.channel_open || a.closed {
                continue;
            }
            let converged = a.sig == Sig::Stable
                && b.sig == Sig::Stable
                && a.local.is_some()
                && a.remote == b.local
                && b.remote == a.local
                && a.candidates.iter().any(|c| {
                    Some(c.as_str()) == b.local.as_ref().map(|l| format!("cand-for:{l}")).as_deref()
                })
                && b.candidates.iter().any(|c| {
                    Some(c.as_str()) == a.local.as_ref().map(|l| format!("cand-for:{l}")).as_deref()
                });
            if converged {
                self.pcs.get_mut(&(i, peer.clone())).unwrap().channel_open = true;
                let lat = self.rng.range(10, 40);
                self.schedule(
                    lat,
                    Delivery::Peer {
                        to: i,
                        peer: peer.clone(),
                        event: PeerEvent::ChannelOpen,
                    },
                );
            }
        }
    }

    fn step(&mut self) -> bool {
        let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
        let next_timer = self.sessions.iter().filter_map(Session::poll_timeout).min();
        let Some(t) = [next_event, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(t);
        if next_event == Some(t) {
            let Reverse((_, _, key)) = self.queue.pop().unwrap();
            match self.pending.remove(&key).unwrap() {
                Delivery::ToServer { from, text } => self.relay(from, &text),
                Delivery::FromServer { to, text } => {
                    self.sessions[to].server_text(&text, self.now);
                    self.drain(to);
                }
                Delivery::Peer { to, peer, event } => {
                    if peer.as_str() == "server" {
                        match event {
                            PeerEvent::ChannelOpen if self.server_up => {
                                self.sessions[to].server_opened(self.now)
                            }
                            _ => self.sessions[to].server_closed(self.now),
                        }
                    } else {
                        self.sessions[to].peer_event(&peer, event, self.now);
                    }
                    self.drain(to);
                }
            }
        } else {
            for i in 0..self.sessions.len() {
                if self.sessions[i]
                    .poll_timeout()
                    .is_some_and(|d| d <= self.now)
                {
                    self.sessions[i].handle_timeout(self.now);
                    self.drain(i);
                }
            }
        }
        self.check_connectivity();
        true
    }

    fn run_until(&mut self, deadline: Millis) {
        while self.now < deadline && self.step() {}
    }

    fn all_connected(&self) -> bool {
        let n = self.sessions.len();
        (0..n).all(|i| {
            (0..n).filter(|&j| j != i).all(|j| {
                let Some(pj) = self.sessions[j].peer_id() else {
                    return false;
                };
                self.sessions[i].link_state(pj) == Some(LinkState::Connected)
            })
        })
    }

    /// The driver of session `i` changed its media towards `peer` and asks
    /// for a renegotiation, as a page does after `addTrack`.
    fn change_media(&mut self, i: usize, peer: &PeerId) {
        self.pcs.get_mut(&(i, peer.clone())).unwrap().tracks += 1;
        self.sessions[i].renegotiate(peer);
        self.drain(i);
    }

    /// Media changes that no applied answer confirmed yet.
    fn unnegotiated(&self) -> Vec<String> {
        self.pcs
            .iter()
            .filter(|(_, pc)| pc.negotiated != pc.tracks)
            .map(|((i, peer), pc)| {
                format!(
                    "session {i} to {peer}: {} of {} changes negotiated ({:?})",
                    pc.negotiated, pc.tracks, pc.sig
                )
            })
            .collect()
    }

    fn stop_server(&mut self) {
        self.server_up = false;
        self.joined.clear();
        for i in 0..self.sessions.len() {
            self.sessions[i].server_closed(self.now);
            self.drain(i);
        }
    }
}

#[test]
fn two_peers_connect_and_chat() {
    let mut net = Net::new(7);
    let a = net.add_session();
    net.run_until(200);
    let b = net.add_session();
    net.run_until(2_000);
    assert!(net.all_connected());
    assert!(net.violations.is_empty(), "{:?}", net.violations);
    assert_eq!(net.sessions[a].send_chat("hello").unwrap(), 1);
    net.drain(a);
    net.run_until(3_000);
    assert_eq!(net.chats, vec![(b, net.id_of(a), "hello".to_string())]);
}

#[test]
fn a_call_of_four_renegotiates_every_link_and_a_hang_up_stops_media() {
    let mut net = Net::new(21);
    for _ in 0..4 {
        net.add_session();
        net.run_until(net.now + 100);
    }
    net.run_until(net.now + 3_000);
    assert!(net.all_connected());
    net.sessions[0].start_call("c0ffee").unwrap();
    net.drain(0);
    net.run_until(net.now + 5_000);
    assert!(net.violations.is_empty(), "{:?}", net.violations);
    for i in 0..4 {
        let mut got = net.sessions[i].call_participants();
        got.sort();
        let mut want: Vec<PeerId> = (0..4).filter(|&j| j != i).map(|j| net.id_of(j)).collect();
        want.sort();
        assert_eq!(got, want, "session {i}");
    }
    // Renegotiation for media kept every link up and carried every
    // track, and chat still flows.
    assert!(net.all_connected());
    assert_eq!(net.unnegotiated(), Vec::<String>::new());
    assert_eq!(net.sessions[1].send_chat("during the call").unwrap(), 3);
    net.drain(1);
    net.sessions[2].hang_up().unwrap();
    net.drain(2);
    net.run_until(net.now + 3_000);
    for i in [0, 1, 3] {
        assert!(
            !net.sessions[i].call_participants().contains(&net.id_of(2)),
            "session {i}"
        );
    }
    assert!(net.sessions[2].call_participants().is_empty());
    assert_eq!(net.unnegotiated(), Vec::<String>::new());
    assert_eq!(
        net.chats
            .iter()
            .filter(|c| c.2 == "during the call")
            .count(),
        3
    );
    assert!(net.all_connected());
}

#[test]
fn mesh_of_eight_joining_at_once_connects() {
    let mut net = Net::new(99);
    for _ in 0..8 {
        net.add_session();
    }
    net.run_until(5_000);
    assert!(net.all_connected());
    assert!(net.violations.is_empty(), "{:?}", net.violations);
}

#[test]
fn glare_on_both_sides_converges() {
    let mut net = Net::new(3);
    let a = net.add_session();
    let b = net.add_session();
    net.run_until(2_000);
    assert!(net.all_connected());
    // Both start an offer at the same instant.
    let (ida, idb) = (net.id_of(a), net.id_of(b));
    net.change_media(a, &idb);
    net.change_media(b, &ida);
    net.run_until(4_000);
    // The polite side's offer lost the collision, and is made again.
    assert_eq!(net.unnegotiated(), Vec::<String>::new());
    let pa = &net.pcs[&(a, idb)];
    let pb = &net.pcs[&(b, ida)];
    assert_eq!(pa.sig, Sig::Stable);
    assert_eq!(pb.sig, Sig::Stable);
    assert_eq!(pa.remote, pb.local);
    assert_eq!(pb.remote, pa.local);
    assert!(net.violations.is_empty(), "{:?}", net.violations);
}

#[test]
fn media_changes_during_a_negotiation_are_offered_afterwards() {
    for seed in 1..40 {
        let mut net = Net::new(seed);
        let a = net.add_session();
        let b = net.add_session();
        net.run_until(2_000);
        assert!(net.all_connected());
        let (ida, idb) = (net.id_of(a), net.id_of(b));
        // A second change while the first offer is being made, then one
        // while it waits for its answer, then one from the other side
        // while that answer is being applied.
        net.change_media(a, &idb);
        net.change_media(a, &idb);
        let t = net.now + 10;
        net.run_until(t);
        net.change_media(a, &idb);
        let t = net.now + net.rng.range(0, 30);
        net.run_until(t);
        net.change_media(b, &ida);
        net.run_until(net.now + 4_000);
        assert_eq!(net.unnegotiated(), Vec::<String>::new(), "seed {seed}");
        assert!(net.all_connected(), "seed {seed}");
    }
}

#[test]
fn an_offer_that_gets_no_answer_is_made_again() {
    let mut net = Net::new(9);
    let a = net.add_session();
    let b = net.add_session();
    net.run_until(2_000);
    assert!(net.all_connected());
    let (ida, idb) = (net.id_of(a), net.id_of(b));
    // The relay loses A's offer (as when it refuses it with peer_busy).
    net.signal_loss = 1.0;
    net.change_media(a, &idb);
    net.run_until(net.now + 200);
    net.signal_loss = 0.0;
    // Meanwhile B asks for one too; whichever side is impolite ignores the
    // other's offer while it waits for its lost answer.
    net.change_media(b, &ida);
    let timeout = net.sessions[a].config.connect_timeout;
    net.run_until(net.now + timeout + 3_000);
    assert_eq!(net.unnegotiated(), Vec::<String>::new());
    assert!(net.all_connected());
}

#[test]
fn lost_signals_recover_through_ice_restart() {
    let mut net = Net::new(11);
    net.signal_loss = 0.3;
    for s in &mut net.sessions {
        s.config.max_ice_restarts = 20;
    }
    for _ in 0..3 {
        let i = net.add_session();
        net.sessions[i].config.max_ice_restarts = 20;
    }
    net.run_until(120_000);
    assert!(net.all_connected());
}

#[test]
fn connect_timeout_gives_up_after_restarts() {
    let mut net = Net::new(5);
    net.signal_loss = 1.0;
    let a = net.add_session();
    let _b = net.add_session();
    net.run_until(200_000);
    let peer = net.sessions[a].members.keys().next().cloned().unwrap();
    assert_eq!(net.sessions[a].link_state(&peer), Some(LinkState::Failed));
    assert_eq!(net.sessions[a].poll_timeout(), None);
}

#[test]
fn links_survive_a_server_restart_and_rejoin_keeps_ids() {
    let mut net = Net::new(21);
    let a = net.add_session();
    let b = net.add_session();
    net.run_until(2_000);
    assert!(net.all_connected());
    let (ida, idb) = (net.id_of(a), net.id_of(b));
    net.stop_server();
    assert_eq!(net.sessions[a].server_state(), ServerState::Lost);
    net.run_until(4_000);
    // Chat still flows directly.
    net.sessions[a].send_chat("still here").unwrap();
    net.drain(a);
    net.run_until(4_500);
    assert_eq!(net.chats.last().unwrap().2, "still here");
    net.server_up = true;
    net.run_until(15_000);
    assert_eq!(net.sessions[a].server_state(), ServerState::Joined);
    assert_eq!(net.sessions[b].server_state(), ServerState::Joined);
    assert_eq!(net.id_of(a), ida);
    assert_eq!(net.id_of(b), idb);
    assert!(net.all_connected());
}

#[test]
fn peer_left_closes_the_link() {
    let mut net = Net::new(8);
    let a = net.add_session();
    let b = net.add_session();
    net.run_until(2_000);
    let idb = net.id_of(b);
    net.sessions[b].leave();
    net.drain(b);
    net.run_until(3_000);
    assert_eq!(net.sessions[a].link_state(&idb), None);
    assert!(!net.sessions[a].members.contains_key(&idb));
}

#[test]
fn join_timeout_reconnects_with_backoff() {
    let mut net = Net::new(4);
    net.server_up = false;
    let a = net.add_session();
    net.run_until(3_000);
    assert_ne!(net.sessions[a].server_state(), ServerState::Joined);
    net.server_up = true;
    net.run_until(10_000);
    assert_eq!(net.sessions[a].server_state(), ServerState::Joined);
}

#[test]
fn a_folder_swaps_between_two_sessions() {
    let mut net = Net::new(12);
    let a = net.add_session();
    let b = net.add_session();
    net.run_until(2_000);
    assert!(net.all_connected());
    let chunk = net.sessions[a].config.transfer.chunk_size;
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "album/one.jpg".into(),
            (0..700_000u32).map(|i| (i % 251) as u8).collect(),
        ),
        ("album/empty.txt".into(), Vec::new()),
        ("readme.md".into(), b"hello".to_vec()),
    ];
    let sources = files
        .iter()
        .map(|(path, bytes)| {
            let mut h = transfer::tree::FileHasher::new(bytes.len() as u64, chunk);
            if bytes.is_empty() {
                h.update(&[]);
            }
            for c in bytes.chunks(chunk as usize) {
                h.update(c);
            }
            transfer::SourceFile {
                path: path.clone(),
                size: bytes.len() as u64,
                digest: h.finish().unwrap(),
            }
        })
        .collect();
    let id = [5u8; 16];
    net.sources
        .insert(id, files.iter().map(|(_, b)| b.clone()).collect());
    let idb = net.id_of(b);
    net.sessions[a]
        .offer_files(&idb, id, sources, net.now)
        .unwrap();
    net.drain(a);
    net.run_until(10_000);
    let done = |who: usize| {
        net.transfer_events
            .iter()
            .any(|(i, e)| *i == who && matches!(e, transfer::TransferEvent::Completed { .. }))
    };
    assert!(done(a) && done(b));
    for (k, (_, bytes)) in files.iter().enumerate() {
        assert_eq!(
            net.disk
                .get(&(b, id, k as u32))
                .map(Vec::as_slice)
                .unwrap_or_default(),
            bytes.as_slice()
        );
    }
    // Chat still works alongside.
    net.sessions[b].send_chat("got it").unwrap();
    net.drain(b);
    net.run_until(11_000);
    assert_eq!(net.chats.last().unwrap().2, "got it");
}

#[test]
fn bad_frames_become_events_not_panics() {
    let mut s = Session::new(Config::new(RoomCode::new("r").unwrap(), ""), 0);
    s.server_opened(1);
    s.server_text("{garbage", 2);
    s.server_text(r#"{"type":"joined","version":1,"room":"r","peer_id":"me","peers":[{"id":"x","name":""}],"heartbeat_ms":1}"#, 3);
    let x = PeerId::new("x").unwrap();
    s.peer_event(&x, PeerEvent::Text("not json".into()), 4);
    s.peer_event(
        &x,
        PeerEvent::Text(r#"{"type":"chat","text":""}"#.into()),
        5,
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_output())
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ServerError {
            code: ErrorCode::Malformed,
            ..
        }
    )));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::PeerError { .. }))
            .count(),
        2
    );
    assert_eq!(s.send_chat("x"), Err(Error::NoConnectedPeers));
    assert!(matches!(
        s.send_chat(&"x".repeat(9000)),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn fatal_server_error_stops_reconnecting() {
    let mut s = Session::new(Config::new(RoomCode::new("r").unwrap(), ""), 0);
    s.server_opened(1);
    s.server_text(r#"{"type":"error","code":"room_full","message":"full"}"#, 2);
    assert_eq!(s.server_state(), ServerState::Closed);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_server_going_away_is_reconnected_to() {
    let mut s = Session::new(Config::new(RoomCode::new("r").unwrap(), ""), 0);
    s.server_opened(1);
    s.server_text(
        r#"{"type":"joined","version":1,"room":"r","peer_id":"b","peers":[],"heartbeat_ms":1000}"#,
        2,
    );
    s.server_text(
        r#"{"type":"error","code":"going_away","message":"shutting down"}"#,
        3,
    );
    assert_eq!(s.server_state(), ServerState::Joined, "not given up");
    s.server_closed(4);
    while s.poll_output().is_some() {}
    let retry = s.poll_timeout().expect("a reconnect is scheduled");
    s.handle_timeout(retry);
    assert!(
        std::iter::from_fn(|| s.poll_output()).any(|o| matches!(o, Output::ConnectServer)),
        "it connects again"
    );
}

#[test]
fn candidates_before_remote_description_are_buffered() {
    let mut s = Session::new(Config::new(RoomCode::new("r").unwrap(), ""), 0);
    s.server_opened(1);
    s.server_text(
        r#"{"type":"joined","version":1,"room":"r","peer_id":"b","peers":[],"heartbeat_ms":1}"#,
        2,
    );
    s.server_text(r#"{"type":"peer_joined","peer":{"id":"a","name":""}}"#, 3);
    while s.poll_output().is_some() {}
    s.server_text(
        r#"{"type":"signal","from":"a","signal":{"kind":"candidate","candidate":"c1"}}"#,
        4,
    );
    assert!(std::iter::from_fn(|| s.poll_output()).all(|o| !matches!(
        o,
        Output::Peer {
            command: PeerCommand::AddCandidate { .. },
            ..
        }
    )));
    s.server_text(
        r#"{"type":"signal","from":"a","signal":{"kind":"offer","sdp":"o"}}"#,
        5,
    );
    let outs: Vec<Output> = std::iter::from_fn(|| s.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Peer {
            command: PeerCommand::AcceptOffer { .. },
            ..
        }
    )));
    assert!(!outs.iter().any(|o| matches!(
        o,
        Output::Peer {
            command: PeerCommand::AddCandidate { .. },
            ..
        }
    )));
    let a = PeerId::new("a").unwrap();
    s.peer_event(
        &a,
        PeerEvent::LocalDescription {
            kind: SdpKind::Answer,
            sdp: "ans".into(),
        },
        6,
    );
    let outs: Vec<Output> = std::iter::from_fn(|| s.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o, Output::Peer { command: PeerCommand::AddCandidate { candidate, .. }, .. } if candidate == "c1")));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::SendServer(t) if t.contains("\"answer\"")))
    );
}

#[cfg(not(target_arch = "wasm32"))]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_meshes_converge(seed in 1u64.., peers in 2usize..=6, stagger in 0u64..300) {
        let mut net = Net::new(seed);
        for _ in 0..peers {
            net.add_session();
            let t = net.now + stagger;
            net.run_until(t);
        }
        let t = net.now + 500;
        net.run_until(t);
        // Random renegotiations, sometimes colliding.
        for _ in 0..3 {
            let i = (net.rng.next() % peers as u64) as usize;
            let j = (net.rng.next() % peers as u64) as usize;
            if i != j {
                let pj = net.id_of(j);
                let pi = net.id_of(i);
                net.change_media(i, &pj);
                let t = net.now + net.rng.range(0, 40);
                net.run_until(t);
                net.change_media(j, &pi);
                let t = net.now + net.rng.range(0, 40);
                net.run_until(t);
            }
        }
        let t = net.now + 8_000;
        net.run_until(t);
        prop_assert!(net.all_connected());
        prop_assert!(net.violations.is_empty());
        prop_assert_eq!(net.unnegotiated(), Vec::<String>::new());
    }
}
