//! Files to send: walking folders, hashing, and reading chunks.
//!
//! A folder is offered with its own name as the first path component, so
//! `ferry send photos` arrives as `photos/…`. Files are hashed once, chunk
//! by chunk, with the engine's [`FileHasher`], which keeps each chunk's
//! BLAKE3 chaining value; the file is never held in memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blake3::hazmat::ChainingValue;
use ferry_core::transfer::SourceFile;
use ferry_core::transfer::tree::{self, FileDigest};

use crate::Error;

/// A file found on disk, not hashed yet.
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// Where it is.
    pub disk: PathBuf,
    /// Its path in the offer, `/`-separated.
    pub path: String,
    /// Its size.
    pub size: u64,
}

/// A file ready to offer.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Where it is.
    pub disk: PathBuf,
    /// What the engine offers.
    pub source: SourceFile,
}

fn name_of(path: &Path) -> Result<String, Error> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::UnsafePath(format!("{} has no usable name", path.display())))
}

fn walk(disk: &Path, prefix: &str, out: &mut Vec<FoundFile>) -> Result<(), Error> {
    let meta = std::fs::metadata(disk).map_err(|e| Error::Io {
        what: format!("reading {}", disk.display()),
        source: e,
    })?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(disk)
            .map_err(|e| Error::Io {
                what: format!("listing {}", disk.display()),
                source: e,
            })?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = e.path();
            let name = name_of(&child)?;
            walk(&child, &format!("{prefix}/{name}"), out)?;
        }
    } else if meta.is_file() {
        out.push(FoundFile {
            disk: disk.to_path_buf(),
            path: prefix.to_owned(),
            size: meta.len(),
        });
    }
    Ok(())
}

/// Lists the files under `paths` (files, or folders walked recursively).
pub fn find(paths: &[PathBuf]) -> Result<Vec<FoundFile>, Error> {
    let mut out = Vec::new();
    for p in paths {
        let canonical = p.canonicalize().map_err(|e| Error::Io {
            what: format!("opening {}", p.display()),
            source: e,
        })?;
        walk(&canonical, &name_of(&canonical)?, &mut out)?;
    }
    if out.is_empty() {
        return Err(Error::NothingToSend);
    }
    Ok(out)
}

/// Hashes one file at `chunk_size`, on every core: each thread reads and
/// hashes its own range of chunks (their chaining values are independent),
/// and the root is merged from them. `progress` gets bytes as they are done.
pub fn hash(
    found: &FoundFile,
    chunk_size: u32,
    progress: impl Fn(u64) + Sync,
) -> Result<LocalFile, Error> {
    let io = |e| Error::Io {
        what: format!("reading {}", found.disk.display()),
        source: e,
    };
    let file = File::open(&found.disk).map_err(io)?;
    let size = found.size;
    if file.metadata().map_err(io)?.len() != size {
        return Err(Error::Changed(found.disk.clone()));
    }
    let digest = if tree::is_single_chunk(size, chunk_size) {
        let mut buf = vec![0u8; size as usize];
        (&file).read_exact(&mut buf).map_err(io)?;
        progress(size);
        FileDigest {
            root: blake3::hash(&buf),
            cvs: Vec::new(),
        }
    } else {
        let chunks = tree::chunk_count(size, chunk_size);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8) as u64;
        let per = chunks.div_ceil(threads);
        let ranges: Vec<(u64, u64)> = (0..threads)
            .map(|t| (t * per, ((t + 1) * per).min(chunks)))
            .filter(|(a, b)| a < b)
            .collect();
        let parts: Vec<std::io::Result<Vec<ChainingValue>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(first, end)| {
                    let (file, progress) = (&file, &progress);
                    scope.spawn(move || {
                        use std::os::unix::fs::FileExt;
                        // Read several chunks at a time; hash each alone.
                        let per_read = 16u64;
                        let mut buf = vec![0u8; (per_read * u64::from(chunk_size)) as usize];
                        let mut cvs = Vec::with_capacity((end - first) as usize);
                        let mut c = first;
                        while c < end {
                            let n = per_read.min(end - c);
                            let offset = c * u64::from(chunk_size);
                            let len = (0..n)
                                .map(|i| tree::chunk_len(size, chunk_size, c + i))
                                .sum::<u64>() as usize;
                            file.read_exact_at(&mut buf[..len], offset)?;
                            let mut at = 0usize;
                            for i in 0..n {
                                let l = tree::chunk_len(size, chunk_size, c + i) as usize;
                                cvs.push(tree::chunk_cv(&buf[at..at + l], c + i, chunk_size));
                                at += l;
                            }
                            progress(len as u64);
                            c += n;
                        }
                        Ok(cvs)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("hashing thread failed")))
                })
                .collect()
        });
        let mut cvs = Vec::with_capacity(chunks as usize);
        for part in parts {
            cvs.extend(part.map_err(io)?);
        }
        let root = tree::root_from_cvs(&cvs, size, chunk_size)
            .ok_or_else(|| Error::Changed(found.disk.clone()))?;
        FileDigest { root, cvs }
    };
    Ok(LocalFile {
        disk: found.disk.clone(),
        source: SourceFile {
            path: found.path.clone(),
            size,
            digest,
        },
    })
}

/// Reads `len` bytes at `offset`, from a blocking task.
pub fn read_at(file: &Arc<File>, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_keep_their_name_and_structure() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("2024")).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("2024/b.txt"), b"").unwrap();
        let found = find(std::slice::from_ref(&root)).unwrap();
        let paths: Vec<_> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["photos/2024/b.txt", "photos/a.txt"]);
    }

    #[test]
    fn hashes_match_blake3() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, 1024, 1025, 5000, 3 * 4096, 100_000, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let found = find(std::slice::from_ref(&p)).unwrap();
            let seen = std::sync::atomic::AtomicU64::new(0);
            let local = hash(&found[0], 1024, |n| {
                seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(local.source.digest.root, blake3::hash(&data), "size {size}");
            assert_eq!(seen.into_inner(), size as u64);
            // The engine accepts the digest as a well-formed one.
            let mut again = ferry_core::transfer::tree::FileHasher::new(size as u64, 1024);
            for (i, c) in data.chunks(1024).enumerate() {
                assert!(again.update(c), "chunk {i}");
            }
            if size > 0 {
                assert_eq!(again.finish().unwrap(), local.source.digest, "size {size}");
            }
        }
    }

    #[test]
    fn nothing_to_send_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            find(&[dir.path().to_path_buf()]),
            Err(Error::NothingToSend)
        ));
    }
}
