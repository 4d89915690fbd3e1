//! The browser's file I/O for transfers: reading offered `File`s in slices,
//! writing received chunks to the origin private file system through a
//! worker, and saving have-maps so a reload can resume.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ferry_core::transfer::tree::{self, FileDigest, FileHasher};
use ferry_core::transfer::{HaveMap, TransferId, id_hex};
use js_sys::{Array, Object, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{File, MessageEvent, Worker};

use crate::Error;

/// Reads `len` bytes at `offset` of a file without loading the rest.
pub(crate) async fn read_slice(file: &File, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
    PendingRead::start(file, offset, len)?.bytes().await
}

/// A slice read the browser has started: it goes on while this thread
/// does other work, until [`PendingRead::bytes`] takes the result.
struct PendingRead {
    read: JsFuture,
    len: u32,
    name: String,
}

impl PendingRead {
    fn start(file: &File, offset: u64, len: u32) -> Result<Self, Error> {
        let blob = file.slice_with_f64_and_f64(offset as f64, (offset + u64::from(len)) as f64)?;
        Ok(Self {
            read: JsFuture::from(blob.array_buffer()),
            len,
            name: file.name(),
        })
    }

    async fn bytes(self) -> Result<Vec<u8>, Error> {
        let buf = self.read.await?;
        let bytes = Uint8Array::new(&buf).to_vec();
        if bytes.len() != self.len as usize {
            return Err(Error::Js(format!("{} changed while being sent", self.name)));
        }
        Ok(bytes)
    }
}

/// Bytes read per slice while hashing: large enough that the per-read cost
/// vanishes, small enough to keep memory flat.
const HASH_BLOCK: u64 = 8 * 1024 * 1024;

/// Hashes a file on this thread, reading it in blocks and yielding to the
/// page between them. The fallback when hash workers cannot start.
pub(crate) async fn hash_file(file: &File, chunk_size: u32) -> Result<FileDigest, Error> {
    let size = file.size() as u64;
    let mut hasher = FileHasher::new(size, chunk_size);
    let changed = || Error::Js(format!("{} changed while being read", file.name()));
    if size == 0 {
        hasher.update(&[]);
    }
    let cs = u64::from(chunk_size);
    let block = (HASH_BLOCK / cs).max(1) * cs;
    let mut offset = 0;
    while offset < size {
        let len = block.min(size - offset) as u32;
        let data = read_slice(file, offset, len).await?;
        for piece in data.chunks(chunk_size as usize) {
            if !hasher.update(piece) {
                return Err(changed());
            }
        }
        offset += u64::from(len);
    }
    hasher.finish().ok_or_else(changed)
}

/// The digests of chunks `first..first + count` of a file: their chaining
/// values concatenated, or for a file of one chunk its BLAKE3 hash. Runs in
/// the hash workers (see `www/hash-worker.js`).
#[wasm_bindgen(js_name = chunkDigests)]
pub async fn chunk_digests(
    file: File,
    chunk_size: u32,
    first: f64,
    count: f64,
) -> Result<Uint8Array, Error> {
    let size = file.size() as u64;
    if !chunk_size.is_power_of_two() || chunk_size < tree::MIN_CHUNK {
        return Err(Error::Options(
            "chunk size must be a power of two of at least 1024".into(),
        ));
    }
    if tree::is_single_chunk(size, chunk_size) {
        let data = if size == 0 {
            Vec::new()
        } else {
            read_slice(&file, 0, size as u32).await?
        };
        return Ok(Uint8Array::from(blake3::hash(&data).as_bytes().as_slice()));
    }
    let (first, count) = (first as u64, count as u64);
    let last = (first + count).min(tree::chunk_count(size, chunk_size));
    let cs = u64::from(chunk_size);
    let block = (HASH_BLOCK / cs).max(1);
    let mut out = Vec::with_capacity(((last.saturating_sub(first)) * 32) as usize);
    let start = |chunk: u64| {
        let n = block.min(last - chunk);
        let offset = chunk * cs;
        let len = ((chunk + n) * cs).min(size) - offset;
        PendingRead::start(&file, offset, len as u32).map(|r| (r, n))
    };
    let mut next = if first < last {
        Some(start(first)?)
    } else {
        None
    };
    let mut chunk = first;
    while let Some((read, n)) = next.take() {
        let data = read.bytes().await?;
        // Ask for the next block before hashing this one: the browser
        // reads it while this worker hashes.
        if chunk + n < last {
            next = Some(start(chunk + n)?);
        }
        for (i, piece) in data.chunks(chunk_size as usize).enumerate() {
            out.extend_from_slice(&tree::chunk_cv(piece, chunk + i as u64, chunk_size));
        }
        chunk += n;
    }
    Ok(Uint8Array::from(out.as_slice()))
}

/// Hashes files in parallel workers, one range of chunks per worker.
pub(crate) struct HashPool {
    workers: Vec<Worker>,
    seq: u32,
    pending: Rc<RefCell<HashMap<u32, (js_sys::Function, js_sys::Function)>>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
}

impl Drop for HashPool {
    fn drop(&mut self) {
        for w in &self.workers {
            w.terminate();
        }
    }
}

impl HashPool {
    /// Starts `n` module workers from `url`.
    pub(crate) fn new(url: &str, n: usize) -> Result<Self, Error> {
        let pending: Rc<RefCell<HashMap<u32, (js_sys::Function, js_sys::Function)>>> =
            Rc::default();
        let p = pending.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let data = e.data();
            let get = |k: &str| Reflect::get(&data, &k.into()).unwrap_or(JsValue::UNDEFINED);
            let seq = get("seq").as_f64().unwrap_or(-1.0) as u32;
            let Some((resolve, reject)) = p.borrow_mut().remove(&seq) else {
                return;
            };
            let _ = if get("ok").as_bool() == Some(true) {
                resolve.call1(&JsValue::NULL, &get("out"))
            } else {
                reject.call1(
                    &JsValue::NULL,
                    &js_sys::Error::new(&get("error").as_string().unwrap_or_default()),
                )
            };
        });
        let options = web_sys::WorkerOptions::new();
        options.set_type(web_sys::WorkerType::Module);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let w = Worker::new_with_options(url, &options)?;
            w.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            workers.push(w);
        }
        Ok(Self {
            workers,
            seq: 0,
            pending,
            _on_message: on_message,
        })
    }

    fn request(
        &mut self,
        worker: usize,
        file: &File,
        chunk_size: u32,
        first: u64,
        count: u64,
    ) -> Result<js_sys::Promise, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let pending = self.pending.clone();
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            pending.borrow_mut().insert(seq, (resolve, reject));
        });
        let msg = Object::new();
        Reflect::set(&msg, &"seq".into(), &seq.into())?;
        Reflect::set(&msg, &"file".into(), file)?;
        Reflect::set(&msg, &"chunkSize".into(), &chunk_size.into())?;
        Reflect::set(&msg, &"first".into(), &(first as f64).into())?;
        Reflect::set(&msg, &"count".into(), &(count as f64).into())?;
        self.workers[worker % self.workers.len()].post_message(&msg)?;
        Ok(promise)
    }

    /// Hashes one file, splitting its chunks across the workers.
    pub(crate) async fn hash(&mut self, file: &File, chunk_size: u32) -> Result<FileDigest, Error> {
        let size = file.size() as u64;
        let bad = || Error::Js(format!("{} changed while being read", file.name()));
        if tree::is_single_chunk(size, chunk_size) {
            let out = JsFuture::from(self.request(0, file, chunk_size, 0, 1)?).await?;
            let bytes = Uint8Array::new(&out).to_vec();
            let root: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
            return Ok(FileDigest {
                root: blake3::Hash::from_bytes(root),
                cvs: Vec::new(),
            });
        }
        let chunks = tree::chunk_count(size, chunk_size);
        let per = chunks.div_ceil(self.workers.len() as u64);
        let mut promises = Vec::new();
        let mut first = 0;
        let mut i = 0;
        while first < chunks {
            let count = per.min(chunks - first);
            promises.push(self.request(i, file, chunk_size, first, count)?);
            first += count;
            i += 1;
        }
        let mut cvs = Vec::with_capacity(chunks as usize);
        for p in promises {
            let out = Uint8Array::new(&JsFuture::from(p).await?).to_vec();
            for cv in out.chunks_exact(32) {
                let mut a = [0u8; 32];
                a.copy_from_slice(cv);
                cvs.push(a);
            }
        }
        let root = tree::root_from_cvs(&cvs, size, chunk_size).ok_or_else(bad)?;
        Ok(FileDigest { root, cvs })
    }
}

