//! BLAKE3 tree arithmetic: per-chunk chaining values that combine into the
//! file's ordinary BLAKE3 hash.
//!
//! Transfer chunks are a power of two of at least 1 KiB, so every chunk is a
//! complete BLAKE3 subtree (except the last, which sits on the right edge).
//! A chunk is verified by recomputing its chaining value; the list of chaining
//! values is verified once by merging it up to the root, which must equal the
//! file hash in the manifest. The receiver therefore gets the real
//! `blake3::hash` of the file without reading it back.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// Smallest transfer chunk: one BLAKE3 chunk.
pub const MIN_CHUNK: u32 = 1024;

/// Number of transfer chunks in a file of `size` bytes (at least one).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size)).max(1)
}

/// Byte length of chunk `index`.
pub fn chunk_len(size: u64, chunk_size: u32, index: u64) -> u64 {
    let start = index * u64::from(chunk_size);
    size.saturating_sub(start).min(u64::from(chunk_size))
}

/// Whether the file is a single chunk, verified by its root hash directly.
pub fn is_single_chunk(size: u64, chunk_size: u32) -> bool {
    size <= u64::from(chunk_size)
}

/// The chaining value of chunk `index` (for files of more than one chunk).
pub fn chunk_cv(data: &[u8], index: u64, chunk_size: u32) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(index * u64::from(chunk_size))
        .update(data)
        .finalize_non_root()
}

fn subtree_cv(cvs: &[ChainingValue], chunk_size: u64, len: u64) -> ChainingValue {
    if len <= chunk_size || cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let split = (left / chunk_size) as usize;
    let l = subtree_cv(&cvs[..split], chunk_size, left);
    let r = subtree_cv(&cvs[split..], chunk_size, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// The file hash implied by the chaining values of all its chunks, or `None`
/// if their number does not fit the size.
pub fn root_from_cvs(cvs: &[ChainingValue], size: u64, chunk_size: u32) -> Option<blake3::Hash> {
    let cs = u64::from(chunk_size);
    if is_single_chunk(size, chunk_size) || cvs.len() as u64 != chunk_count(size, chunk_size) {
        return None;
    }
    let left = left_subtree_len(size);
    let split = (left / cs) as usize;
    let l = subtree_cv(&cvs[..split], cs, left);
    let r = subtree_cv(&cvs[split..], cs, size - left);
    Some(merge_subtrees_root(&l, &r, Mode::Hash))
}

/// Hashes a file chunk by chunk, in order, as a driver reads it.
#[derive(Debug)]
pub struct FileHasher {
    size: u64,
    chunk_size: u32,
    next: u64,
    cvs: Vec<ChainingValue>,
    single: Option<blake3::Hash>,
}

/// The result of hashing a file: its BLAKE3 hash and, for files of more than
/// one chunk, the chaining value of each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// `blake3::hash` of the whole file.
    pub root: blake3::Hash,
    /// One chaining value per chunk; empty for single-chunk files.
    pub cvs: Vec<ChainingValue>,
}

impl FileHasher {
    /// Starts hashing a file of `size` bytes cut into `chunk_size` chunks.
    pub fn new(size: u64, chunk_size: u32) -> Self {
        Self {
            size,
            chunk_size,
            next: 0,
            cvs: Vec::new(),
            single: None,
        }
    }

    /// Feeds the next chunk. Returns `false` (and ignores it) if its length
    /// is not the expected one.
    pub fn update(&mut self, data: &[u8]) -> bool {
        if self.next >= chunk_count(self.size, self.chunk_size)
            || data.len() as u64 != chunk_len(self.size, self.chunk_size, self.next)
        {
            return false;
        }
        if is_single_chunk(self.size, self.chunk_size) {
            self.single = Some(blake3::hash(data));
        } else {
            self.cvs.push(chunk_cv(data, self.next, self.chunk_size));
        }
        self.next += 1;
        true
    }

    /// The digest, once every chunk was fed.
    pub fn finish(self) -> Option<FileDigest> {
        if let Some(root) = self.single {
            return Some(FileDigest {
                root,
                cvs: Vec::new(),
            });
        }
        let root = root_from_cvs(&self.cvs, self.size, self.chunk_size)?;
        Some(FileDigest {
            root,
            cvs: self.cvs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn digest(bytes: &[u8], chunk_size: u32) -> FileDigest {
        let mut h = FileHasher::new(bytes.len() as u64, chunk_size);
        if bytes.is_empty() {
            assert!(h.update(&[]));
        }
        for c in bytes.chunks(chunk_size as usize) {
            assert!(h.update(c));
        }
        h.finish().unwrap()
    }

    #[test]
    fn roots_equal_plain_blake3() {
        for chunk_size in [1024u32, 4096, 16384] {
            for len in [
                0usize, 1, 1023, 1024, 1025, 4096, 4097, 8192, 12_289, 65_536, 70_001, 200_000,
            ] {
                let bytes = data(len);
                let d = digest(&bytes, chunk_size);
                assert_eq!(d.root, blake3::hash(&bytes), "len {len} chunk {chunk_size}");
                if len as u64 > u64::from(chunk_size) {
                    assert_eq!(d.cvs.len() as u64, chunk_count(len as u64, chunk_size));
                    // Each chunk verifies against its own chaining value.
                    for (i, c) in bytes.chunks(chunk_size as usize).enumerate() {
                        assert_eq!(chunk_cv(c, i as u64, chunk_size), d.cvs[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn a_tampered_chunk_or_list_is_detected() {
        let bytes = data(50_000);
        let d = digest(&bytes, 4096);
        let mut bad = bytes[4096..8192].to_vec();
        bad[7] ^= 1;
        assert_ne!(chunk_cv(&bad, 1, 4096), d.cvs[1]);
        // The same bytes at another position hash differently.
        assert_ne!(chunk_cv(&bytes[4096..8192], 2, 4096), d.cvs[1]);
        let mut cvs = d.cvs.clone();
        cvs.swap(0, 1);
        assert_ne!(root_from_cvs(&cvs, 50_000, 4096), Some(d.root));
        assert_eq!(root_from_cvs(&d.cvs[1..], 50_000, 4096), None);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut h = FileHasher::new(5000, 4096);
        assert!(!h.update(&[0; 100]));
        assert!(h.update(&[0; 4096]));
        assert!(!h.update(&[0; 4096]));
        assert!(h.update(&[0; 904]));
        assert!(h.finish().is_some());
    }
}
