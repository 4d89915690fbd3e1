//! One WebSocket connection: read frames, apply them to the registry, write
//! what the registry queues for us, and keep the heartbeat.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ferry_protocol::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, PeerId, ProtocolError, RoomCode, ServerMessage,
};
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior};

use crate::limits::Bucket;
use crate::rooms::Outbound;
use crate::{AppState, Error};

/// Frames queued for one connection before it counts as not keeping up.
const OUTBOUND_QUEUE: usize = 64;

/// Missed heartbeat intervals after which a connection is dropped.
const HEARTBEAT_MISSES: u32 = 3;

struct Membership {
    room: RoomCode,
    id: PeerId,
    conn: u64,
}

/// What to do with the connection after handling a frame.
enum Flow {
    Continue,
    Close,
    /// The peer said `leave`: give up the seat at once.
    Leave,
    /// A newer connection took the seat: close without touching it.
    Replaced,
}

pub(crate) async fn run(mut socket: WebSocket, state: Arc<AppState>) {
    state.metrics.connections.inc();
    let (tx, mut rx) = crate::outbox::channel::<Outbound>(OUTBOUND_QUEUE);
    let mut membership: Option<Membership> = None;
    let heartbeat = state.config.heartbeat;
    let limits = &state.config.limits;
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let dead_after = heartbeat * HEARTBEAT_MISSES;
    let join_deadline = tokio::time::sleep(limits.join_timeout);
    tokio::pin!(join_deadline);
    let mut bucket = Bucket::new(limits.messages_per_sec, limits.message_burst);
    let mut limited = false;
    let mut shutdown = state.shutdown.clone();

    loop {
        let flow = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(msg)) => {
                    last_seen = Instant::now();
                    let counted = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if counted && !bucket.take(last_seen) {
                        // Dropped; say so once per burst, not once per frame.
                        state.metrics.reject(ErrorCode::RateLimited.as_str());
                        if limited {
                            Flow::Continue
                        } else {
                            limited = true;
                            send_all(&mut socket, &state, vec![ServerMessage::error(
                                ErrorCode::RateLimited,
                                format!("more than {} messages per second; this one was dropped", limits.messages_per_sec),
                            )]).await
                        }
                    } else {
                        limited = false;
                        match handle_message(msg, last_seen, &state, &tx, &mut membership).await {
                            Some(replies) => send_all(&mut socket, &state, replies).await,
                            None => Flow::Leave,
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    Flow::Close
                }
                None => Flow::Close,
            },
            out = rx.recv() => match out {
                Outbound::Text(text) => send_queued(&mut socket, &state, text, None, &mut rx).await,
                Outbound::Relayed { text, read_at } => {
                    send_queued(&mut socket, &state, text, Some(read_at), &mut rx).await
                }
                Outbound::Replaced => Flow::Replaced,
            },
            () = &mut join_deadline, if membership.is_none() => {
                tracing::info!("no join in time; dropping connection");
                send_all(&mut socket, &state, vec![ServerMessage::error(
                    ErrorCode::Idle,
                    format!("send join within {} s of connecting", limits.join_timeout.as_secs()),
                )]).await;
                Flow::Close
            }
            Ok(()) = shutdown.changed() => {
                send_all(&mut socket, &state, vec![ServerMessage::error(
                    ErrorCode::GoingAway,
                    "this server is shutting down; reconnect",
                )]).await;
                Flow::Close
            }
            _ = ticker.tick() => {
                let silent = last_seen.elapsed();
                if silent >= dead_after {
                    tracing::info!(peer = ?membership.as_ref().map(|m| m.id.to_string()), "heartbeat lapsed; dropping connection");
                    Flow::Close
                } else if silent < heartbeat {
                    // Heard from within the last interval: it is alive, and
                    // a ping would only cost both sides a wakeup.
                    Flow::Continue
                } else if !send_timed(&mut socket, &state, Message::Ping(Default::default())).await {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        };
        match flow {
            Flow::Continue => continue,
            Flow::Replaced => {
                membership = None;
                tracing::info!("a newer connection took this seat");
            }
            Flow::Leave => {
                if let Some(m) = membership.take() {
                    leave(&state, &m).await;
                    tracing::info!(room = %m.room, peer = %m.id, "peer left");
                }
            }
            Flow::Close => {}
        }
        break;
    }
    // Frames relayed from now on fail (the sender hears `peer_busy`) instead
    // of being taken and thrown away.
    drop(rx);
    if let Some(m) = membership.take() {
        let grace = state.config.reconnect_grace;
        if grace.is_zero() || (state.shutting_down() && state.cluster.is_none()) {
            leave(&state, &m).await;
            tracing::info!(room = %m.room, peer = %m.id, "peer left");
        } else if state.rooms.detach(&m.room, &m.id, m.conn) {
            // Keep the seat: a reload or a network change comes back with
            // its resume token and the others never see it leave.
            tracing::info!(room = %m.room, peer = %m.id, grace_ms = grace.as_millis() as u64, "connection lost; seat kept");
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if state.rooms.is_away(&m.room, &m.id, m.conn) {
                    leave(&state, &m).await;
                }
            });
        }
    }
    state.metrics.connections.dec();
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        socket.send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static("bye"),
        }))),
    )
    .await;
    // Give the close frame a moment to flush without holding the task forever.
    let _ = tokio::time::timeout(Duration::from_millis(200), socket.recv()).await;
}