/// Where a received file lives in the origin private file system.
pub(crate) fn opfs_dir(manifest: &[u8; 32]) -> String {
    format!("ferry/{}", blake3::Hash::from_bytes(*manifest).to_hex())
}

/// What a sink request was for.
pub(crate) enum SinkJob {
    /// A write of consecutive chunks; report `chunk_written` for each, or
    /// `write_failed`.
    Write {
        id: TransferId,
        file: u32,
        chunks: Vec<u64>,
    },
    /// Resolve or reject a promise with the reply.
    Promise {
        resolve: js_sys::Function,
        reject: js_sys::Function,
    },
    /// Nothing to do but log failures.
    Quiet,
}

/// Most bytes gathered into one write: consecutive verified chunks of a
/// file go to the storage worker together, a message each way per batch
/// instead of per chunk (see `docs/benchmarks.md`).
pub(crate) const WRITE_BATCH: u64 = 1024 * 1024;

/// How long a batch that is not full waits for its next chunk, in ms.
/// Longer than chunks take to arrive at any rate worth batching (a chunk
/// every 10 ms at 13 MB/s): a timer that fired sooner would post most
/// batches half-filled. The batch holds a few window slots meanwhile.
pub(crate) const WRITE_BATCH_WAIT_MS: i32 = 200;

