//! Negotiation with one remote peer: perfect negotiation over serialized
//! operations, with ICE candidates buffered until a remote description exists.

use std::collections::VecDeque;

use ferry_protocol::Signal;
use serde::Serialize;

use crate::Millis;

/// What the driver must do to one `RTCPeerConnection`. Each description
/// command is answered by exactly one [`crate::PeerEvent`] on completion
/// (`LocalDescription`, `RemoteDescriptionSet` or `OperationFailed`); the
/// engine never issues a second one before the first completes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerCommand {
    /// Create the peer connection. If `open_channel`, also create the data
    /// channel (label [`crate::CHANNEL_LABEL`], reliable and ordered); the
    /// other side receives it through `ondatachannel`.
    Create {
        /// Whether this side yields in an offer collision.
        polite: bool,
        /// Whether this side creates the data channel.
        open_channel: bool,
    },
    /// `createOffer` (with `iceRestart` if asked) then `setLocalDescription`;
    /// report `LocalDescription`.
    CreateOffer {
        /// Restart ICE with fresh credentials.
        ice_restart: bool,
    },
    /// `setRemoteDescription(offer)` (rolling back a local offer if there is
    /// one), `createAnswer`, `setLocalDescription`; report `LocalDescription`.
    AcceptOffer {
        /// The remote offer.
        sdp: String,
    },
    /// `setRemoteDescription(answer)`; report `RemoteDescriptionSet`.
    ApplyAnswer {
        /// The remote answer.
        sdp: String,
    },
    /// `addIceCandidate`. Only issued after a remote description is set.
    AddCandidate {
        /// The candidate line.
        candidate: String,
        /// Its media stream id.
        sdp_mid: Option<String>,
        /// Its m-line index.
        sdp_m_line_index: Option<u16>,
    },
    /// Send a text frame on the data channel.
    SendText(String),
    /// Send a binary frame (file transfer) on the data channel, pacing on
    /// `bufferedAmount`.
    SendBinary(Vec<u8>),
    /// Close the connection and forget it.
    Close,
}

/// Which kind of local description the driver produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    /// An offer, from `CreateOffer`.
    Offer,
    /// An answer, from `AcceptOffer`.
    Answer,
}

/// The state of the link to one peer, as shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkState {
    /// Negotiating: descriptions and candidates are being exchanged.
    Connecting,
    /// The data channel is open.
    Connected,
    /// The connection was interrupted and may recover.
    Disconnected,
    /// The connection could not be established or restored.
    Failed,
    /// The connection is closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalingState {
    Stable,
    HaveLocalOffer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    MakeOffer { ice_restart: bool },
    AcceptOffer(String),
    ApplyAnswer(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    candidate: String,
    sdp_mid: Option<String>,
    sdp_m_line_index: Option<u16>,
}

/// Negotiation and connection state for one remote peer.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) polite: bool,
    pub(crate) state: LinkState,
    /// When the current connection attempt started.
    pub(crate) attempt_started: Millis,
    /// ICE restarts made since the link was last connected.
    pub(crate) restarts: u32,
    /// When the link became disconnected, if it is.
    pub(crate) disconnected_at: Option<Millis>,
    pub(crate) channel_open: bool,
    busy: Option<Op>,
    queue: VecDeque<Op>,
    signaling: SignalingState,
    discard_local_offer: bool,
    /// A renegotiation was asked for that no offer made so far covers: it
    /// came while an offer was in flight, or our offer lost a collision.
    /// Another offer follows once the link is stable again.
    reoffer: bool,
    /// When our offer now waiting for its answer went out.
    pub(crate) offer_sent_at: Option<Millis>,
    ignore_offer: bool,
    remote_set: bool,
    pending_candidates: Vec<Candidate>,
}

/// What a link asks the session to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkOutput {
    Command(PeerCommand),
    Signal(Signal),
}