/// Gives up a seat for good, here and in the cluster.
async fn leave(state: &AppState, m: &Membership) {
    state.rooms.leave(&m.room, &m.id, m.conn);
    if let Some(cluster) = &state.cluster {
        Box::pin(cluster.leave(&m.room, &m.id, m.conn)).await;
    }
}

/// Sends one frame; false if the socket failed or the client did not take
/// it within the write timeout (too slow to serve).
async fn send_timed(socket: &mut WebSocket, state: &AppState, msg: Message) -> bool {
    match tokio::time::timeout(state.config.limits.write_timeout, socket.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            state.metrics.reject("slow_client");
            tracing::info!("client too slow to take its frames; dropping connection");
            false
        }
    }
}

/// Frames written per flush at most, when several are queued.
const BATCH: usize = 32;

/// Writes `first` and whatever else is queued behind it (up to [`BATCH`]
/// frames) with one flush: under load one system call carries many frames.
/// Closes like [`send_timed`] on a failed or too slow write.
async fn send_queued(
    socket: &mut WebSocket,
    state: &AppState,
    first: Utf8Bytes,
    first_read_at: Option<Instant>,
    rx: &mut crate::outbox::Receiver<Outbound>,
) -> Flow {
    let mut flow = Flow::Continue;
    // When the relayed frames of this batch were read off their senders'
    // sockets; a `Vec` (allocated only for a batch with relays) keeps the
    // connection task small.
    let mut read_at: Vec<Instant> = first_read_at.into_iter().collect();
    let write = async {
        socket.feed(Message::Text(first)).await?;
        for _ in 1..BATCH {
            match rx.try_recv() {
                Some(Outbound::Text(text)) => socket.feed(Message::Text(text)).await?,
                Some(Outbound::Relayed { text, read_at: at }) => {
                    read_at.push(at);
                    socket.feed(Message::Text(text)).await?;
                }
                Some(Outbound::Replaced) => {
                    flow = Flow::Replaced;
                    break;
                }
                None => break,
            }
        }
        socket.flush().await
    };
    match tokio::time::timeout(state.config.limits.write_timeout, write).await {
        Ok(Ok(())) => {
            for at in read_at {
                state
                    .metrics
                    .relay_latency
                    .observe(at.elapsed().as_secs_f64());
            }
            flow
        }
        Ok(Err(_)) => Flow::Close,
        Err(_) => {
            state.metrics.reject("slow_client");
            tracing::info!("client too slow to take its frames; dropping connection");
            Flow::Close
        }
    }
}

async fn send_all(socket: &mut WebSocket, state: &AppState, frames: Vec<ServerMessage>) -> Flow {
    let mut flow = Flow::Continue;
    for frame in frames {
        if let ServerMessage::Error { code, .. } = &frame {
            if *code != ErrorCode::RateLimited {
                state.metrics.reject(code.as_str());
            }
            if code.is_fatal() {
                flow = Flow::Close;
            }
        }
        if !send_timed(socket, state, Message::Text(frame.encode().into())).await {
            return Flow::Close;
        }
    }
    flow
}

fn error_frame(err: &Error) -> ServerMessage {
    let code = match err {
        Error::Protocol(p) => p.code(),
        Error::RoomFull(_) => ErrorCode::RoomFull,
        Error::UnknownPeer(_) => ErrorCode::UnknownPeer,
        Error::RecipientBusy(_) => ErrorCode::PeerBusy,
        Error::TooManyRooms(_) => ErrorCode::TooManyRooms,
        Error::WrongPassword => ErrorCode::WrongPassword,
        Error::Io(_) | Error::Config(_) => ErrorCode::ServerError,
    };
    ServerMessage::error(code, err.to_string())
}

/// Applies one frame and returns the frames to send back on this connection,
/// or `None` when the peer asked to leave.
async fn handle_message(
    msg: Message,
    read_at: Instant,
    state: &AppState,
    tx: &crate::outbox::Sender<Outbound>,
    membership: &mut Option<Membership>,
) -> Option<Vec<ServerMessage>> {
    let mut leave = false;
    let frames = handle_frame(msg, read_at, state, tx, membership, &mut leave).await;
    (!leave).then_some(frames)
}

