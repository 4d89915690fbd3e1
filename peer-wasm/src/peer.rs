//! One `RTCPeerConnection` and its data channel, carrying out
//! [`PeerCommand`]s and reporting [`PeerEvent`]s.

use std::cell::RefCell;
use std::rc::Rc;

use ferry_core::{CHANNEL_LABEL, CandidateType, PeerCommand, PeerEvent, SdpKind, TransportState};
use ferry_protocol::PeerId;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit,
    RtcDataChannelState, RtcIceCandidateInit, RtcOfferOptions, RtcPeerConnection,
    RtcPeerConnectionIceEvent, RtcPeerConnectionState, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::Error;
use crate::driver::{WeakShared, feed_peer, log_error, with_session};

/// Handlers of the data channel, kept alive as long as the connection.
struct Channel {
    dc: RtcDataChannel,
    queue: Rc<RefCell<std::collections::VecDeque<Vec<u8>>>>,
    _on_low: Closure<dyn FnMut()>,
    _on_open: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.dc.set_onopen(None);
        self.dc.set_onclose(None);
        self.dc.set_onmessage(None);
        self.dc.set_onbufferedamountlow(None);
        self.dc.close();
    }
}

/// The browser side of the link to one remote peer.
pub(crate) struct PeerConn {
    pc: RtcPeerConnection,
    generation: u32,
    peer: PeerId,
    weak: WeakShared,
    channel: Rc<RefCell<Option<Channel>>>,
    _on_ice: Closure<dyn FnMut(RtcPeerConnectionIceEvent)>,
    _on_state: Closure<dyn FnMut()>,
    _on_channel: Closure<dyn FnMut(RtcDataChannelEvent)>,
    _on_negotiation: Closure<dyn FnMut()>,
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        self.pc.set_onnegotiationneeded(None);
        self.pc.set_onicecandidate(None);
        self.pc.set_onconnectionstatechange(None);
        self.pc.set_ondatachannel(None);
        self.channel.borrow_mut().take();
        self.pc.close();
    }
}

fn attach_channel(
    dc: RtcDataChannel,
    weak: &WeakShared,
    peer: &PeerId,
    generation: u32,
    pc: &RtcPeerConnection,
) -> Channel {
    dc.set_binary_type(web_sys::RtcDataChannelType::Arraybuffer);
    let (w, p) = (weak.clone(), peer.clone());
    let pc_for_route = pc.clone();
    let on_open = Closure::<dyn FnMut()>::new(move || {
        feed_peer(&w, &p, generation, PeerEvent::ChannelOpen);
        report_route(w.clone(), p.clone(), generation, pc_for_route.clone());
    });
    let (w, p) = (weak.clone(), peer.clone());
    let on_close = Closure::<dyn FnMut()>::new(move || {
        feed_peer(&w, &p, generation, PeerEvent::ChannelClosed);
    });
    let (w, p) = (weak.clone(), peer.clone());
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let data = e.data();
        if let Some(text) = data.as_string() {
            feed_peer(&w, &p, generation, PeerEvent::Text(text));
        } else if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
            let bytes = js_sys::Uint8Array::new(buf).to_vec();
            feed_peer(&w, &p, generation, PeerEvent::Binary(bytes));
        }
    });
    // Binary frames wait here while the channel's send buffer is above the
    // high-water mark, and go out again on `bufferedamountlow`.
    let queue: Rc<RefCell<std::collections::VecDeque<Vec<u8>>>> = Rc::default();
    let (q, dc2) = (queue.clone(), dc.clone());
    let on_low = Closure::<dyn FnMut()>::new(move || flush_queue(&dc2, &q));
    dc.set_buffered_amount_low_threshold(LOW_WATER);
    dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
    dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    if dc.ready_state() == RtcDataChannelState::Open {
        let (w, p, pc) = (weak.clone(), peer.clone(), pc.clone());
        wasm_bindgen_futures::spawn_local(async move {
            feed_peer(&w, &p, generation, PeerEvent::ChannelOpen);
            report_route(w, p, generation, pc);
        });
    }
    Channel {
        dc,
        queue,
        _on_open: on_open,
        _on_close: on_close,
        _on_message: on_message,
        _on_low: on_low,
    }
}

/// Send-buffer level above which binary frames are queued. Chromium breaks
/// the channel above 16 MiB.
const HIGH_WATER: u32 = 8 * 1024 * 1024;
/// Level at which queued frames go out again.
const LOW_WATER: u32 = 1024 * 1024;

fn flush_queue(dc: &RtcDataChannel, queue: &Rc<RefCell<std::collections::VecDeque<Vec<u8>>>>) {
    if dc.ready_state() != RtcDataChannelState::Open {
        return;
    }
    let mut q = queue.borrow_mut();
    while dc.buffered_amount() < HIGH_WATER {
        let Some(frame) = q.pop_front() else { break };
        if let Err(e) = dc.send_with_u8_array(&frame) {
            log_error(&format!("data channel send failed: {}", Error::from(e)));
            break;
        }
    }
}

