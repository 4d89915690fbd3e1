//! Calls: who rings whom, who is in the call, and whom to send media to.
//!
//! # Design
//!
//! A call is a room-wide mesh of at most [`MAX_PARTICIPANTS`] peers, on the
//! same peer connections as chat and file transfer. Call control travels as
//! JSON peer messages on the data channel (`call_invite`, `call_join`,
//! `call_decline`, `call_leave`); media tracks are the driver's business.
//! The engine only decides, and tells the driver with
//! [`CallEvent::SendMedia`] and [`CallEvent::StopMedia`], to which peers this
//! side's camera and microphone go; the driver adds or removes the tracks
//! and asks the session to renegotiate, which perfect negotiation handles
//! from both sides at once.
//!
//! - Starting a call invites every connected peer. A peer that answers sends
//!   `call_join` to everyone it is connected to; each participant that meets
//!   a new participant starts sending it media and answers with one
//!   `call_join` of its own, so every pair of participants ends up sending
//!   both ways, however the answers cross.
//! - Declining tells the inviter; leaving (or a dropped link) tells the
//!   others, who stop sending to the one that left.
//! - A participant that already has [`MAX_PARTICIPANTS`] − 1 others declines
//!   newcomers with `full`, so a mesh stays usable on modest uplinks.

use std::collections::{BTreeSet, VecDeque};

use ferry_protocol::{PeerId, PeerMessage};
use serde::Serialize;

/// Most peers in one call, this one included.
pub const MAX_PARTICIPANTS: usize = 4;

/// What the engine tells the driver and the user about calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallEvent {
    /// A peer invites us to a call: answer or decline.
    Incoming {
        /// The call.
        call: String,
        /// Who invites.
        from: PeerId,
    },
    /// We are in a call now (we started or answered it).
    Joined {
        /// The call.
        call: String,
    },
    /// Start sending our media to this participant (add the tracks, then
    /// renegotiate).
    SendMedia {
        /// The participant.
        peer: PeerId,
    },
    /// Stop sending our media to this peer (remove the tracks, then
    /// renegotiate); its tile goes away.
    StopMedia {
        /// The peer.
        peer: PeerId,
    },
    /// A peer declined our invitation.
    Declined {
        /// The peer.
        peer: PeerId,
        /// `declined`, `busy` or `full`.
        reason: String,
    },
    /// The call is over for us.
    Ended {
        /// The call.
        call: String,
        /// Why, for the user.
        reason: String,
    },
}

/// A refused call request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Not possible in the current state (say, answering with no call ringing).
    #[error("{0}")]
    State(&'static str),
    /// The call id is not 1 to 32 letters and digits.
    #[error("a call id is 1 to 32 letters and digits")]
    BadId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Ringing {
        call: String,
        from: PeerId,
    },
    InCall {
        call: String,
        with: BTreeSet<PeerId>,
    },
}

/// What the engine asks of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallOutput {
    /// Send this message to the peer over the data channel.
    Send(PeerId, PeerMessage),
    /// Tell the user and the driver.
    Event(CallEvent),
}

/// The call state of one peer. See the module docs.
#[derive(Debug)]
pub(crate) struct CallEngine {
    state: State,
    out: VecDeque<CallOutput>,
}

impl CallEngine {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Idle,
            out: VecDeque::new(),
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    /// The call we are in, if any.
    pub(crate) fn current(&self) -> Option<&str> {
        match &self.state {
            State::InCall { call, .. } => Some(call),
            _ => None,
        }
    }

