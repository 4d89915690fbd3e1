//! File transfer: content-addressed, receiver-driven, verified and resumable.
//!
//! # Design
//!
//! A sender hashes each file once with [`tree::FileHasher`]: the file is cut
//! into fixed-size chunks (a power of two, 128 KiB by default), and each
//! chunk's BLAKE3 *chaining value* is kept. Those values merge into the
//! file's ordinary BLAKE3 hash, so a receiver can check every chunk on
//! arrival, whoever sent it, and still end up with the real `blake3::hash`
//! of the file without reading it back (see [`tree`]).
//!
//! An offer ([`frame::Frame::Offer`]) names a manifest (paths, sizes,
//! hashes) by its BLAKE3. The receiver fetches the manifest in pages,
//! checks it against the hash and against the rules in [`manifest`]
//! (no `..`, no absolute paths, no NUL, no reserved names, sane sizes and
//! counts), and only then asks its user. After accepting, it fetches each
//! file's chunk hashes, then **requests chunks itself**, keeping a window of
//! requests outstanding. The sender only answers requests, so the window
//! also bounds what sits in the data channel's send buffer.
//!
//! A chunk that was not requested, arrives twice, or does not match its
//! hash is never written. Verified chunks are handed to the driver to write
//! (`WriteChunk`), and only count once the driver says they are stored
//! (`chunk_written`). The receiver's [`HaveMap`]s are what a driver persists;
//! after a reconnect or a reload, accepting the same offer with them fetches
//! only what is missing.
//!
//! Like the session, the engine does no I/O and reads no clock: drivers pass
//! frames, read results and the time in, and carry out
//! [`TransferOutput`]s.

mod engine;
pub mod frame;
pub mod manifest;
pub mod tree;

pub use engine::{
    HaveMap, OfferedFile, SourceFile, TransferConfig, TransferEngine, TransferError, TransferEvent,
    TransferOutput, id_from_hex, id_hex,
};
pub use frame::TransferId;

#[cfg(test)]
mod tests;