impl PeerConn {
    pub(crate) fn new(
        weak: WeakShared,
        peer: PeerId,
        generation: u32,
        config: &RtcConfiguration,
        open_channel: bool,
    ) -> Result<Self, Error> {
        let pc = RtcPeerConnection::new_with_configuration(config)?;
        let channel: Rc<RefCell<Option<Channel>>> = Rc::new(RefCell::new(None));

        let (w, p) = (weak.clone(), peer.clone());
        let on_ice = Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new(
            move |e: RtcPeerConnectionIceEvent| {
                let event = match e.candidate() {
                    Some(c) if !c.candidate().is_empty() => PeerEvent::IceCandidate {
                        candidate: c.candidate(),
                        sdp_mid: c.sdp_mid(),
                        sdp_m_line_index: c.sdp_m_line_index(),
                    },
                    _ => PeerEvent::EndOfCandidates,
                };
                feed_peer(&w, &p, generation, event);
            },
        );
        let (w, p, pc2) = (weak.clone(), peer.clone(), pc.clone());
        let on_state = Closure::<dyn FnMut()>::new(move || {
            let state = match pc2.connection_state() {
                RtcPeerConnectionState::Connected => TransportState::Connected,
                RtcPeerConnectionState::Disconnected => TransportState::Disconnected,
                RtcPeerConnectionState::Failed => TransportState::Failed,
                RtcPeerConnectionState::Closed => TransportState::Closed,
                _ => TransportState::Connecting,
            };
            feed_peer(&w, &p, generation, PeerEvent::ConnectionState(state));
            if state == TransportState::Connected {
                report_route(w.clone(), p.clone(), generation, pc2.clone());
            }
        });
        let (w, p, pc3, slot) = (weak.clone(), peer.clone(), pc.clone(), channel.clone());
        let on_channel =
            Closure::<dyn FnMut(RtcDataChannelEvent)>::new(move |e: RtcDataChannelEvent| {
                let dc = e.channel();
                if dc.label() != CHANNEL_LABEL {
                    return;
                }
                let ch = attach_channel(dc, &w, &p, generation, &pc3);
                *slot.borrow_mut() = Some(ch);
            });
        pc.set_onicecandidate(Some(on_ice.as_ref().unchecked_ref()));
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        pc.set_ondatachannel(Some(on_channel.as_ref().unchecked_ref()));
        // Tracks added or removed by the page (calls) need a new offer. The
        // browser fires this only in a stable state and again after a
        // rolled-back or superseded offer, which is exactly when the engine
        // can start one; while it is already offering, the request is a no-op.
        let (w, p) = (weak.clone(), peer.clone());
        let on_negotiation = Closure::<dyn FnMut()>::new(move || {
            let p = p.clone();
            with_session(&w, move |d, _| {
                if d.peers.get(&p).map(PeerConn::generation) == Some(generation) {
                    d.session.renegotiate(&p);
                }
            });
        });
        pc.set_onnegotiationneeded(Some(on_negotiation.as_ref().unchecked_ref()));

        if open_channel {
            let init = RtcDataChannelInit::new();
            init.set_ordered(true);
            let dc = pc.create_data_channel_with_data_channel_dict(CHANNEL_LABEL, &init);
            *channel.borrow_mut() = Some(attach_channel(dc, &weak, &peer, generation, &pc));
        }
        Ok(Self {
            pc,
            generation,
            peer,
            weak,
            channel,
            _on_ice: on_ice,
            _on_state: on_state,
            _on_channel: on_channel,
            _on_negotiation: on_negotiation,
        })
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// The connection itself, for the page's media tracks and statistics.
    pub(crate) fn connection(&self) -> &RtcPeerConnection {
        &self.pc
    }

    /// Carries out a command that needs no new connection.
    pub(crate) fn perform(&self, command: PeerCommand) {
        match command {
            PeerCommand::SendText(text) => {
                if let Some(ch) = self.channel.borrow().as_ref()
                    && ch.dc.ready_state() == RtcDataChannelState::Open
                    && let Err(e) = ch.dc.send_with_str(&text)
                {
                    log_error(&format!("data channel send failed: {}", Error::from(e)));
                }
            }
            PeerCommand::SendBinary(frame) => {
                if let Some(ch) = self.channel.borrow().as_ref() {
                    ch.queue.borrow_mut().push_back(frame);
                    flush_queue(&ch.dc, &ch.queue);
                }
            }
            PeerCommand::AddCandidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let init = RtcIceCandidateInit::new(&candidate);
                init.set_sdp_mid(sdp_mid.as_deref());
                init.set_sdp_m_line_index(sdp_m_line_index);
                let promise = self
                    .pc
                    .add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
                wasm_bindgen_futures::spawn_local(async move {
                    // Candidates for a rolled-back or replaced description
                    // fail harmlessly; see perfect negotiation.
                    if let Err(e) = JsFuture::from(promise).await {
                        web_sys::console::debug_1(&e);
                    }
                });
            }
            command @ (PeerCommand::CreateOffer { .. }
            | PeerCommand::AcceptOffer { .. }
            | PeerCommand::ApplyAnswer { .. }) => {
                let (pc, weak, peer, generation) = (
                    self.pc.clone(),
                    self.weak.clone(),
                    self.peer.clone(),
                    self.generation,
                );
                wasm_bindgen_futures::spawn_local(async move {
                    let event = negotiate(&pc, command)
                        .await
                        .unwrap_or_else(|e| PeerEvent::OperationFailed(e.to_string()));
                    feed_peer(&weak, &peer, generation, event);
                });
            }
            _ => {}
        }
    }
}

