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
    let blob = file.slice_with_f64_and_f64(offset as f64, (offset + u64::from(len)) as f64)?;
    let buf = JsFuture::from(blob.array_buffer()).await?;
    let bytes = Uint8Array::new(&buf).to_vec();
    if bytes.len() != len as usize {
        return Err(Error::Js(format!(
            "{} changed while being sent",
            file.name()
        )));
    }
    Ok(bytes)
}

/// Hashes a file chunk by chunk, yielding to the page between chunks.
pub(crate) async fn hash_file(file: &File, chunk_size: u32) -> Result<FileDigest, Error> {
    let size = file.size() as u64;
    let mut hasher = FileHasher::new(size, chunk_size);
    for chunk in 0..tree::chunk_count(size, chunk_size) {
        let len = tree::chunk_len(size, chunk_size, chunk) as u32;
        let data = if len == 0 {
            Vec::new()
        } else {
            read_slice(file, chunk * u64::from(chunk_size), len).await?
        };
        if !hasher.update(&data) {
            return Err(Error::Js(format!(
                "{} changed while being read",
                file.name()
            )));
        }
    }
    hasher
        .finish()
        .ok_or_else(|| Error::Js(format!("cannot hash {}", file.name())))
}

/// Where a received file lives in the origin private file system.
pub(crate) fn opfs_dir(manifest: &[u8; 32]) -> String {
    format!("ferry/{}", blake3::Hash::from_bytes(*manifest).to_hex())
}

/// What a sink request was for.
pub(crate) enum SinkJob {
    /// A chunk write; report `chunk_written` or `write_failed`.
    Write {
        id: TransferId,
        file: u32,
        chunk: u64,
    },
    /// Resolve or reject a promise with the reply.
    Promise {
        resolve: js_sys::Function,
        reject: js_sys::Function,
    },
    /// Nothing to do but log failures.
    Quiet,
}

/// The worker that owns OPFS sync access handles.
pub(crate) struct Sink {
    worker: Worker,
    seq: u32,
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
    pub(crate) fn new(
        url: &str,
        on_message: Closure<dyn FnMut(MessageEvent)>,
        pending: Rc<RefCell<HashMap<u32, SinkJob>>>,
    ) -> Result<Self, Error> {
        let worker = Worker::new(url)?;
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        Ok(Self {
            worker,
            seq: 0,
            pending,
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

    pub(crate) fn write(
        &mut self,
        path: &str,
        offset: u64,
        data: &[u8],
        job: SinkJob,
    ) -> Result<(), Error> {
        let msg = Object::new();
        let buf = Uint8Array::from(data).buffer();
        Reflect::set(&msg, &"op".into(), &"write".into())?;
        Reflect::set(&msg, &"path".into(), &path.into())?;
        Reflect::set(&msg, &"offset".into(), &(offset as f64).into())?;
        Reflect::set(&msg, &"data".into(), &buf)?;
        self.post(&msg, Some(&buf), job)
    }

    pub(crate) fn simple(
        &mut self,
        op: &str,
        key: &str,
        value: &str,
        job: SinkJob,
    ) -> Result<(), Error> {
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
