//! The manifest: what an offer contains, and the rules every receiver
//! applies before it writes anything.

use std::collections::HashSet;

use super::frame::{FrameError, Reader};

/// Most files in one offer.
pub const MAX_FILES: usize = 100_000;
/// Longest relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Largest single file: 1 PiB.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Largest offer in total: 4 PiB.
pub const MAX_TOTAL_SIZE: u64 = 1 << 52;
/// Largest serialized manifest.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// One file of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path with `/` separators, checked by [`check_path`].
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub hash: [u8; 32],
}

/// Everything that makes a manifest unacceptable. Each message says what is
/// wrong and with which file, so the user can tell the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bytes do not parse.
    #[error("the file list is corrupt: {0}")]
    Corrupt(#[from] FrameError),
    /// Zero files, or more than [`MAX_FILES`].
    #[error("an offer must list 1 to {MAX_FILES} files, this one lists {0}")]
    FileCount(usize),
    /// A size over the limits.
    #[error("\"{path}\" claims an impossible size of {size} bytes")]
    Size {
        /// The file.
        path: String,
        /// Its claimed size.
        size: u64,
    },
    /// The total over [`MAX_TOTAL_SIZE`].
    #[error("the offer's total size is impossibly large")]
    TotalSize,
    /// A path that could escape the target folder or that no file system accepts.
    #[error("unsafe file name {path:?}: {why}")]
    Path {
        /// The path as sent (lossy).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The same path twice, or a file where another file needs a folder.
    #[error("\"{0}\" appears twice, or both as a file and as a folder")]
    Duplicate(String),
}

const RESERVED: [&str; 22] = [
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Checks a relative path from a manifest. Accepted paths are `/`-separated
/// components that are safe to create under any target folder on Linux,
/// macOS and Windows: nothing absolute, no `.` or `..`, no empty components,
/// no control characters, no `\ : * ? " < > |`, no reserved device names, no
/// trailing dot or space, components of at most 255 bytes.
pub fn check_path(path: &str) -> Result<(), ManifestError> {
    let err = |why| ManifestError::Path {
        path: path.chars().take(300).collect(),
        why,
    };
    if path.is_empty() {
        return Err(err("empty name"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(err("path longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(err("absolute path"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(err("empty folder name"));
        }
        if component == "." || component == ".." {
            return Err(err("'.' and '..' are not allowed"));
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(err("a name is longer than 255 bytes"));
        }
        if component.chars().any(|c| c.is_control()) {
            return Err(err("control characters (such as NUL) are not allowed"));
        }
        if component
            .chars()
            .any(|c| matches!(c, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
        {
            return Err(err("characters \\ : * ? \" < > | are not allowed"));
        }
        if component.ends_with('.') || component.ends_with(' ') {
            return Err(err("names may not end with a dot or a space"));
        }
        let stem = component
            .split('.')
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_ascii_lowercase();
        if RESERVED.contains(&stem.as_str()) {
            return Err(err("reserved device name"));
        }
    }
    Ok(())
}

/// Serializes a manifest.
pub fn encode(files: &[FileEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + files.iter().map(|f| 42 + f.path.len()).sum::<usize>());
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for f in files {
        let path = &f.path.as_bytes()[..f.path.len().min(MAX_PATH_BYTES)];
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&f.size.to_le_bytes());
        out.extend_from_slice(&f.hash);
    }
    out
}

/// Parses and checks a manifest.
pub fn decode(bytes: &[u8]) -> Result<Vec<FileEntry>, ManifestError> {
    let mut r = Reader::new(bytes);
    let count = r.u32()? as usize;
    if count == 0 || count > MAX_FILES {
        return Err(ManifestError::FileCount(count));
    }
    let mut files = Vec::with_capacity(count.min(bytes.len() / 42 + 1));
    let mut total: u64 = 0;
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let raw = r.take(len)?;
        let path = String::from_utf8(raw.to_vec()).map_err(|_| ManifestError::Path {
            path: String::from_utf8_lossy(raw).into_owned(),
            why: "not valid UTF-8",
        })?;
        let size = r.u64()?;
        let hash: [u8; 32] = r.array()?;
        check_path(&path)?;
        if size > MAX_FILE_SIZE {
            return Err(ManifestError::Size { path, size });
        }
        total = total.saturating_add(size);
        if total > MAX_TOTAL_SIZE {
            return Err(ManifestError::TotalSize);
        }
        files.push(FileEntry { path, size, hash });
    }
    r.end()?;
    let mut seen: HashSet<&str> = HashSet::with_capacity(files.len());
    for f in &files {
        if !seen.insert(f.path.as_str()) {
            return Err(ManifestError::Duplicate(f.path.clone()));
        }
    }
    // A file may not also be a folder of another file ("a" and "a/b").
    for f in &files {
        let mut prefix = f.path.as_str();
        while let Some(i) = prefix.rfind('/') {
            prefix = &prefix[..i];
            if seen.contains(prefix) {
                return Err(ManifestError::Duplicate(prefix.to_owned()));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            hash: [1; 32],
        }
    }

    #[test]
    fn good_manifests_round_trip() {
        let files = vec![
            entry("photos/2026/beach.jpg", 5_000_000),
            entry("notes.txt", 0),
            entry("Ünïcødé 名前.md", 10),
        ];
        assert_eq!(decode(&encode(&files)).unwrap(), files);
    }

    #[test]
    fn hostile_names_are_rejected_with_a_reason() {
        let long = "x".repeat(256);
        let cases = [
            "",
            "/etc/passwd",
            "../up",
            "a/../../b",
            "a//b",
            "./a",
            "a/.",
            "nul\0byte",
            "bell\u{7}",
            "c:evil",
            "back\\slash",
            "CON",
            "con.txt",
            "Lpt9.log",
            "trailing.",
            "trailing ",
            "a/COM1/b",
            long.as_str(),
        ];
        for path in cases {
            let err = decode(&encode(&[entry(path, 1)])).unwrap_err();
            assert!(matches!(err, ManifestError::Path { .. }), "{path:?}: {err}");
            assert!(!err.to_string().is_empty());
        }
        assert!(check_path(&format!("{}/{}", "d".repeat(255), "f".repeat(255))).is_ok());
    }

    #[test]
    fn absurd_sizes_and_counts_are_rejected() {
        assert!(matches!(
            decode(&encode(&[entry("big", u64::MAX)])),
            Err(ManifestError::Size { .. })
        ));
        let many: Vec<FileEntry> = (0..5)
            .map(|i| entry(&format!("f{i}"), MAX_FILE_SIZE))
            .collect();
        assert_eq!(decode(&encode(&many)), Err(ManifestError::TotalSize));
        assert_eq!(decode(&encode(&[])), Err(ManifestError::FileCount(0)));
        let mut lie = encode(&[entry("a", 1)]);
        lie[..4].copy_from_slice(&(MAX_FILES as u32 + 1).to_le_bytes());
        assert_eq!(decode(&lie), Err(ManifestError::FileCount(MAX_FILES + 1)));
        // Claims 1000 files but holds one: truncated, not a huge allocation.
        let mut short = encode(&[entry("a", 1)]);
        short[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decode(&short), Err(ManifestError::Corrupt(_))));
    }

    #[test]
    fn duplicates_and_file_folder_clashes_are_rejected() {
        assert!(matches!(
            decode(&encode(&[entry("a", 1), entry("a", 2)])),
            Err(ManifestError::Duplicate(_))
        ));
        assert!(matches!(
            decode(&encode(&[entry("a", 1), entry("a/b", 2)])),
            Err(ManifestError::Duplicate(_))
        ));
        assert!(decode(&encode(&[entry("a/b", 1), entry("a/c", 2)])).is_ok());
    }
}
