//! Wire types shared by the Ferry signaling server and every Ferry peer.
//!
//! # Design
//!
//! Ferry peers meet through a small signaling server and then talk directly
//! over WebRTC. Two conversations therefore have a wire format:
//!
//! * **Signaling** ([`ClientMessage`], [`ServerMessage`]): JSON text frames
//!   over a WebSocket between a peer and the server. A peer joins a room,
//!   learns who is there, and relays SDP and ICE ([`Signal`]) to one other
//!   member at a time. The server assigns peer ids and never sees anything
//!   but introductions.
//! * **Peer messages** ([`PeerMessage`]): JSON text frames on the WebRTC data
//!   channel between two peers, such as chat.
//!
//! Every message is an internally tagged enum (`{"type": "...", ...}`), the
//! format is pinned by golden tests below, and [`PROTOCOL_VERSION`] is sent in
//! the `join` message so that the server can refuse peers it does not speak
//! with. Decoding never panics: malformed input becomes a [`ProtocolError`],
//! which a server turns into an [`ServerMessage::Error`] frame with a stable
//! [`ErrorCode`]. `docs/protocol.md` is the prose specification.
#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of the signaling protocol spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest signaling frame, in bytes, that a server accepts or a peer sends.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Largest room code, in bytes.
pub const MAX_ROOM_LEN: usize = 32;

/// Largest display name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Largest peer id, in bytes.
pub const MAX_PEER_ID_LEN: usize = 32;

/// Largest chat text, in bytes.
pub const MAX_CHAT_BYTES: usize = 8 * 1024;

/// Largest peer message frame on a data channel, in bytes.
pub const MAX_PEER_FRAME_BYTES: usize = 16 * 1024;

/// Everything that can be wrong with a frame or a field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is larger than the limit for its channel.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the offending frame.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The frame is not valid JSON or does not match any message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A room code is empty, too long or has characters outside `[a-z0-9-]`.
    #[error("invalid room code: use 1-32 characters from a-z, 0-9 and '-'")]
    InvalidRoom,
    /// A display name is too long or contains control characters.
    #[error("invalid name: at most 64 bytes and no control characters")]
    InvalidName,
    /// A peer id is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("invalid peer id")]
    InvalidPeerId,
    /// Chat text is empty or larger than [`MAX_CHAT_BYTES`].
    #[error("chat text must be 1 to 8192 bytes")]
    InvalidChat,
}

impl ProtocolError {
    /// The error code a server reports for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Malformed(_) | Self::InvalidChat => ErrorCode::Malformed,
            Self::InvalidRoom => ErrorCode::InvalidRoom,
            Self::InvalidName => ErrorCode::InvalidName,
            Self::InvalidPeerId => ErrorCode::UnknownPeer,
        }
    }
}

/// A peer id, assigned by the server and unique within a room.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