    /// The participants we send media to.
    pub(crate) fn participants(&self) -> Vec<PeerId> {
        match &self.state {
            State::InCall { with, .. } => with.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn send(&mut self, to: &PeerId, msg: PeerMessage) {
        self.out.push_back(CallOutput::Send(to.clone(), msg));
    }

    fn event(&mut self, e: CallEvent) {
        self.out.push_back(CallOutput::Event(e));
    }

    /// Starts call `call` (a random id from the driver) and invites `peers`.
    pub(crate) fn start(&mut self, call: String, peers: &[PeerId]) -> Result<(), CallError> {
        if call.is_empty() || call.len() > 32 || !call.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CallError::BadId);
        }
        if self.state != State::Idle {
            return Err(CallError::State("already in a call or ringing"));
        }
        self.state = State::InCall {
            call: call.clone(),
            with: BTreeSet::new(),
        };
        self.event(CallEvent::Joined { call: call.clone() });
        for p in peers {
            self.send(p, PeerMessage::CallInvite { call: call.clone() });
        }
        Ok(())
    }

    /// Invites a peer that connected after the call started.
    pub(crate) fn invite(&mut self, peer: &PeerId) -> Result<(), CallError> {
        let State::InCall { call, with } = &self.state else {
            return Err(CallError::State("not in a call"));
        };
        if with.contains(peer) {
            return Ok(());
        }
        let call = call.clone();
        self.send(peer, PeerMessage::CallInvite { call });
        Ok(())
    }

    /// Answers the ringing call; `peers` are all connected peers, who learn
    /// that we are in it.
    pub(crate) fn answer(&mut self, peers: &[PeerId]) -> Result<(), CallError> {
        let State::Ringing { call, .. } = &self.state else {
            return Err(CallError::State("no call is ringing"));
        };
        let call = call.clone();
        self.state = State::InCall {
            call: call.clone(),
            with: BTreeSet::new(),
        };
        self.event(CallEvent::Joined { call: call.clone() });
        for p in peers {
            self.send(p, PeerMessage::CallJoin { call: call.clone() });
        }
        Ok(())
    }

    /// Declines the ringing call.
    pub(crate) fn decline(&mut self) -> Result<(), CallError> {
        let State::Ringing { call, from } = std::mem::replace(&mut self.state, State::Idle) else {
            return Err(CallError::State("no call is ringing"));
        };
        self.send(
            &from,
            PeerMessage::CallDecline {
                call: call.clone(),
                reason: "declined".into(),
            },
        );
        self.event(CallEvent::Ended {
            call,
            reason: "you declined".into(),
        });
        Ok(())
    }

