//! The transfer engine: both roles, many transfers, no I/O.

use std::collections::{HashMap, HashSet, VecDeque};

use blake3::hazmat::ChainingValue;
use ferry_protocol::PeerId;
use serde::Serialize;

use super::frame::{CHUNK_HEADER_LEN, Frame, MAX_REQUESTS_PER_FRAME, Meta, TransferId};
use super::manifest::{self, FileEntry, MAX_MANIFEST_BYTES};
use super::tree::{self, FileDigest, MIN_CHUNK};
use crate::Millis;

/// Tuning of a [`TransferEngine`].
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Chunk size offered by this side as a sender; a power of two.
    pub chunk_size: u32,
    /// Largest data-channel message the link accepts.
    pub max_message: usize,
    /// Chunks a receiver keeps requested (or being written) at once.
    pub window: usize,
    /// Bytes of metadata per request.
    pub meta_page: u32,
    /// How long a receiver waits for any answer before re-requesting.
    pub request_timeout: Millis,
    /// Re-requests without progress before the transfer counts as interrupted.
    pub max_stalls: u32,
    /// Corrupted chunks tolerated before the transfer fails.
    pub max_bad_chunks: u32,
    /// Least time between two progress events of one transfer.
    pub progress_interval: Millis,
    /// Most consecutive requested chunks a sender reads from a file in one
    /// go (one `ReadChunk`).
    pub read_coalesce: u64,
    /// Least free window slots before a receiver sends more requests
    /// (while others are in flight).
    pub request_batch: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            chunk_size: 128 * 1024,
            max_message: 256 * 1024,
            window: 128,
            meta_page: 64 * 1024,
            request_timeout: 10_000,
            max_stalls: 3,
            max_bad_chunks: 16,
            progress_interval: 250,
            read_coalesce: 16,
            request_batch: 16,
        }
    }
}

/// Why a transfer request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No transfer with that id.
    #[error("no such transfer")]
    Unknown,
    /// The transfer is not in a state that allows this.
    #[error("the transfer cannot do that now ({0})")]
    State(&'static str),
    /// The chunk size is not a power of two between 1 KiB and the message limit.
    #[error("chunk size must be a power of two that fits a data-channel message")]
    ChunkSize,
    /// The files break the manifest rules.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A digest does not match its file's size or chunking.
    #[error("the digest of {0} does not match its size")]
    Digest(String),
    /// A resume have-map does not fit the manifest.
    #[error("saved progress does not match this offer")]
    Resume,
}

/// A file a sender offers, hashed beforehand with [`tree::FileHasher`].
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative path, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Its digest at the engine's chunk size.
    pub digest: FileDigest,
}