impl PeerId {
    /// Checks and wraps a peer id.
    pub fn new(id: impl Into<String>) -> Result<Self, ProtocolError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_PEER_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(id))
        } else {
            Err(ProtocolError::InvalidPeerId)
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PeerId {
    type Error = ProtocolError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<PeerId> for String {
    fn from(value: PeerId) -> Self {
        value.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room code. Codes are case-insensitive and stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomCode(String);

impl RoomCode {
    /// Checks, lower-cases and wraps a room code.
    pub fn new(code: impl AsRef<str>) -> Result<Self, ProtocolError> {
        let code = code.as_ref().trim().to_ascii_lowercase();
        let ok = !code.is_empty()
            && code.len() <= MAX_ROOM_LEN
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(code))
        } else {
            Err(ProtocolError::InvalidRoom)
        }
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomCode {
    type Error = ProtocolError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RoomCode> for String {
    fn from(value: RoomCode) -> Self {
        value.0
    }
}

impl fmt::Display for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a display name: at most [`MAX_NAME_LEN`] bytes, no control characters.
pub fn validate_name(name: &str) -> Result<(), ProtocolError> {
    if name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ProtocolError::InvalidName)
    }
}

/// A member of a room as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The member's peer id.
    pub id: PeerId,
    /// The display name the member chose; may be empty.
    #[serde(default)]
    pub name: String,
}

/// A STUN or TURN server for `RTCPeerConnection`, as the server hands it out
/// on join (the same shape as WebRTC's `RTCIceServer`). TURN entries carry
/// short-lived credentials (the TURN REST API scheme), never a long-term
/// password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name: `<expiry unix seconds>:<peer id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password: base64 of HMAC-SHA1(shared secret, user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// WebRTC negotiation data relayed between two peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Signal {
    /// An SDP offer.
    Offer {
        /// The session description.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The session description.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:` attribute line, as in `RTCIceCandidate.candidate`.
        candidate: String,
        /// The media stream identification tag, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// The index of the m-line, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_m_line_index: Option<u16>,
    },
    /// The sender has gathered all of its candidates.
    EndOfCandidates,
}

/// A frame sent by a peer to the signaling server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// Join a room; the room is created if it does not exist.
    Join {
        /// The protocol version the peer speaks; must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The room to join.
        room: RoomCode,
        /// A display name for the others; may be empty.
        #[serde(default)]
        name: String,
        /// The id this peer had before it lost the server. The server grants
        /// it if nobody in the room holds it, so existing direct connections
        /// keep their identity across a server restart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin_as: Option<PeerId>,
        /// The token `joined` gave for `rejoin_as`. Within the server's grace
        /// period after a lost connection, it takes the seat back silently:
        /// same id, and the others are not told that the peer left.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// The room's password: sets it when this join creates the room,
        /// and must match it otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    /// Relay a signal to one member of the same room.
    Signal {
        /// The recipient.
        to: PeerId,
        /// The payload.
        signal: Signal,
    },
    /// Leave the room; the server closes the connection afterwards.
    Leave,
}

/// Stable error codes carried by [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame was larger than [`MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The room already has the maximum number of members.
    RoomFull,
    /// A signal was addressed to a peer that is not in the sender's room.
    UnknownPeer,
    /// A frame was not valid JSON, not a known message, or binary.
    Malformed,
    /// The `join` carried a protocol version the server does not speak.
    UnsupportedVersion,
    /// A message other than `join` arrived before `join`.
    NotJoined,
    /// A second `join` arrived on the same connection.
    AlreadyJoined,
    /// The room code is not valid.
    InvalidRoom,
    /// The display name is not valid.
    InvalidName,
    /// The recipient is not keeping up with its signaling traffic; the
    /// signal was dropped. Not fatal: retry later.
    PeerBusy,
    /// The server is shutting down or failed internally.
    ServerError,
    /// Too many messages per second on this connection; this one was
    /// dropped. Not fatal: slow down.
    RateLimited,
    /// The server holds as many rooms as it may; try again later.
    TooManyRooms,
    /// The connection did not join a room in time, or stayed silent too long.
    Idle,
    /// The server is shutting down: reconnect (to another instance, or to
    /// this one once it is back).
    GoingAway,
    /// The room has a password and the `join` did not give it.
    WrongPassword,
}

impl ErrorCode {
    /// The code as it appears on the wire (`"room_full"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::RoomFull => "room_full",
            Self::UnknownPeer => "unknown_peer",
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::InvalidRoom => "invalid_room",
            Self::InvalidName => "invalid_name",
            Self::PeerBusy => "peer_busy",
            Self::ServerError => "server_error",
            Self::RateLimited => "rate_limited",
            Self::TooManyRooms => "too_many_rooms",
            Self::Idle => "idle",
            Self::GoingAway => "going_away",
            Self::WrongPassword => "wrong_password",
        }
    }

    /// Whether the server closes the connection after sending this error.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::RoomFull
                | Self::UnsupportedVersion
                | Self::InvalidRoom
                | Self::InvalidName
                | Self::ServerError
                | Self::TooManyRooms
                | Self::Idle
                | Self::GoingAway
                | Self::WrongPassword
        )
    }
}