/// Batch buffers the storage worker has handed back after writing them,
/// to be filled again: no allocation, and no garbage, per batch.
pub(crate) type Spare = Rc<RefCell<Vec<js_sys::ArrayBuffer>>>;

/// Most buffers kept for reuse.
const MAX_SPARE: usize = 4;

/// Keeps a buffer the worker handed back, if there is room.
pub(crate) fn keep_spare(spare: &Spare, buf: js_sys::ArrayBuffer) {
    let mut spare = spare.borrow_mut();
    if spare.len() < MAX_SPARE && buf.byte_length() > 0 {
        spare.push(buf);
    }
}

/// Verified chunks of one file waiting to be written as one range.
struct WriteBatch {
    id: TransferId,
    file: u32,
    path: String,
    name: String,
    size: u64,
    /// File offset of the first byte.
    offset: u64,
    /// `capacity` bytes, of which the first `len` are filled.
    buf: Uint8Array,
    len: u32,
    chunks: Vec<u64>,
}

impl WriteBatch {
    fn full(&self) -> bool {
        self.len == self.buf.length()
    }

    /// Whether `n` bytes of `file` at `offset` continue this batch.
    fn continues(&self, id: &TransferId, file: u32, offset: u64, n: usize) -> bool {
        self.id == *id
            && self.file == file
            && self.offset + u64::from(self.len) == offset
            && u64::from(self.len) + n as u64 <= u64::from(self.buf.length())
    }
}

/// Where a received chunk goes: its transfer, file and place in the file,
/// and the file's storage path, display name and size.
pub(crate) struct ChunkWrite<'a> {
    pub(crate) id: TransferId,
    pub(crate) file: u32,
    pub(crate) chunk: u64,
    pub(crate) offset: u64,
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) data: &'a [u8],
}

/// The worker that owns OPFS sync access handles.
///
/// Writes are gathered: consecutive chunks of a file wait in one buffer of
/// up to `batch_bytes` (on the JavaScript heap, not in WebAssembly memory)
/// and go to the worker as one range when it is full, when a chunk that
/// does not continue it arrives, when any other request is posted (so the
/// worker still sees everything in order), or after
/// [`WRITE_BATCH_WAIT_MS`]. A chunk counts as stored only when the worker
/// confirms its range.
pub(crate) struct Sink {
    worker: Worker,
    seq: u32,
    batch: Option<WriteBatch>,
    spare: Spare,
    /// Whether a partial file survives a reload (false for a download
    /// stream), so that saving progress makes sense.
    pub(crate) resumable: bool,
    pub(crate) pending: Rc<RefCell<HashMap<u32, SinkJob>>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.worker.set_onmessage(None);
        self.worker.terminate();
    }
}