impl Link {
    pub(crate) fn new(polite: bool, now: Millis) -> Self {
        Self {
            polite,
            state: LinkState::Connecting,
            attempt_started: now,
            restarts: 0,
            disconnected_at: None,
            channel_open: false,
            busy: None,
            queue: VecDeque::new(),
            signaling: SignalingState::Stable,
            discard_local_offer: false,
            reoffer: false,
            offer_sent_at: None,
            ignore_offer: false,
            remote_set: false,
            pending_candidates: Vec::new(),
        }
    }

    fn offering(&self) -> bool {
        matches!(self.busy, Some(Op::MakeOffer { .. }))
            || self
                .queue
                .iter()
                .any(|op| matches!(op, Op::MakeOffer { .. }))
    }

    /// Whether our offer went out and no answer to it has arrived.
    pub(crate) fn awaiting_answer(&self) -> bool {
        self.signaling == SignalingState::HaveLocalOffer && !self.answer_pending()
    }

    /// Our offer got no answer in time (the relay refused it, or the other
    /// side failed to apply it): offer again, replacing it. Without this a
    /// connected link would wait forever, and every renegotiation with it.
    pub(crate) fn offer_unanswered(&mut self, out: &mut Vec<LinkOutput>) {
        self.offer_sent_at = None;
        if self.awaiting_answer() && !self.offering() {
            self.queue.push_back(Op::MakeOffer { ice_restart: false });
            self.pump(out);
        }
    }

    fn answer_pending(&self) -> bool {
        let is_answer = |op: &Op| matches!(op, Op::ApplyAnswer(_));
        self.busy.as_ref().is_some_and(is_answer) || self.queue.iter().any(is_answer)
    }

    fn remote_pending(&self) -> bool {
        let changes_remote = |op: &Op| matches!(op, Op::AcceptOffer(_) | Op::ApplyAnswer(_));
        self.busy.as_ref().is_some_and(changes_remote) || self.queue.iter().any(changes_remote)
    }

    /// Queues an offer: the initial one, an ICE restart, or a renegotiation
    /// after the driver changed its media.
    ///
    /// A renegotiation must reach the other side in an offer created after
    /// it was asked for. So one asked for while our offer is being created,
    /// or is waiting for its answer, is remembered and made once the link is
    /// stable again; creating a second offer on top of the first would
    /// leave the first one's answer without an offer to match. An ICE
    /// restart goes out at once: it is how a lost answer is recovered.
    pub(crate) fn request_offer(&mut self, ice_restart: bool, out: &mut Vec<LinkOutput>) {
        if matches!(self.busy, Some(Op::MakeOffer { .. })) {
            self.reoffer |= !ice_restart;
            return;
        }
        if self.offering() {
            // One is queued and not started yet: it will carry the change.
            return;
        }
        if !ice_restart
            && self.signaling == SignalingState::HaveLocalOffer
            && !self.answer_pending()
        {
            self.reoffer = true;
            return;
        }
        self.queue.push_back(Op::MakeOffer { ice_restart });
        self.pump(out);
    }