async fn handle_frame(
    msg: Message,
    read_at: Instant,
    state: &AppState,
    tx: &crate::outbox::Sender<Outbound>,
    membership: &mut Option<Membership>,
    leave: &mut bool,
) -> Vec<ServerMessage> {
    let text = match msg {
        Message::Text(text) => text,
        Message::Binary(_) => {
            return vec![ServerMessage::error(
                ErrorCode::Malformed,
                "binary frames are not part of the protocol; send JSON text",
            )];
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Vec::new(),
    };
    if text.len() > state.config.max_frame_bytes {
        let err = Error::Protocol(ProtocolError::FrameTooLarge {
            size: text.len(),
            limit: state.config.max_frame_bytes,
        });
        return vec![error_frame(&err)];
    }
    let parsed = match ClientMessage::decode(text.as_str()) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "rejected frame");
            return vec![error_frame(&Error::Protocol(e))];
        }
    };
    match parsed {
        ClientMessage::Join {
            version,
            room,
            name,
            rejoin_as,
            resume_token,
            password,
        } => {
            if membership.is_some() {
                return vec![ServerMessage::error(
                    ErrorCode::AlreadyJoined,
                    "this connection has already joined a room; open a new connection to join another",
                )];
            }
            if version != PROTOCOL_VERSION {
                return vec![ServerMessage::error(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}. Reload the page to get the current app."
                    ),
                )];
            }
            let token = resume_token.as_deref().filter(|t| t.len() <= 64);
            let password = password.as_deref().filter(|p| p.len() <= 256);
            let clustered = match &state.cluster {
                // Boxed, like every cluster call: their futures are large,
                // and inlined they would make every connection's task (idle
                // ones included) as large as the largest of them.
                Some(c) => {
                    Box::pin(c.join(
                        &state.rooms,
                        &room,
                        name.clone(),
                        rejoin_as.clone(),
                        token,
                        password,
                        tx.clone(),
                        state.config.limits.max_rooms,
                    ))
                    .await
                }
                None => None,
            };
            let joined = match clustered {
                Some(result) => result,
                None => state
                    .rooms
                    .join(&room, name, rejoin_as, token, password, tx.clone()),
            };
            match joined {
                Ok(seat) => {
                    let (peer_id, peers) = (seat.id, seat.peers);
                    tracing::info!(room = %room, peer = %peer_id, others = peers.len(), resumed = seat.resumed, "peer joined");
                    let ice_servers = state.config.ice.servers_for(&peer_id);
                    *membership = Some(Membership {
                        room: room.clone(),
                        id: peer_id.clone(),
                        conn: seat.conn,
                    });
                    let grace = state.config.reconnect_grace;
                    vec![ServerMessage::Joined {
                        version: PROTOCOL_VERSION,
                        room,
                        peer_id,
                        peers,
                        heartbeat_ms: u32::try_from(state.config.heartbeat.as_millis())
                            .unwrap_or(u32::MAX),
                        ice_servers,
                        resume_token: (!grace.is_zero()).then_some(seat.token),
                        grace_ms: (!grace.is_zero())
                            .then(|| u32::try_from(grace.as_millis()).unwrap_or(u32::MAX)),
                    }]
                }
                Err(e) => vec![error_frame(&e)],
            }
        }
        ClientMessage::Signal { to, signal } => {
            let Some(m) = membership.as_ref() else {
                return vec![ServerMessage::error(
                    ErrorCode::NotJoined,
                    "send join before anything else",
                )];
            };
            if to == m.id {
                return vec![error_frame(&Error::UnknownPeer(to))];
            }
            let frame = ServerMessage::Signal {
                from: m.id.clone(),
                signal,
            };
            let text = crate::rooms::encode(&frame);
            let relayed = match state.rooms.relay(&m.room, &to, text.clone(), read_at) {
                Err(Error::UnknownPeer(_)) if state.cluster.is_some() => match &state.cluster {
                    Some(c) => Box::pin(c.relay(&m.room, &to, text))
                        .await
                        .unwrap_or(Err(Error::UnknownPeer(to))),
                    None => Err(Error::UnknownPeer(to)),
                },
                other => other,
            };
            match relayed {
                Ok(()) => {
                    state.metrics.relayed.inc();
                    Vec::new()
                }
                Err(e) => vec![error_frame(&e)],
            }
        }
        ClientMessage::Leave => {
            // The room is told when the connection task cleans up.
            *leave = true;
            Vec::new()
        }
        _ => vec![ServerMessage::error(
            ErrorCode::Malformed,
            "message type not supported by this server",
        )],
    }
}
