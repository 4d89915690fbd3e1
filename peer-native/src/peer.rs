//! One WebRTC connection to one remote peer, on the webrtc crate.
//!
//! The engine's [`PeerCommand`]s are carried out in order by one task per
//! connection, so description changes never overlap (the engine issues one at
//! a time and waits for its completion event). Data-channel sends go through
//! a second queue drained by their own task, which awaits the channel's send
//! buffer limit: that is the pacing, and it keeps sends from waiting behind a
//! negotiation. Callbacks from the webrtc crate only forward events: its
//! driver waits on them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ferry_core::{CHANNEL_LABEL, PeerCommand, PeerEvent, SdpKind, TransportState};
use ferry_protocol::{IceServer, PeerId};
use tokio::sync::{mpsc, oneshot};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use rtc::peer_connection::transport::RTCDtlsRole;

use crate::Error;
use crate::driver::Input;
use crate::media::{CallMedia, Outbound, Recorder};
use crate::runtime::BufferedRuntime;

/// Network tuning of native peer connections.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Local UDP addresses to bind. `0.0.0.0:0` means every non-loopback
    /// interface; loopback must be named explicitly.
    pub udp_addrs: Vec<String>,
    /// Delay between ICE connectivity checks (the webrtc crate's default is
    /// 200 ms).
    pub ice_check_interval: Duration,
    /// Largest data-channel message this side accepts and advertises.
    pub max_message: u32,
    /// Outstanding bytes per data channel above which sends wait.
    pub send_buffer: usize,
    /// Connect only through TURN relays.
    pub relay_only: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            udp_addrs: vec!["0.0.0.0:0".into(), "127.0.0.1:0".into()],
            ice_check_interval: Duration::from_millis(20),
            max_message: 256 * 1024,
            send_buffer: 8 * 1024 * 1024,
            relay_only: false,
        }
    }
}

/// What the send task puts on the data channel.
enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// Answer once everything before it has been handed over.
    Flush(oneshot::Sender<()>),
}

/// What the connection's task carries out.
enum LinkCommand {
    Engine(PeerCommand),
    Flush(oneshot::Sender<()>),
    /// Add our call media (once) and start sending it.
    StartMedia,
    /// Stop sending call media.
    StopMedia,
}

/// The driver's handle on one peer connection.
pub(crate) struct PeerLink {
    commands: mpsc::UnboundedSender<LinkCommand>,
    generation: u32,
    done: oneshot::Receiver<()>,
}