    /// Applies a signal relayed from the remote peer.
    pub(crate) fn handle_signal(&mut self, signal: Signal, out: &mut Vec<LinkOutput>) {
        match signal {
            Signal::Offer { sdp } => {
                // As in the perfect negotiation pattern, an offer that
                // arrives while our answer is being applied is no collision:
                // the link is stable by the time it is handled.
                let collision = self.offering()
                    || (self.signaling == SignalingState::HaveLocalOffer && !self.answer_pending());
                self.ignore_offer = !self.polite && collision;
                if self.ignore_offer {
                    return;
                }
                // Polite, or no collision: our own pending offer (if any) is
                // superseded by theirs, and what it carried is offered again
                // afterwards.
                let queued = self.queue.len();
                self.queue.retain(|op| !matches!(op, Op::MakeOffer { .. }));
                if self.queue.len() != queued || collision {
                    self.reoffer = true;
                }
                if matches!(self.busy, Some(Op::MakeOffer { .. })) {
                    self.discard_local_offer = true;
                }
                self.queue.push_back(Op::AcceptOffer(sdp));
                self.pump(out);
            }
            Signal::Answer { sdp } => {
                self.ignore_offer = false;
                let expecting = self.signaling == SignalingState::HaveLocalOffer
                    || (matches!(self.busy, Some(Op::MakeOffer { .. }))
                        && !self.discard_local_offer);
                if expecting {
                    self.queue.push_back(Op::ApplyAnswer(sdp));
                    self.pump(out);
                }
            }
            Signal::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                // Candidates that arrive while a colliding offer is ignored
                // are still kept, as in the perfect negotiation pattern: they
                // often share ICE credentials with the answer that follows.
                // The driver ignores `addIceCandidate` failures.
                self.pending_candidates.push(Candidate {
                    candidate,
                    sdp_mid,
                    sdp_m_line_index,
                });
                self.flush_candidates(out);
            }
            // End of candidates needs no action: ICE completes on its own.
            _ => {}
        }
    }

    /// The driver produced a local description.
    pub(crate) fn local_description(
        &mut self,
        kind: SdpKind,
        sdp: String,
        out: &mut Vec<LinkOutput>,
    ) {
        match (self.busy.take(), kind) {
            (Some(Op::MakeOffer { .. }), SdpKind::Offer) => {
                if std::mem::take(&mut self.discard_local_offer) {
                    // Superseded by the remote offer queued behind us; the
                    // driver's setRemoteDescription rolls it back.
                } else {
                    self.signaling = SignalingState::HaveLocalOffer;
                    out.push(LinkOutput::Signal(Signal::Offer { sdp }));
                }
            }
            (Some(Op::AcceptOffer(_)), SdpKind::Answer) => {
                self.signaling = SignalingState::Stable;
                self.remote_set = true;
                out.push(LinkOutput::Signal(Signal::Answer { sdp }));
            }
            (other, _) => self.busy = other,
        }
        self.pump(out);
    }

    /// The driver applied a remote answer.
    pub(crate) fn remote_description_set(&mut self, out: &mut Vec<LinkOutput>) {
        if matches!(self.busy, Some(Op::ApplyAnswer(_))) {
            self.busy = None;
            self.signaling = SignalingState::Stable;
            self.remote_set = true;
        }
        self.pump(out);
    }

    /// The driver's current operation failed. Returns whether the link can go on.
    pub(crate) fn operation_failed(&mut self, out: &mut Vec<LinkOutput>) {
        match self.busy.take() {
            // A failed offer or answer leaves the connection where it was;
            // the connect timeout will try again with an ICE restart.
            Some(Op::MakeOffer { .. }) => self.discard_local_offer = false,
            // A rejected answer leaves the browser with its offer, but
            // waiting for another answer could wait forever (and, impolite,
            // ignore every offer meanwhile); the next offer either side
            // makes replaces or rolls back the stale one.
            Some(Op::AcceptOffer(_)) | Some(Op::ApplyAnswer(_)) => {
                self.signaling = SignalingState::Stable;
            }
            None => {}
        }
        self.pump(out);
    }

    fn flush_candidates(&mut self, out: &mut Vec<LinkOutput>) {
        if !self.remote_set || self.remote_pending() {
            return;
        }
        for c in self.pending_candidates.drain(..) {
            out.push(LinkOutput::Command(PeerCommand::AddCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_m_line_index: c.sdp_m_line_index,
            }));
        }
    }

    fn pump(&mut self, out: &mut Vec<LinkOutput>) {
        self.flush_candidates(out);
        if self.busy.is_some() {
            return;
        }
        if self.queue.is_empty() && self.reoffer && self.signaling == SignalingState::Stable {
            self.reoffer = false;
            self.queue.push_back(Op::MakeOffer { ice_restart: false });
        }
        let Some(op) = self.queue.pop_front() else {
            return;
        };
        let command = match &op {
            Op::MakeOffer { ice_restart } => PeerCommand::CreateOffer {
                ice_restart: *ice_restart,
            },
            Op::AcceptOffer(sdp) => PeerCommand::AcceptOffer { sdp: sdp.clone() },
            Op::ApplyAnswer(sdp) => PeerCommand::ApplyAnswer { sdp: sdp.clone() },
        };
        self.busy = Some(op);
        out.push(LinkOutput::Command(command));
    }
}