impl Sink {
    /// Starts the sink: the object `factory` returns, if it is given and
    /// returns one (anything that speaks the worker's message protocol),
    /// otherwise the OPFS worker at `url`.
    pub(crate) fn new(
        url: &str,
        factory: Option<&js_sys::Function>,
        on_message: Closure<dyn FnMut(MessageEvent)>,
        pending: Rc<RefCell<HashMap<u32, SinkJob>>>,
        spare: Spare,
    ) -> Result<Self, Error> {
        let custom = match factory {
            Some(f) => Some(f.call0(&JsValue::NULL)?).filter(|v| v.is_object()),
            None => None,
        };
        let resumable = custom.as_ref().is_none_or(|c| {
            Reflect::get(c, &"resumable".into())
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(true)
        });
        let worker = match custom {
            Some(c) => c.unchecked_into::<Worker>(),
            None => Worker::new(url)?,
        };
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        Ok(Self {
            worker,
            seq: 0,
            batch: None,
            spare,
            pending,
            resumable,
            _on_message: on_message,
        })
    }

    fn post(
        &mut self,
        msg: &Object,
        transfer: Option<&JsValue>,
        job: SinkJob,
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        Reflect::set(msg, &"seq".into(), &self.seq.into())?;
        self.pending.borrow_mut().insert(self.seq, job);
        let sent = match transfer {
            Some(t) => self.worker.post_message_with_transfer(msg, &Array::of1(t)),
            None => self.worker.post_message(msg),
        };
        if let Err(e) = sent {
            self.pending.borrow_mut().remove(&self.seq);
            return Err(e.into());
        }
        Ok(())
    }

    /// Adds a verified chunk to the pending write, posting what was pending
    /// first if the chunk does not continue it. `batch_bytes` bounds the
    /// batch (at least the chunk itself). Returns whether a batch is now
    /// waiting, so the caller can arm the [`WRITE_BATCH_WAIT_MS`] timer. An
    /// error names the transfer whose write could not be posted.
    pub(crate) fn write(
        &mut self,
        w: ChunkWrite<'_>,
        batch_bytes: u64,
    ) -> Result<bool, (TransferId, Error)> {
        let n = w.data.len();
        if self
            .batch
            .as_ref()
            .is_some_and(|b| !b.continues(&w.id, w.file, w.offset, n))
        {
            self.flush()?;
        }
        let batch = match &mut self.batch {
            Some(b) => b,
            None => {
                let capacity = batch_bytes
                    .min(w.size.saturating_sub(w.offset))
                    .max(n as u64)
                    .min(u64::from(u32::MAX)) as u32;
                let reused = self.spare.borrow_mut().pop();
                let buf = match reused {
                    Some(b) if b.byte_length() == capacity => Uint8Array::new(&b),
                    _ => Uint8Array::new_with_length(capacity),
                };
                self.batch.insert(WriteBatch {
                    id: w.id,
                    file: w.file,
                    path: w.path,
                    name: w.name,
                    size: w.size,
                    offset: w.offset,
                    buf,
                    len: 0,
                    chunks: Vec::new(),
                })
            }
        };
        batch
            .buf
            .subarray(batch.len, batch.len + n as u32)
            .copy_from(w.data);
        batch.len += n as u32;
        batch.chunks.push(w.chunk);
        if batch.full() {
            self.flush()?;
        }
        Ok(self.batch.is_some())
    }

    /// Posts the pending write, if there is one. An error names the
    /// transfer whose write could not be posted.
    pub(crate) fn flush(&mut self) -> Result<(), (TransferId, Error)> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let id = b.id;
        self.post_batch(b).map_err(|e| (id, e))
    }

    fn post_batch(&mut self, b: WriteBatch) -> Result<(), Error> {
        let data = if b.full() {
            b.buf
        } else {
            b.buf.slice(0, b.len)
        };
        let buf = data.buffer();
        let msg = Object::new();
        Reflect::set(&msg, &"op".into(), &"write".into())?;
        Reflect::set(&msg, &"path".into(), &b.path.as_str().into())?;
        Reflect::set(&msg, &"name".into(), &b.name.as_str().into())?;
        Reflect::set(&msg, &"size".into(), &(b.size as f64).into())?;
        Reflect::set(&msg, &"offset".into(), &(b.offset as f64).into())?;
        Reflect::set(&msg, &"data".into(), &buf)?;
        let job = SinkJob::Write {
            id: b.id,
            file: b.file,
            chunks: b.chunks,
        };
        self.post(&msg, Some(&buf), job)
    }

    pub(crate) fn simple(
        &mut self,
        op: &str,
        key: &str,
        value: &str,
        job: SinkJob,
    ) -> Result<(), Error> {
        // Whatever was gathered goes first: the worker keeps the order.
        self.flush().map_err(|(_, e)| e)?;
        let msg = Object::new();
        Reflect::set(&msg, &"op".into(), &op.into())?;
        Reflect::set(&msg, &key.into(), &value.into())?;
        self.post(&msg, None, job)
    }
}

