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

use ferry_core::transfer::SourceFile;
use ferry_core::transfer::tree::{FileHasher, chunk_len};

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

/// Hashes one file at `chunk_size`; `progress` gets the bytes of each chunk.
pub fn hash(
    found: &FoundFile,
    chunk_size: u32,
    mut progress: impl FnMut(u64),
) -> Result<LocalFile, Error> {
    let io = |e| Error::Io {
        what: format!("reading {}", found.disk.display()),
        source: e,
    };
    let mut file = File::open(&found.disk).map_err(io)?;
    let mut hasher = FileHasher::new(found.size, chunk_size);
    let mut buf = vec![0u8; chunk_size as usize];
    let mut index = 0u64;
    loop {
        let len = chunk_len(found.size, chunk_size, index) as usize;
        if len == 0 && index > 0 {
            break;
        }
        file.read_exact(&mut buf[..len]).map_err(io)?;
        if !hasher.update(&buf[..len]) {
            break;
        }
        progress(len as u64);
        index += 1;
        if len < chunk_size as usize {
            break;
        }
    }
    let digest = hasher
        .finish()
        .ok_or_else(|| Error::Changed(found.disk.clone()))?;
    Ok(LocalFile {
        disk: found.disk.clone(),
        source: SourceFile {
            path: found.path.clone(),
            size: found.size,
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
        for size in [0usize, 1, 1024, 1025, 5000, 3 * 4096] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let p = dir.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let found = find(std::slice::from_ref(&p)).unwrap();
            let mut seen = 0;
            let local = hash(&found[0], 1024, |n| seen += n).unwrap();
            assert_eq!(local.source.digest.root, blake3::hash(&data), "size {size}");
            assert_eq!(seen, size as u64);
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
