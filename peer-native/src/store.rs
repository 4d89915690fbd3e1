//! Where received files go: partial files with have-maps next to them,
//! never outside the target folder.
//!
//! Each file of an accepted offer is written to `<dir>/<path>.ferry-part`.
//! Beside it, `<dir>/<path>.ferry-part.have` records which chunks are
//! verified and stored, with the file's BLAKE3, size and chunk size, so a
//! restarted receiver asks only for what is missing. The have-map is written
//! only after the partial file is synced, and atomically (a temporary file,
//! then a rename), so it never claims bytes the disk does not hold. A file
//! becomes visible under its real name only once its BLAKE3 matched.
//!
//! Paths come from the sender. The engine already refuses manifests with
//! `..`, absolute paths, NUL, control characters, reserved names and
//! over-long components; this module also refuses to follow a symbolic link
//! anywhere below the target folder, and checks that every path resolves
//! inside it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ferry_core::transfer::HaveMap;
use ferry_core::transfer::manifest::FileEntry;
use ferry_core::transfer::tree;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Suffix of a file still being received.
pub const PART_SUFFIX: &str = ".ferry-part";
/// Suffix of a partial file's have-map.
pub const HAVE_SUFFIX: &str = ".ferry-part.have";

/// What accepting an offer into a folder means, worked out before asking.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One destination per file of the offer.
    pub files: Vec<PlannedFile>,
    /// Bytes already received in earlier runs (resumable partials).
    pub resumed_bytes: u64,
    /// Bytes still to receive.
    pub needed_bytes: u64,
    /// Free space on the target folder's file system.
    pub available_bytes: u64,
}

/// One file's destination.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Final path.
    pub path: PathBuf,
    /// The partial file.
    pub part: PathBuf,
    /// The have-map beside it.
    pub have: PathBuf,
    /// Chunks already held, if a matching partial exists.
    pub resume: Option<HaveMap>,
}