/// A frame sent by the signaling server to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// The protocol version of the server.
        version: u32,
        /// The room joined, normalized.
        room: RoomCode,
        /// The id assigned to this peer.
        peer_id: PeerId,
        /// The members that were already in the room.
        peers: Vec<PeerInfo>,
        /// How often the server pings, in milliseconds. A connection that
        /// stays silent for three intervals is dropped.
        heartbeat_ms: u32,
        /// STUN and TURN servers to use for this room's connections; empty
        /// when the server has none configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// A secret that lets this peer take its seat back after a lost
        /// connection (send it with `rejoin_as`); absent if the server keeps
        /// no seats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// How long the server keeps the seat of a lost connection, in
        /// milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u32>,
    },
    /// A new member joined the room.
    PeerJoined {
        /// The new member.
        peer: PeerInfo,
    },
    /// A member left the room or its connection died.
    PeerLeft {
        /// The member that left.
        peer_id: PeerId,
    },
    /// A signal relayed from another member.
    Signal {
        /// The sender.
        from: PeerId,
        /// The payload.
        signal: Signal,
    },
    /// Something went wrong; see [`ErrorCode::is_fatal`].
    Error {
        /// The stable error code.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
}

/// A frame sent from one peer to another over a data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerMessage {
    /// A chat message for the room.
    Chat {
        /// The text, 1 to [`MAX_CHAT_BYTES`] bytes.
        text: String,
    },
    /// The sender is in call `call` and invites the receiver to it.
    CallInvite {
        /// The call's id, 1 to [`MAX_CALL_ID_LEN`] letters and digits.
        call: String,
    },
    /// The sender takes part in call `call`: send it media. Sent to every
    /// connected peer on answering, and back once to a newly met participant.
    CallJoin {
        /// The call's id.
        call: String,
    },
    /// The sender will not take part in call `call`.
    CallDecline {
        /// The call's id.
        call: String,
        /// Why (`declined`, `busy`, `full`), for the inviter's UI.
        #[serde(default)]
        reason: String,
    },
    /// The sender left call `call`: stop sending it media.
    CallLeave {
        /// The call's id.
        call: String,
    },
}

/// Longest call id.
pub const MAX_CALL_ID_LEN: usize = 32;