/// Saved progress of a download, in `localStorage` under its manifest hash.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    chunk_size: u32,
    /// Per file, the have-map words in hex.
    have: Vec<Vec<String>>,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

fn key(manifest: &[u8; 32]) -> String {
    format!(
        "ferry.partial.{}",
        blake3::Hash::from_bytes(*manifest).to_hex()
    )
}

/// Saves have-maps so that a reload resumes the download.
pub(crate) fn save_progress(manifest: &[u8; 32], chunk_size: u32, have: &[HaveMap]) {
    let saved = Saved {
        chunk_size,
        have: have
            .iter()
            .map(|h| h.words().iter().map(|w| format!("{w:x}")).collect())
            .collect(),
    };
    if let (Some(s), Ok(json)) = (storage(), serde_json::to_string(&saved)) {
        let _ = s.set_item(&key(manifest), &json);
    }
}

/// Loads saved have-maps for a manifest, if they fit its files.
pub(crate) fn load_progress(
    manifest: &[u8; 32],
    chunk_size: u32,
    sizes: &[u64],
) -> Option<Vec<HaveMap>> {
    let json = storage()?.get_item(&key(manifest)).ok()??;
    let saved: Saved = serde_json::from_str(&json).ok()?;
    if saved.chunk_size != chunk_size || saved.have.len() != sizes.len() {
        return None;
    }
    saved
        .have
        .iter()
        .zip(sizes)
        .map(|(words, &size)| {
            let words: Option<Vec<u64>> = words
                .iter()
                .map(|w| u64::from_str_radix(w, 16).ok())
                .collect();
            HaveMap::from_words(words?, tree::chunk_count(size, chunk_size))
        })
        .collect()
}

/// Forgets saved progress (the download finished or was cancelled).
pub(crate) fn forget_progress(manifest: &[u8; 32]) {
    if let Some(s) = storage() {
        let _ = s.remove_item(&key(manifest));
    }
}

/// Random transfer id from the browser's CSPRNG.
pub(crate) fn random_id() -> Result<TransferId, Error> {
    let crypto = web_sys::window()
        .ok_or_else(|| Error::Js("no window".into()))?
        .crypto()?;
    let mut id = [0u8; 16];
    crypto.get_random_values_with_u8_array(&mut id)?;
    Ok(id)
}

