//! Two in-memory engines on virtual time, with a link that can reorder,
//! corrupt, drop and disconnect, and a receiver "disk".

use std::collections::{BTreeMap, HashMap};

use ferry_protocol::PeerId;
#[cfg(not(target_arch = "wasm32"))]
use proptest::prelude::*;

use super::frame::{Frame, Meta};
use super::tree::FileHasher;
use super::*;
use crate::Millis;
use crate::tests::Rng;

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.max(1));
    (0..len).map(|_| r.next() as u8).collect()
}

fn source(path: &str, bytes: &[u8], chunk_size: u32) -> SourceFile {
    let mut h = FileHasher::new(bytes.len() as u64, chunk_size);
    if bytes.is_empty() {
        h.update(&[]);
    }
    for c in bytes.chunks(chunk_size as usize) {
        assert!(h.update(c));
    }
    SourceFile {
        path: path.into(),
        size: bytes.len() as u64,
        digest: h.finish().unwrap(),
    }
}

fn config(chunk_size: u32) -> TransferConfig {
    TransferConfig {
        chunk_size,
        max_message: 64 * 1024,
        window: 8,
        meta_page: 4096,
        request_timeout: 2_000,
        max_stalls: 3,
        max_bad_chunks: 10_000,
        progress_interval: 100,
        read_coalesce: 4,
        request_batch: 2,
    }
}

const ID: TransferId = [42; 16];

struct Net {
    now: Millis,
    rng: Rng,
    s: TransferEngine,
    r: TransferEngine,
    sp: PeerId,
    rp: PeerId,
    src: Vec<Vec<u8>>,
    disk: HashMap<u32, Vec<u8>>,
    /// (deliver at, seq) -> (to receiver?, frame)
    link: BTreeMap<(Millis, u64), (bool, Vec<u8>)>,
    seq: u64,
    connected: bool,
    reorder: bool,
    corrupt: f64,
    drop_to_receiver: bool,
    auto_accept: bool,
    resume: Option<Vec<HaveMap>>,
    chunk_bytes_sent: u64,
    reads: u64,
    s_events: Vec<TransferEvent>,
    r_events: Vec<TransferEvent>,
}

impl Net {
    fn new(files: Vec<(&str, Vec<u8>)>, chunk_size: u32, seed: u64) -> Self {
        let mut net = Self {
            now: 0,
            rng: Rng(seed.max(1)),
            s: TransferEngine::new(config(chunk_size)),
            r: TransferEngine::new(config(chunk_size)),
            sp: PeerId::new("sender").unwrap(),
            rp: PeerId::new("receiver").unwrap(),
            src: files.iter().map(|(_, b)| b.clone()).collect(),
            disk: HashMap::new(),
            link: BTreeMap::new(),
            seq: 0,
            connected: true,
            reorder: false,
            corrupt: 0.0,
            drop_to_receiver: false,
            auto_accept: true,
            resume: None,
            chunk_bytes_sent: 0,
            reads: 0,
            s_events: Vec::new(),
            r_events: Vec::new(),
        };
        let sources = files
            .iter()
            .map(|(p, b)| source(p, b, chunk_size))
            .collect();
        net.s.offer(net.rp.clone(), ID, sources, 0).unwrap();
        net
    }

    fn push(&mut self, to_receiver: bool, mut frame: Vec<u8>) {
        if !self.connected || (to_receiver && self.drop_to_receiver) {
            return;
        }
        if to_receiver && let Ok(Frame::Chunk { data, .. }) = Frame::decode(&frame) {
            self.chunk_bytes_sent += data.len() as u64;
            if !data.is_empty() && self.rng.chance(self.corrupt) {
                let i = frame.len() - 1 - (self.rng.next() as usize % data.len());
                frame[i] ^= 0x5A;
            }
        }
        let delay = if self.reorder {
            1 + self.rng.next() % 20
        } else {
            1
        };
        self.seq += 1;
        self.link
            .insert((self.now + delay, self.seq), (to_receiver, frame));
    }