#[derive(Serialize, Deserialize)]
struct SavedHave {
    version: u32,
    hash: String,
    size: u64,
    chunk_size: u32,
    words: Vec<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Joins a manifest path to `dir`, refusing anything that could leave it.
pub fn destination(dir: &Path, rel: &str) -> Result<PathBuf, Error> {
    ferry_core::transfer::manifest::check_path(rel)
        .map_err(|e| Error::UnsafePath(format!("{rel:?}: {e}")))?;
    let mut out = dir.to_path_buf();
    for part in rel.split('/') {
        let c = Path::new(part).components().collect::<Vec<_>>();
        if c.len() != 1 || !matches!(c[0], Component::Normal(_)) {
            return Err(Error::UnsafePath(format!("{rel:?}")));
        }
        out.push(part);
        // Never write through a link planted below the target folder.
        if let Ok(meta) = fs::symlink_metadata(&out)
            && meta.file_type().is_symlink()
        {
            return Err(Error::UnsafePath(format!(
                "{} is a symbolic link",
                out.display()
            )));
        }
    }
    Ok(out)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads a saved have-map if it belongs to exactly this file.
fn load_have(have: &Path, part: &Path, entry: &FileEntry, chunk_size: u32) -> Option<HaveMap> {
    let saved: SavedHave = serde_json::from_slice(&fs::read(have).ok()?).ok()?;
    if saved.version != 1
        || saved.hash != hex(&entry.hash)
        || saved.size != entry.size
        || saved.chunk_size != chunk_size
        || !part.is_file()
    {
        return None;
    }
    HaveMap::from_words(saved.words, tree::chunk_count(entry.size, chunk_size))
}

/// Works out where an offer's files go in `dir`, which partials can be
/// resumed, and whether it fits; refuses to overwrite unless `overwrite`.
pub fn plan(
    dir: &Path,
    files: &[FileEntry],
    chunk_size: u32,
    overwrite: bool,
) -> Result<Plan, Error> {
    let mut planned = Vec::with_capacity(files.len());
    let (mut resumed_bytes, mut needed_bytes) = (0u64, 0u64);
    for entry in files {
        let path = destination(dir, &entry.path)?;
        let part = with_suffix(&path, PART_SUFFIX);
        let have = with_suffix(&path, HAVE_SUFFIX);
        if path.exists() && !overwrite {
            return Err(Error::WouldOverwrite(path));
        }
        if path.is_dir() {
            return Err(Error::WouldOverwrite(path));
        }
        let resume = load_have(&have, &part, entry, chunk_size);
        let held: u64 = resume.as_ref().map_or(0, |h| {
            (0..tree::chunk_count(entry.size, chunk_size))
                .filter(|&c| h.has(c))
                .map(|c| tree::chunk_len(entry.size, chunk_size, c))
                .sum()
        });
        resumed_bytes += held;
        needed_bytes += entry.size - held.min(entry.size);
        planned.push(PlannedFile {
            path,
            part,
            have,
            resume,
        });
    }
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    let available_bytes = fs4::available_space(existing).map_err(|e| Error::Io {
        what: format!("free space of {}", existing.display()),
        source: e,
    })?;
    if needed_bytes > available_bytes {
        return Err(Error::NoSpace {
            needed: needed_bytes,
            available: available_bytes,
        });
    }
    Ok(Plan {
        files: planned,
        resumed_bytes,
        needed_bytes,
        available_bytes,
    })
}

/// Writes verified bytes at their offset, from a blocking task; the error
/// says what to do.
pub fn write_chunk(file: &File, offset: u64, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(data, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::StorageFull {
            "the disk is full; free some space and run the same command again to resume (verified parts are kept)".to_owned()
        } else {
            format!("cannot write the received file: {e}")
        }
    })
}

/// An accepted download's open partial files.
pub struct Download {
    /// Destinations, one per file.
    pub files: Vec<PlannedFile>,
    parts: Vec<Arc<File>>,
    entries: Vec<FileEntry>,
    chunk_size: u32,
    overwrite: bool,
    /// Which files are finished; held while saving or finishing, so a save
    /// racing a finish never leaves a have-map behind.
    finished: std::sync::Mutex<Vec<bool>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

impl Download {
    /// Creates the folders and opens (or creates) every partial file. A
    /// partial that cannot be resumed starts again from empty.
    pub fn open(
        plan: Plan,
        entries: Vec<FileEntry>,
        chunk_size: u32,
        overwrite: bool,
    ) -> Result<Self, Error> {
        let mut parts = Vec::with_capacity(plan.files.len());
        for f in &plan.files {
            if let Some(parent) = f.part.parent() {
                fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(f.resume.is_none())
                .open(&f.part)
                .map_err(io(format!("opening {}", f.part.display())))?;
            parts.push(Arc::new(file));
        }
        Ok(Self {
            finished: std::sync::Mutex::new(vec![false; plan.files.len()]),
            files: plan.files,
            parts,
            entries,
            chunk_size,
            overwrite,
        })
    }

    /// The resume have-maps to accept with, if any file has one.
    pub fn resume(&self) -> Option<Vec<HaveMap>> {
        if self.files.iter().all(|f| f.resume.is_none()) {
            return None;
        }
        Some(
            self.files
                .iter()
                .zip(&self.entries)
                .map(|(f, e)| {
                    f.resume.clone().unwrap_or_else(|| {
                        HaveMap::from_words(
                            vec![
                                0;
                                tree::chunk_count(e.size, self.chunk_size).div_ceil(64) as usize
                            ],
                            tree::chunk_count(e.size, self.chunk_size),
                        )
                        .unwrap_or_default()
                    })
                })
                .collect(),
        )
    }

    /// The partial file of `file`, to write to from a blocking task.
    pub fn part(&self, file: u32) -> Option<Arc<File>> {
        self.parts.get(file as usize).cloned()
    }

    /// Syncs the partial files, then saves their have-maps atomically.
    pub fn save_progress(&self, have: &[HaveMap]) -> Result<(), Error> {
        let finished = self
            .finished
            .lock()
            .map_err(|_| Error::Internal("download lock poisoned".into()))?;
        for (i, ((f, part), (entry, h))) in self
            .files
            .iter()
            .zip(&self.parts)
            .zip(self.entries.iter().zip(have))
            .enumerate()
        {
            if finished.get(i).copied().unwrap_or(true) {
                continue;
            }
            part.sync_data()
                .map_err(io(format!("syncing {}", f.part.display())))?;
            let saved = SavedHave {
                version: 1,
                hash: hex(&entry.hash),
                size: entry.size,
                chunk_size: self.chunk_size,
                words: h.words().to_vec(),
            };
            let tmp = with_suffix(&f.have, ".tmp");
            let mut out = File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
            out.write_all(&serde_json::to_vec(&saved).unwrap_or_default())
                .and_then(|()| out.sync_data())
                .map_err(io(format!("writing {}", tmp.display())))?;
            fs::rename(&tmp, &f.have).map_err(io(format!("writing {}", f.have.display())))?;
        }
        Ok(())
    }

    /// A file's BLAKE3 matched: give it its real name and drop its have-map.
    pub fn finish_file(&self, file: u32) -> Result<PathBuf, Error> {
        let mut finished = self
            .finished
            .lock()
            .map_err(|_| Error::Internal("download lock poisoned".into()))?;
        let f = self
            .files
            .get(file as usize)
            .ok_or_else(|| Error::Internal(format!("no file {file}")))?;
        if let Some(part) = self.parts.get(file as usize) {
            part.sync_all()
                .map_err(io(format!("syncing {}", f.part.display())))?;
        }
        if f.path.exists() && !self.overwrite {
            return Err(Error::WouldOverwrite(f.path.clone()));
        }
        fs::rename(&f.part, &f.path).map_err(io(format!("renaming to {}", f.path.display())))?;
        let _ = fs::remove_file(&f.have);
        if let Some(done) = finished.get_mut(file as usize) {
            *done = true;
        }
        Ok(f.path.clone())
    }

    /// The transfer was cancelled: nothing partial is left behind.
    pub fn discard(&self) {
        let Ok(mut finished) = self.finished.lock() else {
            return;
        };
        for (f, done) in self.files.iter().zip(finished.iter_mut()) {
            if *done {
                continue;
            }
            *done = true;
            let _ = fs::remove_file(&f.part);
            let _ = fs::remove_file(&f.have);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            hash: [7; 32],
        }
    }

    #[test]
    fn hostile_paths_never_leave_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\0b",
            "C:\\x",
            "",
            "a//b",
            "./a",
            "con",
            &"x".repeat(300),
        ] {
            assert!(destination(dir.path(), bad).is_err(), "{bad:?} accepted");
        }
        let ok = destination(dir.path(), "photos/2024/a.jpg").unwrap();
        assert!(ok.starts_with(dir.path()));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_below_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = destination(dir.path(), "link/file").unwrap_err();
        assert!(matches!(err, Error::UnsafePath(_)), "{err}");
    }