    /// Leaves the call we are in (or declines a ringing one).
    pub(crate) fn hang_up(&mut self) -> Result<(), CallError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::InCall { call, with } => {
                for p in &with {
                    self.send(p, PeerMessage::CallLeave { call: call.clone() });
                    self.event(CallEvent::StopMedia { peer: p.clone() });
                }
                self.event(CallEvent::Ended {
                    call,
                    reason: "you hung up".into(),
                });
                Ok(())
            }
            ringing @ State::Ringing { .. } => {
                self.state = ringing;
                self.decline()
            }
            State::Idle => Err(CallError::State("not in a call")),
        }
    }

    fn add(&mut self, peer: &PeerId) -> bool {
        let State::InCall { call, with } = &mut self.state else {
            return false;
        };
        if with.contains(peer) {
            return false;
        }
        if with.len() + 1 >= MAX_PARTICIPANTS {
            let call = call.clone();
            self.send(
                peer,
                PeerMessage::CallDecline {
                    call,
                    reason: "full".into(),
                },
            );
            return false;
        }
        with.insert(peer.clone());
        self.event(CallEvent::SendMedia { peer: peer.clone() });
        true
    }

    /// A call message from `peer`.
    pub(crate) fn handle(&mut self, peer: &PeerId, msg: PeerMessage) {
        match msg {
            PeerMessage::CallInvite { call } => match &self.state {
                State::Idle => {
                    self.state = State::Ringing {
                        call: call.clone(),
                        from: peer.clone(),
                    };
                    self.event(CallEvent::Incoming {
                        call,
                        from: peer.clone(),
                    });
                }
                // Our own call: the inviter is in it.
                State::InCall { call: ours, .. } if *ours == call => {
                    if self.add(peer) {
                        self.send(peer, PeerMessage::CallJoin { call });
                    }
                }
                State::Ringing { call: ringing, .. } if *ringing == call => {}
                _ => self.send(
                    peer,
                    PeerMessage::CallDecline {
                        call,
                        reason: "busy".into(),
                    },
                ),
            },
            // A newcomer to our call: tell it we are in it too, once.
            PeerMessage::CallJoin { call }
                if self.current() == Some(call.as_str()) && self.add(peer) =>
            {
                self.send(peer, PeerMessage::CallJoin { call });
            }
            PeerMessage::CallDecline { call, reason } if self.current() == Some(call.as_str()) => {
                self.remove(peer);
                self.event(CallEvent::Declined {
                    peer: peer.clone(),
                    reason,
                });
            }
            PeerMessage::CallLeave { call } => match &self.state {
                State::Ringing { call: c, from } if *c == call && from == peer => {
                    self.state = State::Idle;
                    self.event(CallEvent::Ended {
                        call,
                        reason: "the caller hung up".into(),
                    });
                }
                State::InCall { call: c, .. } if *c == call => self.remove(peer),
                _ => {}
            },
            _ => {}
        }
    }

    fn remove(&mut self, peer: &PeerId) {
        if let State::InCall { with, .. } = &mut self.state
            && with.remove(peer)
        {
            self.event(CallEvent::StopMedia { peer: peer.clone() });
        }
    }

    /// The link to `peer` is gone.
    pub(crate) fn peer_gone(&mut self, peer: &PeerId) {
        match &self.state {
            State::Ringing { call, from } if from == peer => {
                let call = call.clone();
                self.state = State::Idle;
                self.event(CallEvent::Ended {
                    call,
                    reason: "the caller went away".into(),
                });
            }
            _ => self.remove(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    /// A little mesh of call engines with an in-memory message bus; the
    /// bus delivers in a pseudo-random order to exercise crossing answers.
    struct Mesh {
        peers: Vec<(PeerId, CallEngine)>,
        bus: Vec<(PeerId, PeerId, PeerMessage)>,
        events: Vec<(PeerId, CallEvent)>,
        seed: u64,
    }

    impl Mesh {
        fn new(n: usize, seed: u64) -> Self {
            Self {
                peers: (0..n)
                    .map(|i| (id(&format!("p{i}")), CallEngine::new()))
                    .collect(),
                bus: Vec::new(),
                events: Vec::new(),
                seed,
            }
        }
        fn ids(&self) -> Vec<PeerId> {
            self.peers.iter().map(|(p, _)| p.clone()).collect()
        }
        fn others(&self, me: usize) -> Vec<PeerId> {
            self.ids()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, p)| p)
                .collect()
        }
        fn drain(&mut self, i: usize) {
            let me = self.peers[i].0.clone();
            while let Some(o) = self.peers[i].1.poll_output() {
                match o {
                    CallOutput::Send(to, m) => self.bus.push((me.clone(), to, m)),
                    CallOutput::Event(e) => self.events.push((me.clone(), e)),
                }
            }
        }
        fn run(&mut self) {
            for i in 0..self.peers.len() {
                self.drain(i);
            }
            while !self.bus.is_empty() {
                self.seed = self
                    .seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = (self.seed >> 33) as usize % self.bus.len();
                let (from, to, msg) = self.bus.remove(k);
                let i = self.peers.iter().position(|(p, _)| *p == to).unwrap();
                self.peers[i].1.handle(&from, msg);
                self.drain(i);
            }
        }
        fn sending(&self, i: usize) -> BTreeSet<PeerId> {
            self.peers[i].1.participants().into_iter().collect()
        }
    }

    #[test]
    fn a_four_way_mesh_sends_media_both_ways_between_every_pair() {
        for seed in 0..50 {
            let mut m = Mesh::new(4, seed);
            let others = m.others(0);
            m.peers[0].1.start("call1".into(), &others).unwrap();
            m.run();
            for i in 1..4 {
                assert!(m.events.iter().any(|(p, e)| *p == m.peers[i].0 && matches!(e, CallEvent::Incoming { .. })));
            }
            // Everyone answers, in turn, with crossing messages.
            for i in 1..4 {
                let others = m.others(i);
                m.peers[i].1.answer(&others).unwrap();
            }
            m.run();
            for i in 0..4 {
                let want: BTreeSet<PeerId> = m.others(i).into_iter().collect();
                assert_eq!(m.sending(i), want, "seed {seed}: peer {i}");
            }
        }
    }

    #[test]
    fn a_fifth_participant_is_turned_away() {
        let mut m = Mesh::new(5, 7);
        let others = m.others(0);
        m.peers[0].1.start("c".into(), &others).unwrap();
        m.run();
        for i in 1..5 {
            let others = m.others(i);
            m.peers[i].1.answer(&others).unwrap();
            m.run();
        }
        for i in 0..5 {
            assert!(m.sending(i).len() < MAX_PARTICIPANTS, "peer {i}");
        }
        assert!(m.bus.is_empty());
        assert!(
            m.events
                .iter()
                .any(|(_, e)| matches!(e, CallEvent::Declined { reason, .. } if reason == "full"))
        );
    }

    #[test]
    fn decline_hang_up_and_dropped_links_stop_media() {
        let mut m = Mesh::new(3, 1);
        let others = m.others(0);
        m.peers[0].1.start("c".into(), &others).unwrap();
        m.run();
        m.peers[1].1.decline().unwrap();
        let others = m.others(2);
        m.peers[2].1.answer(&others).unwrap();
        m.run();
        assert_eq!(m.sending(0), [m.peers[2].0.clone()].into());
        assert!(m.events.iter().any(|(p, e)| *p == m.peers[0].0
            && matches!(e, CallEvent::Declined { reason, .. } if reason == "declined")));
        // Peer 2 hangs up: peer 0 stops sending to it.
        m.peers[2].1.hang_up().unwrap();
        m.run();
        assert!(m.sending(0).is_empty());
        assert!(
            m.events
                .iter()
                .any(|(p, e)| *p == m.peers[0].0 && matches!(e, CallEvent::StopMedia { .. }))
        );
        // A dropped link does the same.
        let mut m = Mesh::new(2, 3);
        m.peers[0].1.start("c".into(), &[id("p1")]).unwrap();
        m.run();
        m.peers[1].1.answer(&[id("p0")]).unwrap();
        m.run();
        assert_eq!(m.sending(0).len(), 1);
        m.peers[0].1.peer_gone(&id("p1"));
        assert!(m.sending(0).is_empty());
    }

    #[test]
    fn busy_peers_decline_and_bad_requests_are_refused() {
        let mut e = CallEngine::new();
        assert!(e.answer(&[]).is_err());
        assert!(e.decline().is_err());
        assert!(e.hang_up().is_err());
        assert_eq!(e.start("no spaces".into(), &[]), Err(CallError::BadId));
        e.start("mine".into(), &[]).unwrap();
        assert!(e.start("again".into(), &[]).is_err());
        e.handle(
            &id("x"),
            PeerMessage::CallInvite {
                call: "other".into(),
            },
        );
        let busy = std::iter::from_fn(|| e.poll_output()).any(|o| {
            matches!(o, CallOutput::Send(_, PeerMessage::CallDecline { ref reason, .. }) if reason == "busy")
        });
        assert!(busy);
        // A caller that hangs up before we answer ends the ringing.
        let mut r = CallEngine::new();
        r.handle(&id("a"), PeerMessage::CallInvite { call: "c".into() });
        r.handle(&id("a"), PeerMessage::CallLeave { call: "c".into() });
        assert!(r.answer(&[]).is_err());
    }
}