fn description(kind: RtcSdpType, sdp: &str) -> RtcSessionDescriptionInit {
    let init = RtcSessionDescriptionInit::new(kind);
    init.set_sdp(sdp);
    init
}

fn sdp_of(value: &JsValue) -> Result<String, Error> {
    js_sys::Reflect::get(value, &JsValue::from_str("sdp"))?
        .as_string()
        .ok_or_else(|| Error::Js("description without sdp".into()))
}

async fn negotiate(pc: &RtcPeerConnection, command: PeerCommand) -> Result<PeerEvent, Error> {
    match command {
        PeerCommand::CreateOffer { ice_restart } => {
            let options = RtcOfferOptions::new();
            options.set_ice_restart(ice_restart);
            let offer = JsFuture::from(pc.create_offer_with_rtc_offer_options(&options)).await?;
            let sdp = sdp_of(&offer)?;
            JsFuture::from(pc.set_local_description(&description(RtcSdpType::Offer, &sdp))).await?;
            Ok(PeerEvent::LocalDescription {
                kind: SdpKind::Offer,
                sdp,
            })
        }
        PeerCommand::AcceptOffer { sdp } => {
            // Applying a remote offer in have-local-offer rolls ours back.
            JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Offer, &sdp)))
                .await?;
            let answer = JsFuture::from(pc.create_answer()).await?;
            let sdp = sdp_of(&answer)?;
            JsFuture::from(pc.set_local_description(&description(RtcSdpType::Answer, &sdp)))
                .await?;
            Ok(PeerEvent::LocalDescription {
                kind: SdpKind::Answer,
                sdp,
            })
        }
        PeerCommand::ApplyAnswer { sdp } => {
            JsFuture::from(pc.set_remote_description(&description(RtcSdpType::Answer, &sdp)))
                .await?;
            Ok(PeerEvent::RemoteDescriptionSet)
        }
        _ => Err(Error::Js("not a negotiation command".into())),
    }
}

/// Looks up the selected candidate pair and reports its candidate types.
fn report_route(weak: WeakShared, peer: PeerId, generation: u32, pc: RtcPeerConnection) {
    wasm_bindgen_futures::spawn_local(async move {
        match selected_route(&pc).await {
            Ok(Some((local, remote))) => {
                feed_peer(&weak, &peer, generation, PeerEvent::Route { local, remote });
            }
            Ok(None) => {}
            Err(e) => log_error(&format!("getStats failed: {e}")),
        }
    });
}

async fn selected_route(
    pc: &RtcPeerConnection,
) -> Result<Option<(CandidateType, CandidateType)>, Error> {
    let report = JsFuture::from(pc.get_stats()).await?;
    let get = |v: &JsValue, k: &str| js_sys::Reflect::get(v, &JsValue::from_str(k)).ok();
    let get_str = |v: &JsValue, k: &str| get(v, k).and_then(|x| x.as_string());
    let mut stats = Vec::new();
    let values = js_sys::Reflect::get(&report, &JsValue::from_str("values"))?
        .dyn_into::<js_sys::Function>()?
        .call0(&report)?;
    if let Some(iter) = js_sys::try_iter(&values)? {
        for item in iter {
            stats.push(item?);
        }
    }
    let by_id = |id: &str| {
        stats
            .iter()
            .find(|s| get_str(s, "id").as_deref() == Some(id))
    };
    let pair_id = stats
        .iter()
        .find(|s| get_str(s, "type").as_deref() == Some("transport"))
        .and_then(|t| get_str(t, "selectedCandidatePairId"))
        .or_else(|| {
            stats
                .iter()
                .find(|s| {
                    get_str(s, "type").as_deref() == Some("candidate-pair")
                        && get(s, "nominated").and_then(|n| n.as_bool()) == Some(true)
                        && get_str(s, "state").as_deref() == Some("succeeded")
                })
                .and_then(|s| get_str(s, "id"))
        });
    let Some(pair) = pair_id.as_deref().and_then(by_id) else {
        return Ok(None);
    };
    let kind = |key: &str| {
        get_str(pair, key)
            .as_deref()
            .and_then(by_id)
            .and_then(|c| get_str(c, "candidateType"))
            .map_or(CandidateType::Unknown, |t| CandidateType::parse(&t))
    };
    Ok(Some((kind("localCandidateId"), kind("remoteCandidateId"))))
}