    #[test]
    fn existing_files_are_kept_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"mine").unwrap();
        let files = [entry("a.txt", 4)];
        assert!(matches!(
            plan(dir.path(), &files, 1024, false),
            Err(Error::WouldOverwrite(_))
        ));
        assert!(plan(dir.path(), &files, 1024, true).is_ok());
    }

    #[test]
    fn absurd_sizes_are_refused_for_space() {
        let dir = tempfile::tempdir().unwrap();
        let files = [entry("big.bin", 1 << 50)];
        assert!(matches!(
            plan(dir.path(), &files, 128 * 1024, false),
            Err(Error::NoSpace { .. })
        ));
    }

    #[test]
    fn progress_round_trips_and_only_matches_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![entry("sub/a.bin", 5000)];
        let p = plan(dir.path(), &files, 1024, false).unwrap();
        assert!(p.files[0].resume.is_none());
        let d = Download::open(p, files.clone(), 1024, false).unwrap();
        let mut words = vec![0u64; 1];
        words[0] = 0b10011;
        let have = HaveMap::from_words(words, 5).unwrap();
        d.save_progress(std::slice::from_ref(&have)).unwrap();
        let again = plan(dir.path(), &files, 1024, false).unwrap();
        assert_eq!(again.files[0].resume.as_ref(), Some(&have));
        assert_eq!(again.resumed_bytes, 1024 + 1024 + 904);
        // Another file with the same name does not resume from it.
        let mut other = files.clone();
        other[0].hash = [8; 32];
        assert!(
            plan(dir.path(), &other, 1024, false).unwrap().files[0]
                .resume
                .is_none()
        );
        // A different chunk size neither.
        assert!(
            plan(dir.path(), &files, 2048, false).unwrap().files[0]
                .resume
                .is_none()
        );
    }

    #[test]
    fn a_full_disk_says_so() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return; // not on this system
        };
        let err = write_chunk(&full, 0, &[1; 4096]).unwrap_err();
        assert!(err.contains("disk is full"), "{err}");
    }

    #[test]
    fn finishing_renames_and_cancelling_discards() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![entry("a.bin", 3), entry("b.bin", 3)];
        let p = plan(dir.path(), &files, 1024, false).unwrap();
        let d = Download::open(p, files, 1024, false).unwrap();
        let path = d.finish_file(0).unwrap();
        assert!(path.exists());
        assert!(!dir.path().join("a.bin.ferry-part").exists());
        d.discard();
        assert!(!dir.path().join("b.bin.ferry-part").exists());
        assert!(dir.path().join("a.bin").exists());
    }
}