fn valid_call_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CALL_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn decode_json<'a, T: Deserialize<'a>>(text: &'a str, limit: usize) -> Result<T, ProtocolError> {
    if text.len() > limit {
        return Err(ProtocolError::FrameTooLarge {
            size: text.len(),
            limit,
        });
    }
    serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

fn encode_json<T: Serialize>(value: &T) -> String {
    // Serializing these types cannot fail: every field is a string, number,
    // vector or nested enum with string keys.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

impl ClientMessage {
    /// Decodes a text frame, enforcing [`MAX_FRAME_BYTES`].
    ///
    /// A `join` with a bad room code or name yields [`ProtocolError::InvalidRoom`]
    /// or [`ProtocolError::InvalidName`] rather than a generic parse error, so
    /// that a server can tell the user exactly what to fix.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let value: serde_json::Value = decode_json(text, MAX_FRAME_BYTES)?;
        if value.get("type").and_then(|t| t.as_str()) == Some("join") {
            if let Some(room) = value.get("room").and_then(|r| r.as_str()) {
                RoomCode::new(room)?;
            }
            if let Some(name) = value.get("name").and_then(|n| n.as_str()) {
                validate_name(name)?;
            }
        }
        serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    /// Encodes this message as a JSON text frame.
    pub fn encode(&self) -> String {
        encode_json(self)
    }
}

impl ServerMessage {
    /// Decodes a text frame, enforcing [`MAX_FRAME_BYTES`].
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        decode_json(text, MAX_FRAME_BYTES)
    }

    /// Encodes this message as a JSON text frame.
    pub fn encode(&self) -> String {
        encode_json(self)
    }

    /// Builds an error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }
}

impl PeerMessage {
    /// Decodes and validates a data-channel text frame.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        let msg: Self = decode_json(text, MAX_PEER_FRAME_BYTES)?;
        match &msg {
            Self::Chat { text } if text.is_empty() || text.len() > MAX_CHAT_BYTES => {
                Err(ProtocolError::InvalidChat)
            }
            Self::CallInvite { call }
            | Self::CallJoin { call }
            | Self::CallLeave { call }
            | Self::CallDecline { call, .. }
                if !valid_call_id(call) =>
            {
                Err(ProtocolError::Malformed(
                    "a call id is 1 to 32 letters and digits".into(),
                ))
            }
            Self::CallDecline { reason, .. } if reason.len() > 64 => Err(ProtocolError::Malformed(
                "a decline reason is at most 64 bytes".into(),
            )),
            _ => Ok(msg),
        }
    }

    /// Encodes this message as a JSON text frame.
    pub fn encode(&self) -> String {
        encode_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    #[test]
    fn golden_client_messages() {
        let join = ClientMessage::Join {
            version: 1,
            room: RoomCode::new("K7M-X2Q").unwrap(),
            name: "Ada".into(),
            rejoin_as: None,
            resume_token: None,
            password: None,
        };
        assert_eq!(
            join.encode(),
            r#"{"type":"join","version":1,"room":"k7m-x2q","name":"Ada"}"#
        );
        let rejoin = ClientMessage::Join {
            version: 1,
            room: RoomCode::new("abc").unwrap(),
            name: String::new(),
            rejoin_as: Some(id("p1")),
            resume_token: Some("t0k3n".into()),
            password: None,
        };
        assert_eq!(
            rejoin.encode(),
            r#"{"type":"join","version":1,"room":"abc","name":"","rejoin_as":"p1","resume_token":"t0k3n"}"#
        );
        let offer = ClientMessage::Signal {
            to: id("b"),
            signal: Signal::Offer { sdp: "v=0".into() },
        };
        assert_eq!(
            offer.encode(),
            r#"{"type":"signal","to":"b","signal":{"kind":"offer","sdp":"v=0"}}"#
        );
        let cand = ClientMessage::Signal {
            to: id("b"),
            signal: Signal::Candidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
            },
        };
        assert_eq!(
            cand.encode(),
            r#"{"type":"signal","to":"b","signal":{"kind":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdp_mid":"0","sdp_m_line_index":0}}"#
        );
        let eoc = ClientMessage::Signal {
            to: id("b"),
            signal: Signal::EndOfCandidates,
        };
        assert_eq!(
            eoc.encode(),
            r#"{"type":"signal","to":"b","signal":{"kind":"end_of_candidates"}}"#
        );
        assert_eq!(ClientMessage::Leave.encode(), r#"{"type":"leave"}"#);
        for msg in [join, rejoin, offer, cand, eoc, ClientMessage::Leave] {
            assert_eq!(ClientMessage::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn golden_server_messages() {
        let joined = ServerMessage::Joined {
            version: 1,
            room: RoomCode::new("abc").unwrap(),
            peer_id: id("p2"),
            peers: vec![PeerInfo {
                id: id("p1"),
                name: "Ada".into(),
            }],
            heartbeat_ms: 5000,
            ice_servers: Vec::new(),
            resume_token: None,
            grace_ms: None,
        };
        assert_eq!(
            joined.encode(),
            r#"{"type":"joined","version":1,"room":"abc","peer_id":"p2","peers":[{"id":"p1","name":"Ada"}],"heartbeat_ms":5000}"#
        );
        let with_turn = ServerMessage::Joined {
            version: 1,
            room: RoomCode::new("abc").unwrap(),
            peer_id: id("p2"),
            peers: Vec::new(),
            heartbeat_ms: 5000,
            ice_servers: vec![
                IceServer {
                    urls: vec!["stun:127.0.0.1:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                    username: Some("1700000000:p2".into()),
                    credential: Some("c2VjcmV0".into()),
                },
            ],
            resume_token: Some("t0k3n".into()),
            grace_ms: Some(15000),
        };
        assert_eq!(
            with_turn.encode(),
            r#"{"type":"joined","version":1,"room":"abc","peer_id":"p2","peers":[],"heartbeat_ms":5000,"ice_servers":[{"urls":["stun:127.0.0.1:3478"]},{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"1700000000:p2","credential":"c2VjcmV0"}],"resume_token":"t0k3n","grace_ms":15000}"#
        );
        assert_eq!(
            ServerMessage::decode(&with_turn.encode()).unwrap(),
            with_turn
        );
        let pj = ServerMessage::PeerJoined {
            peer: PeerInfo {
                id: id("p3"),
                name: String::new(),
            },
        };
        assert_eq!(
            pj.encode(),
            r#"{"type":"peer_joined","peer":{"id":"p3","name":""}}"#
        );
        let pl = ServerMessage::PeerLeft { peer_id: id("p3") };
        assert_eq!(pl.encode(), r#"{"type":"peer_left","peer_id":"p3"}"#);
        let sig = ServerMessage::Signal {
            from: id("p1"),
            signal: Signal::Answer { sdp: "v=0".into() },
        };
        assert_eq!(
            sig.encode(),
            r#"{"type":"signal","from":"p1","signal":{"kind":"answer","sdp":"v=0"}}"#
        );
        let err = ServerMessage::error(ErrorCode::RoomFull, "room is full");
        assert_eq!(
            err.encode(),
            r#"{"type":"error","code":"room_full","message":"room is full"}"#
        );
        for msg in [joined, pj, pl, sig, err] {
            assert_eq!(ServerMessage::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn golden_error_codes() {
        let all = [
            (ErrorCode::FrameTooLarge, "frame_too_large"),
            (ErrorCode::RoomFull, "room_full"),
            (ErrorCode::UnknownPeer, "unknown_peer"),
            (ErrorCode::Malformed, "malformed"),
            (ErrorCode::UnsupportedVersion, "unsupported_version"),
            (ErrorCode::NotJoined, "not_joined"),
            (ErrorCode::AlreadyJoined, "already_joined"),
            (ErrorCode::InvalidRoom, "invalid_room"),
            (ErrorCode::InvalidName, "invalid_name"),
            (ErrorCode::PeerBusy, "peer_busy"),
            (ErrorCode::ServerError, "server_error"),
        ];
        for (code, text) in all {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{text}\""));
        }
    }

    #[test]
    fn golden_peer_messages() {
        for (msg, json) in [
            (
                PeerMessage::CallInvite { call: "c1".into() },
                r#"{"type":"call_invite","call":"c1"}"#,
            ),
            (
                PeerMessage::CallJoin { call: "c1".into() },
                r#"{"type":"call_join","call":"c1"}"#,
            ),
            (
                PeerMessage::CallDecline {
                    call: "c1".into(),
                    reason: "busy".into(),
                },
                r#"{"type":"call_decline","call":"c1","reason":"busy"}"#,
            ),
            (
                PeerMessage::CallLeave { call: "c1".into() },
                r#"{"type":"call_leave","call":"c1"}"#,
            ),
        ] {
            assert_eq!(msg.encode(), json);
            assert_eq!(PeerMessage::decode(json).unwrap(), msg);
        }
        for bad in [
            r#"{"type":"call_invite","call":""}"#,
            r#"{"type":"call_join","call":"no spaces"}"#,
            r#"{"type":"call_leave","call":"0123456789012345678901234567890123"}"#,
        ] {
            assert!(PeerMessage::decode(bad).is_err(), "{bad}");
        }
        let chat = PeerMessage::Chat { text: "hi".into() };
        assert_eq!(chat.encode(), r#"{"type":"chat","text":"hi"}"#);
        assert_eq!(PeerMessage::decode(&chat.encode()).unwrap(), chat);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            ClientMessage::decode("{not json"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            ClientMessage::decode(r#"{"type":"dance"}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(
            ClientMessage::decode(r#"{"type":"join","version":1,"room":"../etc"}"#),
            Err(ProtocolError::InvalidRoom)
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"join","version":1,"room":"ok","name":"a\u0000b"}"#),
            Err(ProtocolError::InvalidName)
        );
        assert!(matches!(
            ClientMessage::decode(
                r#"{"type":"signal","to":"","signal":{"kind":"end_of_candidates"}}"#
            ),
            Err(ProtocolError::Malformed(_))
        ));
        let big = format!(
            r#"{{"type":"join","version":1,"room":"{}"}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert!(matches!(
            ClientMessage::decode(&big),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert_eq!(
            PeerMessage::decode(r#"{"type":"chat","text":""}"#),
            Err(ProtocolError::InvalidChat)
        );
        assert!(validate_name("Ada Lovelace").is_ok());
        assert!(validate_name("bad\nname").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn room_codes_normalize() {
        assert_eq!(RoomCode::new(" AbC-9 ").unwrap().as_str(), "abc-9");
        assert!(RoomCode::new("").is_err());
        assert!(RoomCode::new("a/b").is_err());
        assert!(RoomCode::new("x".repeat(33)).is_err());
    }
}