/// The hex id used in events and in the page.
pub(crate) fn hex(id: &TransferId) -> String {
    id_hex(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_browser);

    /// A sink that records what it is sent: `[op, offset, bytes]` per
    /// message, and the bytes of each write.
    fn recording_sink() -> (Sink, js_sys::Array) {
        recording_sink_with(Rc::default())
    }

    fn recording_sink_with(spare: Spare) -> (Sink, js_sys::Array) {
        let log = js_sys::Array::new();
        let factory = js_sys::Function::new_with_args(
            "log",
            "return () => ({ postMessage(m) { log.push([m.op, m.offset ?? -1, m.data ? new Uint8Array(m.data) : null]); }, terminate() {} });",
        )
        .call1(&JsValue::NULL, &log)
        .unwrap()
        .unchecked_into::<js_sys::Function>();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(|_: MessageEvent| {});
        let sink = Sink::new(
            "unused.js",
            Some(&factory),
            on_message,
            Rc::default(),
            spare,
        )
        .unwrap();
        (sink, log)
    }

    fn entries(log: &js_sys::Array) -> Vec<(String, f64, Vec<u8>)> {
        log.iter()
            .map(|e| {
                let e: js_sys::Array = e.unchecked_into();
                let data = e.get(2);
                let bytes = if data.is_null() {
                    Vec::new()
                } else {
                    Uint8Array::new(&data).to_vec()
                };
                (
                    e.get(0).as_string().unwrap(),
                    e.get(1).as_f64().unwrap(),
                    bytes,
                )
            })
            .collect()
    }

    fn chunk<'a>(i: u64, data: &'a [u8], size: u64) -> ChunkWrite<'a> {
        ChunkWrite {
            id: [7; 16],
            file: 0,
            chunk: i,
            offset: i * 4,
            path: "ferry/x/0".into(),
            name: "x".into(),
            size,
            data,
        }
    }

    #[wasm_bindgen_test]
    fn consecutive_chunks_go_out_as_one_write_in_order() {
        let (mut sink, log) = recording_sink();
        let size = 40; // ten chunks of 4 bytes
        let bytes: Vec<[u8; 4]> = (0..10u8).map(|i| [i; 4]).collect();
        for i in 0..3 {
            assert!(sink.write(chunk(i, &bytes[i as usize], size), 16).unwrap());
        }
        assert_eq!(log.length(), 0, "nothing goes out before the batch is full");
        // The fourth fills 16 bytes: one write of chunks 0-3, in order.
        assert!(!sink.write(chunk(3, &bytes[3], size), 16).unwrap());
        let first = entries(&log);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "write");
        assert_eq!(first[0].1, 0.0);
        assert_eq!(first[0].2, bytes[..4].concat());
        // A gap (chunk 6 is missing) posts what was gathered first.
        sink.write(chunk(4, &bytes[4], size), 16).unwrap();
        sink.write(chunk(5, &bytes[5], size), 16).unwrap();
        assert!(sink.write(chunk(7, &bytes[7], size), 16).unwrap());
        // Any other request posts the pending write ahead of itself.
        sink.simple("close", "path", "ferry/x/0", SinkJob::Quiet)
            .unwrap();
        // The last chunk of the file fills its (shorter) batch at once.
        assert!(!sink.write(chunk(9, &bytes[9], size), 16).unwrap());
        let all: Vec<(String, f64, usize)> = entries(&log)
            .into_iter()
            .map(|(op, offset, b)| (op, offset, b.len()))
            .collect();
        let want: Vec<(String, f64, usize)> = [
            ("write", 0.0, 16),
            ("write", 16.0, 8),
            ("write", 28.0, 4),
            ("close", -1.0, 0),
            ("write", 36.0, 4),
        ]
        .into_iter()
        .map(|(op, o, n)| (op.to_string(), o, n))
        .collect();
        assert_eq!(all, want);
        // Each write stands for exactly the chunks in it.
        let mut jobs: Vec<Vec<u64>> = sink
            .pending
            .borrow()
            .values()
            .filter_map(|j| match j {
                SinkJob::Write { chunks, .. } => Some(chunks.clone()),
                _ => None,
            })
            .collect();
        jobs.sort();
        assert_eq!(jobs, vec![vec![0, 1, 2, 3], vec![4, 5], vec![7], vec![9]]);
    }

    #[wasm_bindgen_test]
    fn an_empty_file_is_one_empty_write() {
        let (mut sink, log) = recording_sink();
        let mut w = chunk(0, &[], 0);
        w.size = 0;
        assert!(!sink.write(w, 16).unwrap());
        assert_eq!(entries(&log), vec![("write".to_string(), 0.0, Vec::new())]);
    }

    #[wasm_bindgen_test]
    fn a_buffer_handed_back_is_filled_again() {
        let spare: Spare = Rc::default();
        let (mut sink, log) = recording_sink_with(spare.clone());
        let handed_back = js_sys::ArrayBuffer::new(16);
        keep_spare(&spare, handed_back.clone());
        for i in 0..4u8 {
            sink.write(chunk(u64::from(i), &[i; 4], 40), 16).unwrap();
        }
        assert!(spare.borrow().is_empty());
        let posted: js_sys::Array = log.get(0).unchecked_into();
        let view: Uint8Array = posted.get(2).unchecked_into();
        assert!(Object::is(&view.buffer(), &handed_back));
        assert_eq!(view.to_vec(), [[0u8; 4], [1; 4], [2; 4], [3; 4]].concat());
        // A buffer of another size is not used, and at most four are kept;
        // a detached (empty) one never.
        keep_spare(&spare, js_sys::ArrayBuffer::new(8));
        sink.write(chunk(4, &[4; 4], 40), 16).unwrap();
        for _ in 0..6 {
            keep_spare(&spare, js_sys::ArrayBuffer::new(16));
        }
        keep_spare(&spare, js_sys::ArrayBuffer::new(0));
        assert_eq!(spare.borrow().len(), MAX_SPARE);
    }
}