    fn drain(&mut self) {
        loop {
            let mut progress = false;
            while let Some(o) = self.s.poll_output() {
                progress = true;
                match o {
                    TransferOutput::Send { frame, .. } => self.push(true, frame),
                    TransferOutput::ReadChunk {
                        id,
                        file,
                        chunk,
                        offset,
                        len,
                    } => {
                        self.reads += 1;
                        let b = &self.src[file as usize];
                        let data = b[offset as usize..offset as usize + len as usize].to_vec();
                        self.s.chunk_read(&id, file, chunk, data, self.now);
                    }
                    TransferOutput::Event(e) => self.s_events.push(e),
                    other => panic!("sender asked {other:?}"),
                }
            }
            while let Some(o) = self.r.poll_output() {
                progress = true;
                match o {
                    TransferOutput::Send { frame, .. } => self.push(false, frame),
                    TransferOutput::WriteChunk {
                        id,
                        file,
                        chunk,
                        offset,
                        data,
                    } => {
                        let f = self.disk.entry(file).or_default();
                        let end = offset as usize + data.len();
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[offset as usize..end].copy_from_slice(&data);
                        self.r.chunk_written(&id, file, chunk, self.now);
                    }
                    TransferOutput::Event(e) => {
                        if let TransferEvent::Offered { id, .. } = &e
                            && self.auto_accept
                        {
                            let id = id_from_hex(id).unwrap();
                            let resume = self.resume.take();
                            self.r.accept(&id, resume, self.now).unwrap();
                        }
                        self.r_events.push(e);
                    }
                    other => panic!("receiver asked {other:?}"),
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn step(&mut self) -> bool {
        self.drain();
        let next_link = self.link.keys().next().copied();
        let next_timer = [self.s.poll_timeout(), self.r.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(t) = [next_link.map(|k| k.0), next_timer]
            .into_iter()
            .flatten()
            .min()
        else {
            return false;
        };
        self.now = self.now.max(t);
        if next_link.is_some_and(|k| k.0 == t) {
            let (to_r, frame) = self.link.remove(&next_link.unwrap()).unwrap();
            if to_r {
                self.r.handle_frame(&self.sp, &frame, self.now).unwrap();
            } else {
                self.s.handle_frame(&self.rp, &frame, self.now).unwrap();
            }
        } else {
            self.s.handle_timeout(self.now);
            self.r.handle_timeout(self.now);
        }
        self.drain();
        true
    }

    fn run_until(&mut self, pred: impl Fn(&Self) -> bool, limit: Millis) {
        while !pred(self) && self.now < limit && self.step() {}
    }

    fn completed(&self) -> bool {
        let done = |events: &[TransferEvent]| {
            events
                .iter()
                .any(|e| matches!(e, TransferEvent::Completed { .. }))
        };
        done(&self.r_events) && done(&self.s_events)
    }

    fn assert_received_exactly(&self) {
        assert!(
            self.completed(),
            "receiver events: {:?}",
            self.r_events.last()
        );
        assert!(
            self.s_events
                .iter()
                .any(|e| matches!(e, TransferEvent::Completed { .. }))
        );
        for (i, want) in self.src.iter().enumerate() {
            let got = self
                .disk
                .get(&(i as u32))
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(got == want.as_slice(), "file {i} differs");
            assert!(self.disk.contains_key(&(i as u32)), "file {i} was created");
        }
        let verified = self
            .r_events
            .iter()
            .filter(|e| matches!(e, TransferEvent::FileVerified { .. }))
            .count();
        assert_eq!(verified, self.src.len());
    }

    fn received_fraction(&self) -> f64 {
        let total: usize = self.src.iter().map(Vec::len).sum();
        let have: u64 = self
            .r
            .have_maps(&ID)
            .map_or(0, |h| h.iter().map(HaveMap::count).sum::<u64>());
        have as f64 * 4096.0 / total.max(1) as f64
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.link.clear();
        self.s.peer_lost(&self.rp);
        self.r.peer_lost(&self.sp);
        self.drain();
    }

    fn reconnect(&mut self) {
        self.connected = true;
        self.s.peer_ready(&self.rp);
        self.r.peer_ready(&self.sp);
        self.drain();
    }
}

#[test]
fn mixed_files_arrive_verified() {
    let files = vec![
        ("big.bin", content(1_000_003, 1)),
        ("folder/small.txt", content(17, 2)),
        ("folder/empty", Vec::new()),
        ("folder/deeper/exact", content(8192, 3)),
    ];
    let mut net = Net::new(files, 4096, 9);
    net.run_until(Net::completed, 60_000);
    net.assert_received_exactly();
    let hashes: Vec<&String> = net
        .r_events
        .iter()
        .filter_map(|e| match e {
            TransferEvent::FileVerified { hash, .. } => Some(hash),
            _ => None,
        })
        .collect();
    assert!(hashes.contains(&&blake3::hash(&net.src[0]).to_hex().to_string()));
    assert!(
        net.r_events
            .iter()
            .any(|e| matches!(e, TransferEvent::Progress { rate_bps, .. } if *rate_bps > 0))
    );
    // Nothing was sent twice.
    assert_eq!(
        net.chunk_bytes_sent,
        net.src.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn batched_requests_let_the_sender_read_runs_of_chunks() {
    let data = content(256 * 4096, 11);
    // One chunk per read without batching; runs of four with it.
    for (batch, coalesce, most_reads) in [(1, 1, 256), (4, 4, 256 / 4 + 2)] {
        let mut net = Net::new(vec![("a", data.clone())], 4096, 5);
        for e in [&mut net.s, &mut net.r] {
            *e = TransferEngine::new(TransferConfig {
                request_batch: batch,
                read_coalesce: coalesce,
                ..config(4096)
            });
        }
        let sources = vec![source("a", &data, 4096)];
        net.s.offer(net.rp.clone(), ID, sources, 0).unwrap();
        net.run_until(Net::completed, 60_000);
        net.assert_received_exactly();
        assert!(
            net.reads <= most_reads,
            "batch {batch}: {} reads for 256 chunks",
            net.reads
        );
        assert_eq!(net.chunk_bytes_sent, data.len() as u64);
    }
}

#[test]
fn corrupted_chunks_are_detected_and_fetched_again() {
    let mut net = Net::new(
        vec![("a", content(300_000, 4)), ("b", content(3000, 5))],
        4096,
        3,
    );
    net.corrupt = 0.2;
    net.run_until(Net::completed, 120_000);
    net.assert_received_exactly();
    assert!(net.chunk_bytes_sent > 303_000, "some chunks were re-sent");
}

#[test]
fn reordered_frames_still_complete() {
    let mut net = Net::new(
        vec![("a", content(200_000, 6)), ("b", content(5000, 7))],
        4096,
        4,
    );
    net.reorder = true;
    net.run_until(Net::completed, 60_000);
    net.assert_received_exactly();
}

#[test]
fn a_lost_channel_resumes_without_refetching() {
    let size = 400_000;
    let mut net = Net::new(vec![("a", content(size, 8))], 4096, 5);
    net.run_until(|n| n.received_fraction() > 0.5, 60_000);
    net.disconnect();
    assert!(
        net.r_events
            .iter()
            .any(|e| matches!(e, TransferEvent::Interrupted { .. }))
    );
    assert!(
        net.s_events
            .iter()
            .any(|e| matches!(e, TransferEvent::Interrupted { .. }))
    );
    net.now += 5_000;
    net.reconnect();
    net.run_until(Net::completed, 120_000);
    net.assert_received_exactly();
    let window = 8 * 4096;
    assert!(
        net.chunk_bytes_sent <= size as u64 + window,
        "sent {} for {size}",
        net.chunk_bytes_sent
    );
}

#[test]
fn a_reloaded_receiver_resumes_from_its_have_map() {
    let size = 400_000;
    let data = content(size, 10);
    let mut net = Net::new(vec![("a", data.clone())], 4096, 6);
    net.run_until(|n| n.received_fraction() > 0.5, 60_000);
    // The page reloads: the engine is gone, the disk and the have-map stay.
    let saved: Vec<HaveMap> = net.r.have_maps(&ID).unwrap().to_vec();
    let stored = HaveMap::from_words(saved[0].words().to_vec(), 98).unwrap();
    net.disconnect();
    net.r = TransferEngine::new(config(4096));
    net.resume = Some(vec![stored]);
    net.r_events.clear();
    net.reconnect();
    net.run_until(Net::completed, 120_000);
    net.assert_received_exactly();
    assert!(net.chunk_bytes_sent <= size as u64 + 8 * 4096);
}

#[test]
fn cancel_from_either_side_stops_both() {
    for receiver_cancels in [false, true] {
        let mut net = Net::new(vec![("a", content(500_000, 11))], 4096, 7);
        net.run_until(|n| n.received_fraction() > 0.3, 60_000);
        assert!(net.r.is_receiving(&ID), "accepted and under way");
        if receiver_cancels {
            net.r.cancel(&ID, "changed my mind").unwrap();
        } else {
            net.s.cancel(&ID, "wrong file").unwrap();
        }
        net.run_until(|_| false, net.now + 10_000);
        let cancelled = |events: &[TransferEvent], by: bool| {
            events
                .iter()
                .any(|e| matches!(e, TransferEvent::Cancelled { by_peer, .. } if *by_peer == by))
        };
        assert!(cancelled(&net.s_events, receiver_cancels));
        assert!(cancelled(&net.r_events, !receiver_cancels));
        assert!(!net.r.is_receiving(&ID), "nothing left to resume");
        assert!(!net.completed());
        assert!(
            !net.r_events
                .iter()
                .any(|e| matches!(e, TransferEvent::FileVerified { .. }))
        );
        assert_eq!(net.r.poll_timeout(), None);
    }
}

#[test]
fn ten_thousand_small_files() {
    let files: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| {
            (
                format!("dir{}/file-{i}.txt", i % 17),
                content(i % 300, i as u64 + 1),
            )
        })
        .collect();
    let mut net = Net::new(
        files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect(),
        4096,
        8,
    );
    net.run_until(Net::completed, 600_000);
    net.assert_received_exactly();
}

#[test]
fn unrequested_and_duplicate_chunks_are_never_written() {
    let mut net = Net::new(vec![("a", content(100_000, 12))], 4096, 9);
    net.run_until(|n| n.received_fraction() > 0.2, 60_000);
    let before = net.r.have_maps(&ID).unwrap()[0].count();
    // A far-ahead chunk nobody asked for, and a copy of chunk 0.
    for chunk in [20u64, 0] {
        let f = Frame::Chunk {
            id: ID,
            file: 0,
            chunk,
            data: net.src[0][chunk as usize * 4096..(chunk as usize + 1) * 4096].to_vec(),
        };
        net.r
            .handle_frame(&net.sp.clone(), &f.encode(), net.now)
            .unwrap();
    }
    assert!(
        !std::iter::from_fn(|| net.r.poll_output())
            .any(|o| matches!(o, TransferOutput::WriteChunk { .. }))
    );
    assert_eq!(net.r.unexpected_chunks(&ID), Some(2));
    assert_eq!(net.r.have_maps(&ID).unwrap()[0].count(), before);
}

#[test]
fn a_silent_sender_leaves_a_resumable_partial() {
    let mut net = Net::new(vec![("a", content(200_000, 13))], 4096, 10);
    net.run_until(|n| n.received_fraction() > 0.3, 60_000);
    net.drop_to_receiver = true;
    net.run_until(
        |n| {
            n.r_events
                .iter()
                .any(|e| matches!(e, TransferEvent::Interrupted { .. }))
        },
        120_000,
    );
    assert!(
        net.r_events
            .iter()
            .any(|e| matches!(e, TransferEvent::Interrupted { .. }))
    );
    assert!(!net.completed());
    assert!(
        net.r.have_maps(&ID).unwrap()[0].count() > 0,
        "verified chunks are kept"
    );
    assert_eq!(net.r.poll_timeout(), None);
    // The sender comes back and offers again: it resumes.
    net.drop_to_receiver = false;
    net.disconnect();
    net.reconnect();
    net.run_until(Net::completed, 240_000);
    net.assert_received_exactly();
}

#[test]
fn hostile_manifests_are_rejected_before_anything_is_written() {
    let mut r = TransferEngine::new(config(4096));
    let sender = PeerId::new("evil").unwrap();
    let entries = vec![manifest::FileEntry {
        path: "../../.bashrc".into(),
        size: 10,
        hash: [0; 32],
    }];
    let bytes = manifest::encode(&entries);
    let offer = Frame::Offer {
        id: ID,
        chunk_size: 4096,
        file_count: 1,
        total_bytes: 10,
        manifest_len: bytes.len() as u32,
        manifest_hash: *blake3::hash(&bytes).as_bytes(),
    };
    r.handle_frame(&sender, &offer.encode(), 0).unwrap();
    let _ = std::iter::from_fn(|| r.poll_output()).count();
    r.handle_frame(
        &sender,
        &Frame::MetaData {
            id: ID,
            meta: Meta::Manifest,
            offset: 0,
            data: bytes,
        }
        .encode(),
        1,
    )
    .unwrap();
    let outs: Vec<TransferOutput> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o, TransferOutput::Event(TransferEvent::OfferRejected { reason, .. }) if reason.contains("unsafe file name"))));
    assert!(outs.iter().any(|o| matches!(o, TransferOutput::Send { frame, .. } if matches!(Frame::decode(frame), Ok(Frame::Decline { .. })))));
    assert!(!outs.iter().any(|o| matches!(
        o,
        TransferOutput::WriteChunk { .. } | TransferOutput::Event(TransferEvent::Offered { .. })
    )));
    assert_eq!(
        r.accept(&ID, None, 2),
        Err(TransferError::State("not waiting for a decision"))
    );
    // Absurd offers are refused from the header alone.
    let absurd = Frame::Offer {
        id: [1; 16],
        chunk_size: 4096,
        file_count: 1,
        total_bytes: u64::MAX,
        manifest_len: 10,
        manifest_hash: [0; 32],
    };
    r.handle_frame(&sender, &absurd.encode(), 3).unwrap();
    assert!(std::iter::from_fn(|| r.poll_output()).any(|o| matches!(
        o,
        TransferOutput::Event(TransferEvent::OfferRejected { .. })
    )));
    // A manifest that does not match its hash is refused.
    let bytes = manifest::encode(&[manifest::FileEntry {
        path: "ok".into(),
        size: 1,
        hash: [0; 32],
    }]);
    let offer = Frame::Offer {
        id: [2; 16],
        chunk_size: 4096,
        file_count: 1,
        total_bytes: 1,
        manifest_len: bytes.len() as u32,
        manifest_hash: [9; 32],
    };
    r.handle_frame(&sender, &offer.encode(), 4).unwrap();
    r.handle_frame(
        &sender,
        &Frame::MetaData {
            id: [2; 16],
            meta: Meta::Manifest,
            offset: 0,
            data: bytes,
        }
        .encode(),
        5,
    )
    .unwrap();
    assert!(std::iter::from_fn(|| r.poll_output()).any(|o| matches!(o, TransferOutput::Event(TransferEvent::OfferRejected { reason, .. }) if reason.contains("hash"))));
    // Garbage frames are errors, not panics.
    assert!(r.handle_frame(&sender, &[1, 2, 3], 6).is_err());
}

#[test]
fn a_declined_offer_tells_the_sender() {
    let mut net = Net::new(vec![("a", content(10, 14))], 4096, 11);
    net.auto_accept = false;
    net.run_until(
        |n| {
            n.r_events
                .iter()
                .any(|e| matches!(e, TransferEvent::Offered { .. }))
        },
        10_000,
    );
    net.r.decline(&ID, "not now").unwrap();
    net.run_until(|_| false, net.now + 1_000);
    assert!(
        net.s_events
            .iter()
            .any(|e| matches!(e, TransferEvent::Declined { reason, .. } if reason == "not now"))
    );
}

#[test]
fn have_maps_round_trip_and_reject_garbage() {
    let mut h = HaveMap::new(70);
    h.set(0);
    h.set(69);
    let back = HaveMap::from_words(h.words().to_vec(), 70).unwrap();
    assert!(back.has(0) && back.has(69) && !back.has(1));
    assert_eq!(back.count(), 2);
    assert!(HaveMap::from_words(vec![0], 70).is_none());
    assert!(HaveMap::from_words(vec![0, u64::MAX], 70).is_none());
    assert_eq!(id_from_hex(&id_hex(&ID)), Some(ID));
    assert_eq!(id_from_hex("zz"), None);
}

#[cfg(not(target_arch = "wasm32"))]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_file_sets_arrive_intact(
        sizes in proptest::collection::vec(0usize..40_000, 1..12),
        chunk_pow in 10u32..14,
        corrupt in 0.0f64..0.15,
        reorder: bool,
        seed in 1u64..u64::MAX,
    ) {
        let files: Vec<(String, Vec<u8>)> = sizes.iter().enumerate().map(|(i, &n)| (format!("d/{i}.bin"), content(n, seed ^ i as u64))).collect();
        let mut net = Net::new(files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect(), 1 << chunk_pow, seed);
        net.corrupt = corrupt;
        net.reorder = reorder;
        net.run_until(Net::completed, 600_000);
        net.assert_received_exactly();
    }
}
