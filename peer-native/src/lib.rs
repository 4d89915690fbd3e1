//! The native Ferry peer: the same engine as the browser, driven by the
//! webrtc crate, tokio and the file system.
//!
//! # Design
//!
//! All peer behaviour (room membership, negotiation, chat, and the file
//! transfer engine with its verification and resume logic) lives in
//! `ferry-core`, which does no I/O. This crate is a driver, like the browser
//! one in `ferry-wasm`: it carries the engine's outputs out and feeds the
//! world's events back in with the time.
//!
//! - [`driver`]: one tokio task owns the `Session`. The signaling WebSocket
//!   (tokio-tungstenite), every peer connection and every disk operation
//!   report to it through one channel; it never blocks.
//! - [`peer`]: one webrtc-crate `PeerConnection` per remote peer. Commands
//!   run in order on a task of their own; data-channel sends go through a
//!   queue that waits on the channel's send-buffer limit, which paces the
//!   sender the way `bufferedAmount` does in the browser.
//! - [`source`] and [`store`]: reading offered files in slices and writing
//!   received chunks at their offsets with positional I/O on blocking tasks,
//!   so memory stays bounded by the engine's request window. A receiver
//!   writes into `<name>.ferry-part` with a have-map beside it and renames
//!   the file only once its BLAKE3 matched; a killed and restarted receiver
//!   resumes from the have-map.
//! - [`media`]: calls without decoding: remote VP8 and Opus recorded to IVF
//!   and Ogg from their RTP packets, and IVF and Ogg files played into a
//!   call, paced by their timestamps. The engine's call events say when to
//!   add or stop our media; the engine renegotiates.
//! - [`runtime`]: the tokio runtime the webrtc crate runs on, with 4 MiB UDP
//!   socket buffers.
//!
//! The `ferry` binary (`src/main.rs`) is a command-line front end on
//! [`Node`]: `send`, `receive`, `chat` and `call`.
#![forbid(unsafe_code)]

pub mod driver;
pub mod media;
pub mod peer;
pub mod runtime;
pub mod source;
pub mod store;

use std::path::PathBuf;

pub use driver::{Node, NodeConfig, NodeEvent};
pub use media::MediaConfig;
pub use peer::NetConfig;

/// Everything that can go wrong in the native peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine refused a request.
    #[error(transparent)]
    Engine(#[from] ferry_core::Error),
    /// The webrtc crate failed.
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path from a peer (or on disk) could lead outside the target folder.
    #[error("refusing an unsafe path: {0}")]
    UnsafePath(String),
    /// A received file would replace an existing one.
    #[error("{} already exists; pass --overwrite to replace it, or pick another --dir", .0.display())]
    WouldOverwrite(PathBuf),
    /// The target folder's disk is too small for the offer.
    #[error("not enough free space: the files need {needed} bytes but only {available} are free")]
    NoSpace {
        /// Bytes still to receive.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The given paths hold no files.
    #[error("there are no files to send")]
    NothingToSend,
    /// A file changed while it was being hashed.
    #[error("{} changed while it was being read; try again", .0.display())]
    Changed(PathBuf),
    /// No offer with that id is waiting.
    #[error("no such transfer")]
    UnknownTransfer,
    /// A media file to play is unusable, or recording failed.
    #[error("{0}")]
    Media(String),
    /// The node has stopped.
    #[error("the peer has stopped")]
    Stopped,
    /// A bug: something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}