/// A file as the receiver's user sees it in an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferedFile {
    /// Relative path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What the engine tells the user interface about transfers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransferEvent {
    /// A peer offers files; call [`TransferEngine::accept`] or `decline`.
    Offered {
        /// Transfer id, hex.
        id: String,
        /// The sender.
        peer: PeerId,
        /// The files.
        files: Vec<OfferedFile>,
        /// Their total size.
        total_bytes: u64,
    },
    /// An offer was refused automatically because its file list is unsafe.
    OfferRejected {
        /// Transfer id, hex.
        id: String,
        /// The sender.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// Our offer was accepted (sender side).
    Accepted {
        /// Transfer id, hex.
        id: String,
    },
    /// Our offer was declined (sender side).
    Declined {
        /// Transfer id, hex.
        id: String,
        /// The receiver's reason.
        reason: String,
    },
    /// Bytes moved so far.
    Progress {
        /// Transfer id, hex.
        id: String,
        /// Bytes verified (receiver) or sent (sender).
        done_bytes: u64,
        /// Total bytes.
        total_bytes: u64,
        /// Recent rate in bytes per second.
        rate_bps: u64,
        /// Estimated time left, if a rate is known.
        eta_ms: Option<u64>,
        /// Chunk bytes that crossed the wire so far, including any sent or
        /// received again (after corruption or an interruption).
        wire_bytes: u64,
    },
    /// A received file is complete and its BLAKE3 matches (receiver side).
    FileVerified {
        /// Transfer id, hex.
        id: String,
        /// File index.
        file: u32,
        /// Its path.
        path: String,
        /// Its BLAKE3, hex.
        hash: String,
    },
    /// Every file arrived and verified.
    Completed {
        /// Transfer id, hex.
        id: String,
    },
    /// The transfer was cancelled.
    Cancelled {
        /// Transfer id, hex.
        id: String,
        /// Whether the other side cancelled.
        by_peer: bool,
        /// Why.
        reason: String,
    },
    /// The peer went away or stopped answering; verified chunks are kept
    /// and the transfer resumes when the peer offers again.
    Interrupted {
        /// Transfer id, hex.
        id: String,
        /// What happened.
        reason: String,
    },
    /// The transfer cannot go on.
    Failed {
        /// Transfer id, hex.
        id: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferOutput {
    /// Send a binary frame to a peer.
    Send {
        /// The peer.
        peer: PeerId,
        /// The encoded frame.
        frame: Vec<u8>,
    },
    /// Read bytes of a file we offered (one or more consecutive chunks), then
    /// call [`TransferEngine::chunk_read`] with all of them.
    ReadChunk {
        /// The transfer.
        id: TransferId,
        /// File index.
        file: u32,
        /// Chunk index.
        chunk: u64,
        /// Byte offset in the file.
        offset: u64,
        /// Byte count.
        len: u32,
    },
    /// Write verified bytes of a file we receive, then call
    /// [`TransferEngine::chunk_written`]. A zero-length write at offset 0
    /// creates an empty file.
    WriteChunk {
        /// The transfer.
        id: TransferId,
        /// File index.
        file: u32,
        /// Chunk index.
        chunk: u64,
        /// Byte offset in the file.
        offset: u64,
        /// The verified bytes.
        data: Vec<u8>,
    },
    /// Tell the user.
    Event(TransferEvent),
}

/// Hex form of a transfer id, as used in events.
pub fn id_hex(id: &TransferId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the hex form of a transfer id.
pub fn id_from_hex(s: &str) -> Option<TransferId> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// A set of chunk indices, persisted by drivers to resume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HaveMap {
    words: Vec<u64>,
    count: u64,
}

impl HaveMap {
    pub(crate) fn new(chunks: u64) -> Self {
        Self {
            words: vec![0; chunks.div_ceil(64) as usize],
            count: 0,
        }
    }
    /// Whether chunk `i` is verified and stored.
    pub fn has(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub(crate) fn set(&mut self, i: u64) {
        if let Some(w) = self.words.get_mut((i / 64) as usize)
            && *w & (1 << (i % 64)) == 0
        {
            *w |= 1 << (i % 64);
            self.count += 1;
        }
    }
    /// Number of chunks held.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// The bitmap as little-endian words, for storage.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// Rebuilds a map from stored words; `None` if it does not fit `chunks`.
    pub fn from_words(words: Vec<u64>, chunks: u64) -> Option<Self> {
        if words.len() != chunks.div_ceil(64) as usize {
            return None;
        }
        let spare = (words.len() as u64 * 64).saturating_sub(chunks);
        if spare > 0 && words.last().is_some_and(|w| w >> (64 - spare) != 0) {
            return None;
        }
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(Self { words, count })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Offered,
    Active,
    Interrupted,
    Finished,
}

struct Outgoing {
    peer: PeerId,
    chunk_size: u32,
    files: Vec<SourceFile>,
    manifest: Vec<u8>,
    total: u64,
    state: SendState,
    queued: VecDeque<(u32, u64)>,
    queued_set: HashSet<(u32, u64)>,
    reading: HashSet<(u32, u64)>,
    sent_bytes: u64,
    meter: Meter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    FetchManifest,
    AwaitingDecision,
    FetchHashLists,
    Active,
    Interrupted,
    Finished,
}

struct Incoming {
    peer: PeerId,
    chunk_size: u32,
    file_count: u32,
    total: u64,
    manifest_len: u32,
    manifest_hash: [u8; 32],
    manifest_buf: Vec<u8>,
    files: Vec<FileEntry>,
    cvs: Vec<Vec<ChainingValue>>,
    meta_buf: Vec<u8>,
    meta_pending: Option<(Meta, u32)>,
    hash_list_next: u32,
    have: Vec<HaveMap>,
    next_chunk: Vec<u64>,
    next_file: u32,
    retry: VecDeque<(u32, u64)>,
    outstanding: HashSet<(u32, u64)>,
    writing: HashSet<(u32, u64)>,
    done_bytes: u64,
    verified_files: u32,
    bad_chunks: u32,
    unexpected_chunks: u64,
    wire_bytes: u64,
    accepted: bool,
    last_activity: Millis,
    stalls: u32,
    state: RecvState,
    meter: Meter,
}

/// Rate and progress-event pacing.
struct Meter {
    start_time: Millis,
    start_bytes: Option<u64>,
    last_emit: Option<Millis>,
    last_bytes: u64,
    last_time: Millis,
    rate: f64,
}

impl Meter {
    fn new(now: Millis) -> Self {
        Self {
            start_time: now,
            start_bytes: None,
            last_emit: None,
            last_bytes: 0,
            last_time: now,
            rate: 0.0,
        }
    }

    fn sample(&mut self, bytes: u64, now: Millis) {
        let start = *self.start_bytes.get_or_insert(self.last_bytes);
        let dt = now.saturating_sub(self.last_time);
        if self.rate == 0.0 && dt < 100 {
            // Until the first full sample, use the average since the start.
            let elapsed = now.saturating_sub(self.start_time);
            if elapsed >= 10 {
                self.rate = bytes.saturating_sub(start) as f64 * 1000.0 / elapsed as f64;
            }
            return;
        }
        if dt >= 100 {
            let inst = (bytes.saturating_sub(self.last_bytes)) as f64 * 1000.0 / dt as f64;
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                0.6 * self.rate + 0.4 * inst
            };
            self.last_bytes = bytes;
            self.last_time = now;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn progress(
        &mut self,
        id: &TransferId,
        done: u64,
        total: u64,
        wire: u64,
        now: Millis,
        interval: Millis,
        force: bool,
    ) -> Option<TransferEvent> {
        self.sample(done, now);
        if !force
            && self
                .last_emit
                .is_some_and(|t| now.saturating_sub(t) < interval)
        {
            return None;
        }
        self.last_emit = Some(now);
        let rate = self.rate.max(0.0) as u64;
        Some(TransferEvent::Progress {
            id: id_hex(id),
            done_bytes: done,
            total_bytes: total,
            rate_bps: rate,
            eta_ms: (rate > 0).then(|| total.saturating_sub(done).saturating_mul(1000) / rate),
            wire_bytes: wire,
        })
    }
}

/// All transfers of one peer, in both directions. See the module docs.
pub struct TransferEngine {
    config: TransferConfig,
    outgoing: HashMap<TransferId, Outgoing>,
    incoming: HashMap<TransferId, Incoming>,
    out: VecDeque<TransferOutput>,
}

fn valid_chunk_size(cs: u32, max_message: usize) -> bool {
    cs.is_power_of_two() && cs >= MIN_CHUNK && cs as usize + CHUNK_HEADER_LEN <= max_message
}

impl TransferEngine {
    /// Creates an engine.
    pub fn new(config: TransferConfig) -> Self {
        Self {
            config,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The engine's configuration.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<TransferOutput> {
        self.out.pop_front()
    }

    fn send(&mut self, peer: &PeerId, frame: &Frame) {
        self.out.push_back(TransferOutput::Send {
            peer: peer.clone(),
            frame: frame.encode(),
        });
    }

    fn event(&mut self, e: TransferEvent) {
        self.out.push_back(TransferOutput::Event(e));
    }

    /// Offers files to `peer` under a fresh random `id` chosen by the driver.
    pub fn offer(
        &mut self,
        peer: PeerId,
        id: TransferId,
        files: Vec<SourceFile>,
        now: Millis,
    ) -> Result<(), TransferError> {
        self.offer_inner(peer, id, files, now, true)
    }

    /// Offers files without checking the file list first, as a malicious
    /// sender would: for tests of receivers only.
    #[cfg(feature = "hostile-sender")]
    pub fn offer_unchecked(
        &mut self,
        peer: PeerId,
        id: TransferId,
        files: Vec<SourceFile>,
        now: Millis,
    ) -> Result<(), TransferError> {
        self.offer_inner(peer, id, files, now, false)
    }

    fn offer_inner(
        &mut self,
        peer: PeerId,
        id: TransferId,
        files: Vec<SourceFile>,
        now: Millis,
        check: bool,
    ) -> Result<(), TransferError> {
        let cs = self.config.chunk_size;
        if !valid_chunk_size(cs, self.config.max_message) {
            return Err(TransferError::ChunkSize);
        }
        if self.outgoing.contains_key(&id) || self.incoming.contains_key(&id) {
            return Err(TransferError::State("id in use"));
        }
        for f in &files {
            let expected = if tree::is_single_chunk(f.size, cs) {
                0
            } else {
                tree::chunk_count(f.size, cs)
            };
            if f.digest.cvs.len() as u64 != expected {
                return Err(TransferError::Digest(f.path.clone()));
            }
        }
        let entries: Vec<FileEntry> = files
            .iter()
            .map(|f| FileEntry {
                path: f.path.clone(),
                size: f.size,
                hash: *f.digest.root.as_bytes(),
            })
            .collect();
        let bytes = manifest::encode(&entries);
        // Check our own offer exactly as a receiver will.
        if check {
            manifest::decode(&bytes)?;
        }
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(TransferError::State("too many files in one offer"));
        }
        let total = files.iter().map(|f| f.size).sum();
        let o = Outgoing {
            peer: peer.clone(),
            chunk_size: cs,
            files,
            manifest: bytes,
            total,
            state: SendState::Offered,
            queued: VecDeque::new(),
            queued_set: HashSet::new(),
            reading: HashSet::new(),
            sent_bytes: 0,
            meter: Meter::new(now),
        };
        let frame = offer_frame(&id, &o);
        self.outgoing.insert(id, o);
        self.send(&peer, &frame);
        Ok(())
    }

    /// Accepts an offer. `resume` holds, per file, the have-map saved by an
    /// earlier attempt; those chunks are not fetched again.
    pub fn accept(
        &mut self,
        id: &TransferId,
        resume: Option<Vec<HaveMap>>,
        now: Millis,
    ) -> Result<(), TransferError> {
        let t = self.incoming.get_mut(id).ok_or(TransferError::Unknown)?;
        if t.state != RecvState::AwaitingDecision {
            return Err(TransferError::State("not waiting for a decision"));
        }
        if let Some(have) = resume {
            let fits = have.len() == t.files.len()
                && have.iter().zip(&t.files).all(|(h, f)| {
                    h.words.len()
                        == HaveMap::new(tree::chunk_count(f.size, t.chunk_size))
                            .words
                            .len()
                });
            if !fits {
                return Err(TransferError::Resume);
            }
            t.done_bytes = have
                .iter()
                .zip(&t.files)
                .map(|(h, f)| {
                    (0..tree::chunk_count(f.size, t.chunk_size))
                        .filter(|&c| h.has(c))
                        .map(|c| tree::chunk_len(f.size, t.chunk_size, c))
                        .sum::<u64>()
                })
                .sum();
            t.have = have;
            t.verified_files = 0;
            let mut events = Vec::new();
            for (i, (h, f)) in t.have.iter().zip(&t.files).enumerate() {
                if h.count() == tree::chunk_count(f.size, t.chunk_size) {
                    t.verified_files += 1;
                    events.push(TransferEvent::FileVerified {
                        id: id_hex(id),
                        file: i as u32,
                        path: f.path.clone(),
                        hash: blake3::Hash::from_bytes(f.hash).to_hex().to_string(),
                    });
                }
            }
            self.out
                .extend(events.into_iter().map(TransferOutput::Event));
        }
        let t = self.incoming.get_mut(id).ok_or(TransferError::Unknown)?;
        t.accepted = true;
        t.state = RecvState::FetchHashLists;
        t.last_activity = now;
        t.meter = Meter::new(now);
        t.meter.last_bytes = t.done_bytes;
        let peer = t.peer.clone();
        self.send(&peer, &Frame::Accept { id: *id });
        self.advance_incoming(id, now);
        Ok(())
    }

    /// Declines an offer.
    pub fn decline(&mut self, id: &TransferId, reason: &str) -> Result<(), TransferError> {
        let t = self.incoming.get_mut(id).ok_or(TransferError::Unknown)?;
        if t.state != RecvState::AwaitingDecision {
            return Err(TransferError::State("not waiting for a decision"));
        }
        t.state = RecvState::Finished;
        let peer = t.peer.clone();
        self.send(
            &peer,
            &Frame::Decline {
                id: *id,
                reason: reason.to_owned(),
            },
        );
        Ok(())
    }

    /// Cancels a transfer in either direction.
    pub fn cancel(&mut self, id: &TransferId, reason: &str) -> Result<(), TransferError> {
        let peer = if let Some(t) = self.outgoing.get_mut(id) {
            if t.state == SendState::Finished {
                return Err(TransferError::State("already finished"));
            }
            t.state = SendState::Finished;
            t.queued.clear();
            t.queued_set.clear();
            t.peer.clone()
        } else if let Some(t) = self.incoming.get_mut(id) {
            if t.state == RecvState::Finished {
                return Err(TransferError::State("already finished"));
            }
            t.state = RecvState::Finished;
            t.outstanding.clear();
            t.retry.clear();
            t.peer.clone()
        } else {
            return Err(TransferError::Unknown);
        };
        self.send(
            &peer,
            &Frame::Cancel {
                id: *id,
                reason: reason.to_owned(),
            },
        );
        self.event(TransferEvent::Cancelled {
            id: id_hex(id),
            by_peer: false,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Transfers we receive that are not finished.
    pub fn incoming_ids(&self) -> Vec<TransferId> {
        self.incoming
            .iter()
            .filter(|(_, t)| t.state != RecvState::Finished && !t.have.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether we accepted this incoming transfer and it is not over: the
    /// only state in which saving its progress for a resume makes sense.
    pub fn is_receiving(&self, id: &TransferId) -> bool {
        self.incoming.get(id).is_some_and(|t| {
            matches!(
                t.state,
                RecvState::FetchHashLists | RecvState::Active | RecvState::Interrupted
            )
        })
    }

    /// The have-maps of a transfer we receive, for saving progress.
    pub fn have_maps(&self, id: &TransferId) -> Option<&[HaveMap]> {
        self.incoming.get(id).map(|t| t.have.as_slice())
    }

    /// The verified file list of a transfer we receive.
    pub fn files(&self, id: &TransferId) -> Option<&[FileEntry]> {
        self.incoming.get(id).map(|t| t.files.as_slice())
    }

    /// The sender's chunk size of a transfer we receive, which its have-maps
    /// count in.
    pub fn chunk_size(&self, id: &TransferId) -> Option<u32> {
        self.incoming.get(id).map(|t| t.chunk_size)
    }

    /// The manifest hash of a transfer we receive, which identifies its content.
    pub fn manifest_hash(&self, id: &TransferId) -> Option<[u8; 32]> {
        self.incoming.get(id).map(|t| t.manifest_hash)
    }

    /// The data channel to `peer` closed. Transfers with it pause and keep
    /// what they have.
    pub fn peer_lost(&mut self, peer: &PeerId) {
        let mut events = Vec::new();
        for (id, t) in &mut self.outgoing {
            if &t.peer == peer && matches!(t.state, SendState::Offered | SendState::Active) {
                t.state = SendState::Interrupted;
                t.queued.clear();
                t.queued_set.clear();
                events.push(TransferEvent::Interrupted {
                    id: id_hex(id),
                    reason:
                        "the connection to the receiver was lost; it resumes when they are back"
                            .into(),
                });
            }
        }
        for (id, t) in &mut self.incoming {
            if &t.peer == peer && !matches!(t.state, RecvState::Finished | RecvState::Interrupted) {
                t.state = RecvState::Interrupted;
                requeue_outstanding(t);
                t.meta_pending = None;
                events.push(TransferEvent::Interrupted { id: id_hex(id), reason: "the connection to the sender was lost; verified parts are kept and it resumes when they are back".into() });
            }
        }
        for e in events {
            self.event(e);
        }
    }

    /// The data channel to `peer` is open (again): offers it had not
    /// finished are made again, and the receiver resumes them.
    pub fn peer_ready(&mut self, peer: &PeerId) {
        let frames: Vec<Frame> = self
            .outgoing
            .iter_mut()
            .filter(|(_, t)| &t.peer == peer && t.state == SendState::Interrupted)
            .map(|(id, t)| {
                t.state = SendState::Offered;
                offer_frame(id, t)
            })
            .collect();
        for f in frames {
            self.send(peer, &f);
        }
    }

    /// When [`TransferEngine::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.incoming
            .values()
            .filter(|t| !t.outstanding.is_empty() || t.meta_pending.is_some())
            .map(|t| t.last_activity + self.config.request_timeout)
            .min()
    }

    /// Re-requests what went unanswered; gives up after repeated stalls.
    pub fn handle_timeout(&mut self, now: Millis) {
        let due: Vec<TransferId> = self
            .incoming
            .iter()
            .filter(|(_, t)| {
                (!t.outstanding.is_empty() || t.meta_pending.is_some())
                    && now >= t.last_activity + self.config.request_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.incoming.get_mut(&id) else {
                continue;
            };
            t.stalls += 1;
            t.last_activity = now;
            if t.stalls > self.config.max_stalls {
                t.state = RecvState::Interrupted;
                requeue_outstanding(t);
                t.meta_pending = None;
                self.event(TransferEvent::Interrupted { id: id_hex(&id), reason: "the sender stopped answering; verified parts are kept and it resumes when they offer again".into() });
                continue;
            }
            requeue_outstanding(t);
            t.meta_pending = None;
            self.advance_incoming(&id, now);
        }
    }

    /// A binary frame arrived from `peer`.
    pub fn handle_frame(
        &mut self,
        peer: &PeerId,
        bytes: &[u8],
        now: Millis,
    ) -> Result<(), super::frame::FrameError> {
        let frame = Frame::decode(bytes)?;
        let id = *frame.id();
        // Frames only count for transfers with the peer that owns them.
        let ours = self.outgoing.get(&id).is_some_and(|t| &t.peer == peer);
        let theirs = self.incoming.get(&id).is_some_and(|t| &t.peer == peer);
        match frame {
            Frame::Offer {
                chunk_size,
                file_count,
                total_bytes,
                manifest_len,
                manifest_hash,
                ..
            } => {
                self.on_offer(
                    peer,
                    id,
                    chunk_size,
                    file_count,
                    total_bytes,
                    manifest_len,
                    manifest_hash,
                    now,
                );
            }
            Frame::Accept { .. } if ours => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && t.state == SendState::Offered
                {
                    t.state = SendState::Active;
                    t.meter = Meter::new(now);
                    t.meter.last_bytes = t.sent_bytes;
                    self.event(TransferEvent::Accepted { id: id_hex(&id) });
                }
            }
            Frame::Decline { reason, .. } if ours => {
                if let Some(t) = self.outgoing.get_mut(&id) {
                    t.state = SendState::Finished;
                    self.event(TransferEvent::Declined {
                        id: id_hex(&id),
                        reason,
                    });
                }
            }
            Frame::Cancel { reason, .. } if ours || theirs => {
                let live = if ours {
                    self.outgoing.get_mut(&id).is_some_and(|t| {
                        std::mem::replace(&mut t.state, SendState::Finished) != SendState::Finished
                    })
                } else {
                    self.incoming.get_mut(&id).is_some_and(|t| {
                        std::mem::replace(&mut t.state, RecvState::Finished) != RecvState::Finished
                    })
                };
                if live {
                    self.event(TransferEvent::Cancelled {
                        id: id_hex(&id),
                        by_peer: true,
                        reason,
                    });
                }
            }
            Frame::MetaRequest {
                meta, offset, len, ..
            } if ours => self.on_meta_request(peer, id, meta, offset, len),
            Frame::Request { chunks, .. } if ours => self.on_request(id, chunks),
            Frame::Done { .. } if ours => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && t.state != SendState::Finished
                {
                    t.state = SendState::Finished;
                    let done = t.total;
                    let e = t
                        .meter
                        .progress(&id, done, done, t.sent_bytes, now, 0, true);
                    self.out.extend(e.map(TransferOutput::Event));
                    self.event(TransferEvent::Completed { id: id_hex(&id) });
                }
            }
            Frame::MetaData {
                meta, offset, data, ..
            } if theirs => self.on_meta_data(id, meta, offset, data, now),
            Frame::Chunk {
                file, chunk, data, ..
            } if theirs => self.on_chunk(id, file, chunk, data, now),
            // Frames for transfers we do not have with this peer are ignored.
            _ => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_offer(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        chunk_size: u32,
        file_count: u32,
        total: u64,
        manifest_len: u32,
        manifest_hash: [u8; 32],
        now: Millis,
    ) {
        if let Some(t) = self.incoming.get_mut(&id) {
            // The sender offers again after an interruption: resume.
            let same =
                &t.peer == peer && t.manifest_hash == manifest_hash && t.chunk_size == chunk_size;
            if same && t.state == RecvState::Interrupted {
                t.stalls = 0;
                t.last_activity = now;
                t.meter = Meter::new(now);
                t.meter.last_bytes = t.done_bytes;
                if t.files.is_empty() {
                    // Interrupted while fetching the file list: start over.
                    t.manifest_buf.clear();
                    t.state = RecvState::FetchManifest;
                } else if !t.accepted {
                    // The user had not decided yet: ask again.
                    t.state = RecvState::AwaitingDecision;
                    let event = offered_event(&id, t);
                    self.event(event);
                    return;
                } else {
                    t.meta_buf.clear();
                    t.state = RecvState::FetchHashLists;
                    self.send(peer, &Frame::Accept { id });
                }
                self.advance_incoming(&id, now);
            }
            return;
        }
        if self.outgoing.contains_key(&id) {
            return;
        }
        let reject = |reason: &str| TransferEvent::OfferRejected {
            id: id_hex(&id),
            peer: peer.clone(),
            reason: reason.to_owned(),
        };
        let problem = if !valid_chunk_size(chunk_size, self.config.max_message) {
            Some("the sender's chunk size does not fit this connection")
        } else if file_count == 0 || file_count as usize > manifest::MAX_FILES {
            Some("the offer lists an impossible number of files")
        } else if total > manifest::MAX_TOTAL_SIZE {
            Some("the offer's total size is impossibly large")
        } else if manifest_len as usize > MAX_MANIFEST_BYTES || manifest_len < 4 {
            Some("the offer's file list is impossibly large")
        } else {
            None
        };
        if let Some(reason) = problem {
            self.event(reject(reason));
            self.send(
                peer,
                &Frame::Decline {
                    id,
                    reason: reason.to_owned(),
                },
            );
            return;
        }
        self.incoming.insert(
            id,
            Incoming {
                peer: peer.clone(),
                chunk_size,
                file_count,
                total,
                manifest_len,
                manifest_hash,
                manifest_buf: Vec::new(),
                files: Vec::new(),
                cvs: Vec::new(),
                meta_buf: Vec::new(),
                meta_pending: None,
                hash_list_next: 0,
                have: Vec::new(),
                next_chunk: Vec::new(),
                next_file: 0,
                retry: VecDeque::new(),
                outstanding: HashSet::new(),
                writing: HashSet::new(),
                done_bytes: 0,
                verified_files: 0,
                bad_chunks: 0,
                unexpected_chunks: 0,
                wire_bytes: 0,
                accepted: false,
                last_activity: now,
                stalls: 0,
                state: RecvState::FetchManifest,
                meter: Meter::new(now),
            },
        );
        self.advance_incoming(&id, now);
    }

    fn on_meta_request(
        &mut self,
        peer: &PeerId,
        id: TransferId,
        meta: Meta,
        offset: u32,
        len: u32,
    ) {
        let page = self
            .config
            .meta_page
            .min((self.config.max_message - 64) as u32);
        let Some(t) = self.outgoing.get(&id) else {
            return;
        };
        if t.state == SendState::Finished {
            return;
        }
        let data: Vec<u8> = match meta {
            Meta::Manifest => slice(&t.manifest, offset, len.min(page)),
            Meta::HashList(f) => match t.files.get(f as usize) {
                Some(file) => {
                    let start = (offset / 32) as usize;
                    let count = (len.min(page) / 32) as usize;
                    let end = start.saturating_add(count).min(file.digest.cvs.len());
                    file.digest
                        .cvs
                        .get(start..end)
                        .map(|cvs| cvs.concat())
                        .unwrap_or_default()
                }
                None => Vec::new(),
            },
        };
        self.send(
            peer,
            &Frame::MetaData {
                id,
                meta,
                offset,
                data,
            },
        );
    }

    fn on_request(&mut self, id: TransferId, chunks: Vec<(u32, u64)>) {
        let cap = self.config.window * 4;
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        if t.state == SendState::Offered {
            // An Accept can be lost to a reconnect; requests imply it.
            t.state = SendState::Active;
        }
        if t.state != SendState::Active {
            return;
        }
        for (file, chunk) in chunks {
            let Some(f) = t.files.get(file as usize) else {
                continue;
            };
            if chunk >= tree::chunk_count(f.size, t.chunk_size) || t.queued_set.len() >= cap {
                continue;
            }
            if t.queued_set.insert((file, chunk)) {
                t.queued.push_back((file, chunk));
            }
        }
        self.pump_reads(&id);
    }

    fn pump_reads(&mut self, id: &TransferId) {
        let window = self.config.window;
        let Some(t) = self.outgoing.get_mut(id) else {
            return;
        };
        while t.reading.len() < window {
            let Some((file, chunk)) = t.queued.pop_front() else {
                break;
            };
            t.queued_set.remove(&(file, chunk));
            if !t.reading.insert((file, chunk)) {
                continue;
            }
            // Consecutive requests of one file become one read: each read
            // costs a round trip through the browser, whatever its size.
            let size = t.files[file as usize].size;
            let mut count = 1u64;
            while count < self.config.read_coalesce
                && t.reading.len() < window
                && t.queued.front() == Some(&(file, chunk + count))
            {
                t.queued.pop_front();
                t.queued_set.remove(&(file, chunk + count));
                t.reading.insert((file, chunk + count));
                count += 1;
            }
            let offset = chunk * u64::from(t.chunk_size);
            let end = ((chunk + count) * u64::from(t.chunk_size)).min(size);
            self.out.push_back(TransferOutput::ReadChunk {
                id: *id,
                file,
                chunk,
                offset,
                len: (end - offset) as u32,
            });
        }
    }

    /// The driver read what a [`TransferOutput::ReadChunk`] asked for: one
    /// or more consecutive chunks starting at `chunk`.
    pub fn chunk_read(
        &mut self,
        id: &TransferId,
        file: u32,
        chunk: u64,
        data: Vec<u8>,
        now: Millis,
    ) {
        let interval = self.config.progress_interval;
        let Some(t) = self.outgoing.get_mut(id) else {
            return;
        };
        let cs = t.chunk_size as usize;
        let mut frames = Vec::new();
        for (i, piece) in data.chunks(cs.max(1)).enumerate() {
            let c = chunk + i as u64;
            if !t.reading.remove(&(file, c)) || t.state != SendState::Active {
                continue;
            }
            t.sent_bytes += piece.len() as u64;
            frames.push(Frame::Chunk {
                id: *id,
                file,
                chunk: c,
                data: piece.to_vec(),
            });
        }
        if data.is_empty() {
            t.reading.remove(&(file, chunk));
        }
        let (sent, total) = (t.sent_bytes.min(t.total), t.total);
        let wire = t.sent_bytes;
        let progress = t
            .meter
            .progress(id, sent, total, wire, now, interval, false);
        let peer = t.peer.clone();
        for f in &frames {
            self.send(&peer, f);
        }
        self.out.extend(progress.map(TransferOutput::Event));
        self.pump_reads(id);
    }

    /// The driver could not read a file we offered (it changed or vanished).
    pub fn read_failed(&mut self, id: &TransferId, reason: &str) {
        if self
            .outgoing
            .get(id)
            .is_some_and(|t| t.state != SendState::Finished)
        {
            let _ = self.cancel(id, &format!("the sender could not read the file: {reason}"));
            self.event(TransferEvent::Failed {
                id: id_hex(id),
                reason: format!("cannot read the file: {reason}. Offer it again."),
            });
        }
    }

    fn on_meta_data(
        &mut self,
        id: TransferId,
        meta: Meta,
        offset: u32,
        data: Vec<u8>,
        now: Millis,
    ) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        let Some((want_meta, want_offset)) = t.meta_pending else {
            return;
        };
        if want_meta != meta || want_offset != offset {
            return;
        }
        t.meta_pending = None;
        t.last_activity = now;
        t.stalls = 0;
        match meta {
            Meta::Manifest if t.state == RecvState::FetchManifest => {
                let room = t.manifest_len as usize - t.manifest_buf.len();
                if data.is_empty() || data.len() > room {
                    self.fail(&id, "the sender's file list does not match its offer");
                    return;
                }
                t.manifest_buf.extend_from_slice(&data);
                if t.manifest_buf.len() == t.manifest_len as usize {
                    self.manifest_complete(id);
                }
            }
            Meta::HashList(f) if t.state == RecvState::FetchHashLists && f == t.hash_list_next => {
                let file = &t.files[f as usize];
                let need = tree::chunk_count(file.size, t.chunk_size) as usize * 32;
                if data.is_empty()
                    || !data.len().is_multiple_of(32)
                    || t.meta_buf.len() + data.len() > need
                {
                    self.fail(&id, "the sender's chunk hashes do not match its offer");
                    return;
                }
                t.meta_buf.extend_from_slice(&data);
                if t.meta_buf.len() == need {
                    let cvs: Vec<ChainingValue> = t
                        .meta_buf
                        .chunks_exact(32)
                        .map(|c| {
                            let mut cv = [0u8; 32];
                            cv.copy_from_slice(c);
                            cv
                        })
                        .collect();
                    t.meta_buf.clear();
                    if tree::root_from_cvs(&cvs, file.size, t.chunk_size).map(|h| *h.as_bytes())
                        != Some(file.hash)
                    {
                        self.fail(
                            &id,
                            "the sender's chunk hashes do not add up to the file's hash",
                        );
                        return;
                    }
                    t.cvs[f as usize] = cvs;
                    t.hash_list_next += 1;
                }
            }
            _ => return,
        }
        self.advance_incoming(&id, now);
    }

    fn manifest_complete(&mut self, id: TransferId) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        let bytes = std::mem::take(&mut t.manifest_buf);
        let peer = t.peer.clone();
        let reason = if *blake3::hash(&bytes).as_bytes() != t.manifest_hash {
            Some("the file list does not match its hash".to_owned())
        } else {
            match manifest::decode(&bytes) {
                // Hash-list offsets are 32-bit: 2^27 chunks (16 TiB at 128 KiB).
                Ok(files)
                    if files.iter().any(|f| {
                        tree::chunk_count(f.size, t.chunk_size) * 32 > u64::from(u32::MAX)
                    }) =>
                {
                    Some(format!(
                        "a file is too large for chunks of {} bytes",
                        t.chunk_size
                    ))
                }
                Ok(files)
                    if files.len() == t.file_count as usize
                        && files.iter().map(|f| f.size).sum::<u64>() == t.total =>
                {
                    t.have = files
                        .iter()
                        .map(|f| HaveMap::new(tree::chunk_count(f.size, t.chunk_size)))
                        .collect();
                    t.cvs = vec![Vec::new(); files.len()];
                    t.next_chunk = vec![0; files.len()];
                    t.files = files;
                    t.state = RecvState::AwaitingDecision;
                    None
                }
                Ok(_) => Some("the file list does not match the offer".to_owned()),
                Err(e) => Some(e.to_string()),
            }
        };
        if let Some(reason) = reason {
            t.state = RecvState::Finished;
            self.event(TransferEvent::OfferRejected {
                id: id_hex(&id),
                peer: peer.clone(),
                reason: reason.clone(),
            });
            self.send(
                &peer,
                &Frame::Decline {
                    id,
                    reason: format!("refused: {reason}"),
                },
            );
            return;
        }
        let event = offered_event(&id, t);
        self.event(event);
    }

    /// Moves a receiving transfer forward: next metadata page, or more chunk requests.
    fn advance_incoming(&mut self, id: &TransferId, now: Millis) {
        let page = self.config.meta_page;
        let window = self.config.window;
        let Some(t) = self.incoming.get_mut(id) else {
            return;
        };
        match t.state {
            RecvState::FetchManifest if t.meta_pending.is_none() => {
                let offset = t.manifest_buf.len() as u32;
                let len = page.min(t.manifest_len - offset);
                t.meta_pending = Some((Meta::Manifest, offset));
                t.last_activity = now;
                let peer = t.peer.clone();
                self.send(
                    &peer,
                    &Frame::MetaRequest {
                        id: *id,
                        meta: Meta::Manifest,
                        offset,
                        len,
                    },
                );
            }
            RecvState::FetchHashLists => {
                while (t.hash_list_next as usize) < t.files.len() {
                    let f = &t.files[t.hash_list_next as usize];
                    let complete = t.have[t.hash_list_next as usize].count()
                        == tree::chunk_count(f.size, t.chunk_size);
                    if tree::is_single_chunk(f.size, t.chunk_size) || complete {
                        t.hash_list_next += 1;
                    } else {
                        break;
                    }
                }
                if (t.hash_list_next as usize) < t.files.len() {
                    if t.meta_pending.is_none() {
                        let f = t.hash_list_next;
                        let offset = t.meta_buf.len() as u32;
                        let need =
                            tree::chunk_count(t.files[f as usize].size, t.chunk_size) as u32 * 32;
                        let len = (page / 32 * 32).min(need - offset);
                        t.meta_pending = Some((Meta::HashList(f), offset));
                        t.last_activity = now;
                        let peer = t.peer.clone();
                        self.send(
                            &peer,
                            &Frame::MetaRequest {
                                id: *id,
                                meta: Meta::HashList(f),
                                offset,
                                len,
                            },
                        );
                    }
                    return;
                }
                t.state = RecvState::Active;
                self.advance_incoming(id, now);
            }
            RecvState::Active => {
                let mut batch = Vec::new();
                let mut empty_files = Vec::new();
                // Ask in runs of `request_batch` chunks while others are in
                // flight: consecutive requests let the sender read them in
                // one go, and each read costs a trip through the browser.
                let in_flight = t.outstanding.len() + t.writing.len();
                let batch_min = self.config.request_batch.clamp(1, window);
                let defer = in_flight > 0 && window.saturating_sub(in_flight) < batch_min;
                while !defer && t.outstanding.len() + t.writing.len() + batch.len() < window {
                    let next = if let Some(c) = t.retry.pop_front() {
                        Some(c)
                    } else {
                        loop {
                            let Some(f) = t.files.get(t.next_file as usize) else {
                                break None;
                            };
                            let n = tree::chunk_count(f.size, t.chunk_size);
                            let c = &mut t.next_chunk[t.next_file as usize];
                            while *c < n && t.have[t.next_file as usize].has(*c) {
                                *c += 1;
                            }
                            if *c < n {
                                let pick = (t.next_file, *c);
                                *c += 1;
                                break Some(pick);
                            }
                            t.next_file += 1;
                        }
                    };
                    let Some((file, chunk)) = next else { break };
                    if t.have[file as usize].has(chunk)
                        || t.outstanding.contains(&(file, chunk))
                        || t.writing.contains(&(file, chunk))
                    {
                        continue;
                    }
                    if t.files[file as usize].size == 0 {
                        // Nothing to fetch: create the empty file.
                        t.writing.insert((file, 0));
                        empty_files.push(file);
                        continue;
                    }
                    batch.push((file, chunk));
                }
                for file in empty_files {
                    self.out.push_back(TransferOutput::WriteChunk {
                        id: *id,
                        file,
                        chunk: 0,
                        offset: 0,
                        data: Vec::new(),
                    });
                }
                let Some(t) = self.incoming.get_mut(id) else {
                    return;
                };
                if batch.is_empty() && t.outstanding.is_empty() && t.writing.is_empty() {
                    // Everything was already here (a resume of a finished download).
                    let all = t
                        .have
                        .iter()
                        .zip(&t.files)
                        .all(|(h, f)| h.count() == tree::chunk_count(f.size, t.chunk_size));
                    if all {
                        t.state = RecvState::Finished;
                        let peer = t.peer.clone();
                        self.send(&peer, &Frame::Done { id: *id });
                        self.event(TransferEvent::Completed { id: id_hex(id) });
                    }
                    return;
                }
                if !batch.is_empty() {
                    if t.outstanding.is_empty() {
                        t.last_activity = now;
                    }
                    t.outstanding.extend(batch.iter().copied());
                    let peer = t.peer.clone();
                    for part in batch.chunks(MAX_REQUESTS_PER_FRAME) {
                        self.send(
                            &peer,
                            &Frame::Request {
                                id: *id,
                                chunks: part.to_vec(),
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn on_chunk(&mut self, id: TransferId, file: u32, chunk: u64, data: Vec<u8>, now: Millis) {
        let max_bad = self.config.max_bad_chunks;
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        if t.state != RecvState::Active || !t.outstanding.remove(&(file, chunk)) {
            // Unrequested or duplicate: never written.
            t.unexpected_chunks += 1;
            return;
        }
        t.last_activity = now;
        t.stalls = 0;
        let f = &t.files[file as usize];
        let ok = data.len() as u64 == tree::chunk_len(f.size, t.chunk_size, chunk)
            && if tree::is_single_chunk(f.size, t.chunk_size) {
                *blake3::hash(&data).as_bytes() == f.hash
            } else {
                t.cvs[file as usize].get(chunk as usize)
                    == Some(&tree::chunk_cv(&data, chunk, t.chunk_size))
            };
        if !ok {
            t.bad_chunks += 1;
            if t.bad_chunks > max_bad {
                self.fail(
                    &id,
                    "the sender keeps sending corrupted data; verified parts are kept",
                );
                return;
            }
            t.retry.push_back((file, chunk));
            self.advance_incoming(&id, now);
            return;
        }
        t.writing.insert((file, chunk));
        self.out.push_back(TransferOutput::WriteChunk {
            id,
            file,
            chunk,
            offset: chunk * u64::from(t.chunk_size),
            data,
        });
        self.advance_incoming(&id, now);
    }

    /// The driver stored a verified chunk.
    pub fn chunk_written(&mut self, id: &TransferId, file: u32, chunk: u64, now: Millis) {
        let interval = self.config.progress_interval;
        let Some(t) = self.incoming.get_mut(id) else {
            return;
        };
        if !t.writing.remove(&(file, chunk)) {
            return;
        }
        let f = &t.files[file as usize];
        if t.have[file as usize].has(chunk) {
            return;
        }
        t.have[file as usize].set(chunk);
        t.done_bytes += tree::chunk_len(f.size, t.chunk_size, chunk);
        let mut events = Vec::new();
        if t.have[file as usize].count() == tree::chunk_count(f.size, t.chunk_size) {
            t.verified_files += 1;
            events.push(TransferEvent::FileVerified {
                id: id_hex(id),
                file,
                path: f.path.clone(),
                hash: blake3::Hash::from_bytes(f.hash).to_hex().to_string(),
            });
        }
        let all_done = t
            .have
            .iter()
            .zip(&t.files)
            .all(|(h, f)| h.count() == tree::chunk_count(f.size, t.chunk_size));
        let (done, total, wire) = (t.done_bytes, t.total, t.wire_bytes);
        if let Some(p) = t
            .meter
            .progress(id, done, total, wire, now, interval, all_done)
        {
            events.push(p);
        }
        let peer = t.peer.clone();
        if all_done && t.state == RecvState::Active {
            t.state = RecvState::Finished;
            events.push(TransferEvent::Completed { id: id_hex(id) });
            self.send(&peer, &Frame::Done { id: *id });
        }
        self.out
            .extend(events.into_iter().map(TransferOutput::Event));
        self.advance_incoming(id, now);
    }

    /// The driver could not store a chunk (disk full, permission). The
    /// transfer stops; verified chunks stay on record for a later resume.
    pub fn write_failed(&mut self, id: &TransferId, reason: &str) {
        self.fail(id, &format!("cannot save the file: {reason}. Free some space and accept the offer again to resume"));
    }

    fn fail(&mut self, id: &TransferId, reason: &str) {
        let peer = if let Some(t) = self.incoming.get_mut(id) {
            if t.state == RecvState::Finished {
                return;
            }
            t.state = RecvState::Finished;
            t.outstanding.clear();
            t.peer.clone()
        } else {
            return;
        };
        self.send(
            &peer,
            &Frame::Cancel {
                id: *id,
                reason: format!("the receiver stopped: {reason}"),
            },
        );
        self.event(TransferEvent::Failed {
            id: id_hex(id),
            reason: reason.to_owned(),
        });
    }

    /// Chunks the receiver dropped because it had not asked for them.
    pub fn unexpected_chunks(&self, id: &TransferId) -> Option<u64> {
        self.incoming.get(id).map(|t| t.unexpected_chunks)
    }
}

/// The event that asks the user about an offer whose file list is verified.
fn offered_event(id: &TransferId, t: &Incoming) -> TransferEvent {
    TransferEvent::Offered {
        id: id_hex(id),
        peer: t.peer.clone(),
        files: t
            .files
            .iter()
            .map(|f| OfferedFile {
                path: f.path.clone(),
                size: f.size,
            })
            .collect(),
        total_bytes: t.total,
    }
}

/// Puts unanswered requests back in line, in order, so they are asked again.
fn requeue_outstanding(t: &mut Incoming) {
    let mut again: Vec<(u32, u64)> = t.outstanding.drain().collect();
    again.sort_unstable();
    for c in again.into_iter().rev() {
        t.retry.push_front(c);
    }
}

fn offer_frame(id: &TransferId, o: &Outgoing) -> Frame {
    Frame::Offer {
        id: *id,
        chunk_size: o.chunk_size,
        file_count: o.files.len() as u32,
        total_bytes: o.total,
        manifest_len: o.manifest.len() as u32,
        manifest_hash: *blake3::hash(&o.manifest).as_bytes(),
    }
}

fn slice(bytes: &[u8], offset: u32, len: u32) -> Vec<u8> {
    let start = (offset as usize).min(bytes.len());
    let end = start.saturating_add(len as usize).min(bytes.len());
    bytes[start..end].to_vec()
}