impl PeerLink {
    /// Starts building a connection; commands queue until it exists.
    pub(crate) fn start(
        peer: PeerId,
        generation: u32,
        open_channel: bool,
        ice_servers: Vec<IceServer>,
        net: NetConfig,
        media: Option<CallMedia>,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let feed = Feed {
            peer,
            generation,
            inputs,
        };
        tokio::spawn(async move {
            run(feed, open_channel, ice_servers, net, media, rx).await;
            let _ = done_tx.send(());
        });
        Self {
            commands,
            generation,
            done,
        }
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    pub(crate) fn perform(&self, command: PeerCommand) {
        let _ = self.commands.send(LinkCommand::Engine(command));
    }

    /// Adds our call media to the connection, before anything asked of it
    /// later (such as the offer that carries the media).
    pub(crate) fn start_media(&self) {
        let _ = self.commands.send(LinkCommand::StartMedia);
    }

    /// Stops sending call media.
    pub(crate) fn stop_media(&self) {
        let _ = self.commands.send(LinkCommand::StopMedia);
    }

    /// Resolves once every frame queued so far has been handed to SCTP and
    /// acknowledged (or after `grace`).
    pub(crate) async fn flush(&self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(LinkCommand::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(grace, rx).await;
        }
    }

    /// Asks the connection to close once what was queued for it has been
    /// sent.
    pub(crate) fn start_close(&self) {
        self.perform(PeerCommand::Close);
    }

    /// Whether the connection's task has finished.
    pub(crate) fn is_closed(&mut self) -> bool {
        !matches!(
            self.done.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    /// Closes the connection (see [`Self::start_close`]) and resolves when
    /// it is closed, or after `grace`.
    pub(crate) async fn close(self, grace: Duration) {
        self.start_close();
        let _ = tokio::time::timeout(grace, self.done).await;
    }
}

/// Sends this connection's events to the driver, tagged with its generation.
#[derive(Clone)]
struct Feed {
    peer: PeerId,
    generation: u32,
    inputs: mpsc::UnboundedSender<Input>,
}

impl Feed {
    fn send(&self, event: PeerEvent) {
        let _ = self.inputs.send(Input::Peer {
            peer: self.peer.clone(),
            generation: self.generation,
            event,
        });
    }
}

/// The send queue of the data channel, whoever creates it.
struct ChannelSlot {
    queue: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    channel: Mutex<Option<Arc<dyn DataChannel>>>,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
    opened: std::sync::atomic::AtomicBool,
}

impl ChannelSlot {
    fn push(&self, out: Outgoing) {
        let queue = self.queue.lock().ok().and_then(|q| q.clone());
        if let Some(q) = queue {
            let _ = q.send(out);
        }
    }
}

struct Handler {
    feed: Feed,
    slot: Arc<ChannelSlot>,
    recorder: Option<Arc<Recorder>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(c) => self.feed.send(PeerEvent::IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_m_line_index: c.sdp_mline_index,
            }),
            Err(e) => tracing::debug!("unusable local candidate: {e}"),
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Checking {
            let channel = self.slot.channel.lock().ok().and_then(|c| c.clone());
            if let Some(channel) = channel
                && !self.slot.opened.load(std::sync::atomic::Ordering::Acquire)
            {
                let slot = self.slot.clone();
                tokio::spawn(async move {
                    kick(channel.as_ref(), &slot.opened, Duration::from_secs(3)).await;
                });
            }
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.feed.send(PeerEvent::EndOfCandidates);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => TransportState::Connected,
            RTCPeerConnectionState::Disconnected => TransportState::Disconnected,
            RTCPeerConnectionState::Failed => TransportState::Failed,
            RTCPeerConnectionState::Closed => TransportState::Closed,
            _ => TransportState::Connecting,
        };
        tracing::debug!(peer = %self.feed.peer, ?state, "connection state");
        self.feed.send(PeerEvent::ConnectionState(state));
    }

    async fn on_track(&self, track: Arc<dyn webrtc::media_stream::track_remote::TrackRemote>) {
        if let Some(recorder) = &self.recorder {
            recorder.start(track);
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        match channel.label().await {
            Ok(label) if label == CHANNEL_LABEL => attach(channel, &self.slot, &self.feed),
            Ok(label) => tracing::debug!("ignoring data channel {label:?}"),
            Err(e) => tracing::debug!("data channel vanished: {e}"),
        }
    }
}

/// Starts the receive and send tasks of the engine's data channel.
fn attach(channel: Arc<dyn DataChannel>, slot: &Arc<ChannelSlot>, feed: &Feed) {
    let Some(mut queue) = slot.pending.lock().ok().and_then(|mut p| p.take()) else {
        tracing::debug!("a second engine channel was ignored");
        return;
    };
    if let Ok(mut c) = slot.channel.lock() {
        *c = Some(channel.clone());
    }
    let (rx_channel, feed, rx_slot) = (channel.clone(), feed.clone(), slot.clone());
    tokio::spawn(async move {
        while let Some(event) = rx_channel.poll().await {
            match event {
                DataChannelEvent::OnOpen => {
                    rx_slot
                        .opened
                        .store(true, std::sync::atomic::Ordering::Release);
                    feed.send(PeerEvent::ChannelOpen);
                }
                DataChannelEvent::OnMessage(msg) => {
                    if msg.is_string {
                        match String::from_utf8(msg.data.to_vec()) {
                            Ok(text) => feed.send(PeerEvent::Text(text)),
                            Err(_) => tracing::debug!("dropped a text frame that is not UTF-8"),
                        }
                    } else {
                        if msg.data.len() < 256 {
                            tracing::trace!(len = msg.data.len(), "control frame in");
                        }
                        feed.send(PeerEvent::Binary(Vec::from(msg.data)));
                    }
                }
                DataChannelEvent::OnClose => {
                    tracing::debug!(peer = %feed.peer, "data channel closed");
                    break;
                }
                _ => {}
            }
        }
        feed.send(PeerEvent::ChannelClosed);
    });
    let sender = tokio::spawn(async move {
        while let Some(out) = queue.recv().await {
            let sent = match out {
                Outgoing::Text(text) => channel.send_text(&text).await,
                // No copy: the frame's buffer becomes the message.
                Outgoing::Binary(data) => {
                    channel.send(BytesMut::from(bytes::Bytes::from(data))).await
                }
                Outgoing::Flush(reply) => {
                    drain(channel.as_ref()).await;
                    let _ = reply.send(());
                    Ok(())
                }
            };
            if let Err(e) = sent {
                tracing::debug!("data channel send failed: {e}");
                break;
            }
        }
        drain(channel.as_ref()).await;
    });
    if let Ok(mut s) = slot.sender.lock() {
        *s = Some(sender);
    }
}

/// Wakes the webrtc crate's connection driver every 2 ms until `opened` is
/// set (for at most `limit`).
///
/// That driver flushes packets that its own state changes produce (the DTLS
/// ClientHello once ICE connects, the SCTP INIT once DTLS is up, the data
/// channel's DCEP OPEN once SCTP is up) only when it next wakes up, which is
/// its next timer, up to 200 ms later; left alone, each of those steps
/// waits for it. Any call that notifies the driver makes it flush at once;
/// setting the channel's high-water threshold to the value it already has
/// is such a call with no other effect.
pub async fn kick(
    channel: &dyn DataChannel,
    opened: &std::sync::atomic::AtomicBool,
    limit: Duration,
) {
    let started = std::time::Instant::now();
    while !opened.load(std::sync::atomic::Ordering::Acquire) && started.elapsed() < limit {
        if channel
            .set_buffered_amount_high_threshold(u32::MAX)
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (for at most 2 s) until SCTP holds nothing unacknowledged.
async fn drain(channel: &dyn DataChannel) {
    for _ in 0..200 {
        match channel.outstanding_bytes().await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tracing::trace!(n, "waiting for sends to drain");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn build(
    feed: &Feed,
    slot: &Arc<ChannelSlot>,
    ice_servers: Vec<IceServer>,
    net: &NetConfig,
    media: Option<&CallMedia>,
) -> Result<Arc<dyn PeerConnection>, Error> {
    let handler = Arc::new(Handler {
        feed: feed.clone(),
        slot: slot.clone(),
        recorder: media.and_then(|m| {
            let dir = m.config.record.clone()?;
            Some(Arc::new(Recorder::new(
                dir,
                feed.peer.clone(),
                m.recordings.clone(),
            )))
        }),
    });
    connect(net, ice_servers, handler, media.is_some()).await
}

/// Builds a webrtc-crate peer connection tuned as [`NetConfig`] says: the
/// given UDP addresses (with loopback candidates), the ICE check interval,
/// the SCTP message limit, the send-buffer limit and large socket buffers.
/// Public so that benchmarks measure the same tuning without the engine.
pub async fn new_connection(
    net: &NetConfig,
    ice_servers: Vec<IceServer>,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, Error> {
    connect(net, ice_servers, handler, false).await
}

/// [`new_connection`], with VP8 and Opus (and their interceptors) if
/// `media`.
async fn connect(
    net: &NetConfig,
    ice_servers: Vec<IceServer>,
    handler: Arc<dyn PeerConnectionEventHandler>,
    media: bool,
) -> Result<Arc<dyn PeerConnection>, Error> {
    let servers: Vec<RTCIceServer> = ice_servers
        .into_iter()
        .map(|s| RTCIceServer {
            urls: s.urls,
            username: s.username.unwrap_or_default(),
            credential: s.credential.unwrap_or_default(),
        })
        .collect();
    let configuration = || {
        let config = RTCConfigurationBuilder::new().with_ice_servers(servers.clone());
        if net.relay_only {
            config.with_ice_transport_policy(webrtc::peer_connection::RTCIceTransportPolicy::Relay)
        } else {
            config
        }
        .build()
    };
    // Resolving browsers' `.local` candidates needs a multicast socket, which
    // a host without a multicast route cannot open: then go without.
    let mut last = None;
    for mdns in [MulticastDnsMode::QueryOnly, MulticastDnsMode::Disabled] {
        let settings = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(net.ice_check_interval), None)
            .with_include_loopback_candidate(true)
            .with_multicast_dns_mode(mdns)
            // The offerer (which creates the data channel) then runs the DTLS
            // client and the SCTP association's first steps; see `kick`.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(net.max_message))
            .build();
        let mut builder = PeerConnectionBuilder::new();
        if media {
            let (engine, registry) = crate::media::media_engine()?;
            builder = builder
                .with_media_engine(engine)
                .with_interceptor_registry(registry);
        }
        let built = builder
            .with_configuration(configuration())
            .with_setting_engine(settings)
            .with_runtime(Arc::new(BufferedRuntime))
            .with_handler(handler.clone())
            .with_udp_addrs(net.udp_addrs.clone())
            .with_data_channel_send_buffer_limit(net.send_buffer)
            .build()
            .await;
        match built {
            Ok(pc) => return Ok(Arc::new(pc)),
            Err(e) => {
                tracing::debug!(?mdns, "peer connection not built: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.map_or_else(|| Error::Internal("no peer connection".into()), Error::from))
}

async fn run(
    feed: Feed,
    open_channel: bool,
    ice_servers: Vec<IceServer>,
    net: NetConfig,
    media: Option<CallMedia>,
    mut commands: mpsc::UnboundedReceiver<LinkCommand>,
) {
    let (queue, pending) = mpsc::unbounded_channel();
    let slot = Arc::new(ChannelSlot {
        queue: Mutex::new(Some(queue)),
        pending: Mutex::new(Some(pending)),
        channel: Mutex::new(None),
        sender: Mutex::new(None),
        opened: std::sync::atomic::AtomicBool::new(false),
    });
    let mut outbound = media.as_ref().map(|m| Outbound::new(m.config.clone()));
    let pc = match build(&feed, &slot, ice_servers, &net, media.as_ref()).await {
        Ok(pc) => pc,
        Err(e) => {
            tracing::warn!("cannot create a peer connection: {e}");
            feed.send(PeerEvent::ConnectionState(TransportState::Failed));
            return;
        }
    };
    if open_channel {
        let init = RTCDataChannelInit {
            ordered: true,
            ..Default::default()
        };
        match pc.create_data_channel(CHANNEL_LABEL, Some(init)).await {
            Ok(channel) => attach(channel, &slot, &feed),
            Err(e) => {
                tracing::warn!("cannot create the data channel: {e}");
                feed.send(PeerEvent::ConnectionState(TransportState::Failed));
            }
        }
    }
    while let Some(command) = commands.recv().await {
        let command = match command {
            LinkCommand::Engine(c) => c,
            LinkCommand::Flush(reply) => {
                slot.push(Outgoing::Flush(reply));
                continue;
            }
            LinkCommand::StartMedia => {
                if let Some(out) = &mut outbound
                    && let Err(e) = out.start(&pc).await
                {
                    tracing::warn!(peer = %feed.peer, "cannot add call media: {e}");
                }
                continue;
            }
            LinkCommand::StopMedia => {
                if let Some(out) = &mut outbound {
                    out.stop();
                }
                continue;
            }
        };
        match command {
            PeerCommand::SendText(text) => {
                slot.push(Outgoing::Text(text));
            }
            PeerCommand::SendBinary(frame) => {
                slot.push(Outgoing::Binary(frame));
            }
            PeerCommand::AddCandidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index: sdp_m_line_index,
                    ..Default::default()
                };
                // Candidates for a rolled-back description fail harmlessly.
                if let Err(e) = pc.add_ice_candidate(init).await {
                    tracing::debug!("remote candidate not added: {e}");
                }
            }
            PeerCommand::Close => break,
            command => {
                let event = negotiate(pc.as_ref(), command)
                    .await
                    .unwrap_or_else(|e| PeerEvent::OperationFailed(e.to_string()));
                feed.send(event);
            }
        }
    }
    // Let queued frames (a last acknowledgement, a cancel) leave first.
    if let Ok(mut q) = slot.queue.lock() {
        q.take();
    }
    let sender = slot.sender.lock().ok().and_then(|mut s| s.take());
    if let Some(sender) = sender {
        let _ = sender.await;
    }
    let channel = slot.channel.lock().ok().and_then(|mut c| c.take());
    if let Some(c) = channel {
        let _ = c.close().await;
    }
    let _ = pc.close().await;
}

async fn negotiate(pc: &dyn PeerConnection, command: PeerCommand) -> Result<PeerEvent, Error> {
    match command {
        PeerCommand::CreateOffer { ice_restart } => {
            if ice_restart {
                pc.restart_ice().await?;
            }
            let offer = pc.create_offer(None).await?;
            let sdp = offer.sdp.clone();
            pc.set_local_description(offer).await?;
            Ok(PeerEvent::LocalDescription {
                kind: SdpKind::Offer,
                sdp,
            })
        }
        PeerCommand::AcceptOffer { sdp } => {
            // Perfect negotiation: a polite peer's own offer yields.
            if pc.pending_local_description().await.is_some() {
                pc.set_local_description(RTCSessionDescription::rollback(None)?)
                    .await?;
            }
            pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                .await?;
            let answer = pc.create_answer(None).await?;
            let sdp = answer.sdp.clone();
            pc.set_local_description(answer).await?;
            Ok(PeerEvent::LocalDescription {
                kind: SdpKind::Answer,
                sdp,
            })
        }
        PeerCommand::ApplyAnswer { sdp } => {
            pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                .await?;
            Ok(PeerEvent::RemoteDescriptionSet)
        }
        other => Err(Error::Internal(format!(
            "not a negotiation command: {other:?}"
        ))),
    }
}
