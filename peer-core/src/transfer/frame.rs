//! Binary frames of the transfer protocol, as sent on the data channel.
//!
//! Every frame starts with a version byte, a kind byte and the 16-byte
//! transfer id; integers are little-endian. Decoding checks every length and
//! never panics; anything malformed is a [`FrameError`].

/// First byte of every transfer frame.
pub const FRAME_VERSION: u8 = 1;

/// Bytes before the kind-specific part: version, kind, transfer id.
pub const HEADER_LEN: usize = 2 + 16;

/// Overhead of a `Chunk` frame in front of its data.
pub const CHUNK_HEADER_LEN: usize = HEADER_LEN + 4 + 8;

/// Most chunk requests in one `Request` frame.
pub const MAX_REQUESTS_PER_FRAME: usize = 1024;

/// Longest reason text in `Decline`, `Cancel` and `Error`.
pub const MAX_REASON_LEN: usize = 1024;

/// Identifies one offer (and its resumptions) between two peers.
pub type TransferId = [u8; 16];

/// Which metadata a `MetaRequest`/`MetaData` frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// The serialized manifest.
    Manifest,
    /// The chunk chaining values of one file.
    HashList(u32),
}

/// A frame of the transfer protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Sender → receiver: files are on offer; fetch the manifest to see them.
    Offer {
        /// The transfer.
        id: TransferId,
        /// Chunk size, a power of two.
        chunk_size: u32,
        /// Number of files.
        file_count: u32,
        /// Sum of file sizes.
        total_bytes: u64,
        /// Length of the serialized manifest.
        manifest_len: u32,
        /// BLAKE3 of the serialized manifest.
        manifest_hash: [u8; 32],
    },
    /// Receiver → sender: the offer is accepted.
    Accept {
        /// The transfer.
        id: TransferId,
    },
    /// Receiver → sender: the offer is declined.
    Decline {
        /// The transfer.
        id: TransferId,
        /// Why, for the sender's user.
        reason: String,
    },
    /// Either side: stop the transfer.
    Cancel {
        /// The transfer.
        id: TransferId,
        /// Why.
        reason: String,
    },
    /// Receiver → sender: send a range of metadata bytes.
    MetaRequest {
        /// The transfer.
        id: TransferId,
        /// Which metadata.
        meta: Meta,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
    },
    /// Sender → receiver: a range of metadata bytes.
    MetaData {
        /// The transfer.
        id: TransferId,
        /// Which metadata.
        meta: Meta,
        /// Byte offset.
        offset: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Receiver → sender: send these chunks.
    Request {
        /// The transfer.
        id: TransferId,
        /// (file index, chunk index) pairs.
        chunks: Vec<(u32, u64)>,
    },
    /// Sender → receiver: one chunk.
    Chunk {
        /// The transfer.
        id: TransferId,
        /// File index.
        file: u32,
        /// Chunk index.
        chunk: u64,
        /// The chunk's bytes.
        data: Vec<u8>,
    },
    /// Receiver → sender: every file arrived and verified.
    Done {
        /// The transfer.
        id: TransferId,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its fields require.
    #[error("frame truncated")]
    Truncated,
    /// Longer than its fields.
    #[error("frame has trailing bytes")]
    Trailing,
    /// Version byte is not [`FRAME_VERSION`].
    #[error("unsupported transfer frame version {0}")]
    Version(u8),
    /// Unknown kind byte.
    #[error("unknown transfer frame kind {0}")]
    Kind(u8),
    /// A field is out of range (text not UTF-8, too many requests, ...).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

mod kind {
    pub(super) const OFFER: u8 = 1;
    pub(super) const ACCEPT: u8 = 2;
    pub(super) const DECLINE: u8 = 3;
    pub(super) const CANCEL: u8 = 4;
    pub(super) const META_REQUEST: u8 = 5;
    pub(super) const META_DATA: u8 = 6;
    pub(super) const REQUEST: u8 = 7;
    pub(super) const CHUNK: u8 = 8;
    pub(super) const DONE: u8 = 9;
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, id: &TransferId, extra: usize) -> Self {
        let mut v = Vec::with_capacity(HEADER_LEN + extra);
        v.push(FRAME_VERSION);
        v.push(kind);
        v.extend_from_slice(id);
        Self(v)
    }
    fn u8(&mut self, x: u8) -> &mut Self {
        self.0.push(x);
        self
    }
    fn u16(&mut self, x: u16) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn text(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(MAX_REASON_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).bytes(&s.as_bytes()[..end])
    }
    fn meta(&mut self, m: Meta) -> &mut Self {
        match m {
            Meta::Manifest => self.u8(0).u32(0),
            Meta::HashList(f) => self.u8(1).u32(f),
        }
    }
}

/// A bounds-checked reader over a frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FrameError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn text(&mut self) -> Result<String, FrameError> {
        let n = usize::from(self.u16()?);
        if n > MAX_REASON_LEN {
            return Err(FrameError::Invalid("reason too long"));
        }
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| FrameError::Invalid("reason is not UTF-8"))
    }
    fn meta(&mut self) -> Result<Meta, FrameError> {
        match (self.u8()?, self.u32()?) {
            (0, _) => Ok(Meta::Manifest),
            (1, f) => Ok(Meta::HashList(f)),
            _ => Err(FrameError::Invalid("metadata kind")),
        }
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(crate) fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing)
        }
    }
}

impl Frame {
    /// The transfer this frame belongs to.
    pub fn id(&self) -> &TransferId {
        match self {
            Self::Offer { id, .. }
            | Self::Accept { id }
            | Self::Decline { id, .. }
            | Self::Cancel { id, .. }
            | Self::MetaRequest { id, .. }
            | Self::MetaData { id, .. }
            | Self::Request { id, .. }
            | Self::Chunk { id, .. }
            | Self::Done { id } => id,
        }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Offer {
                id,
                chunk_size,
                file_count,
                total_bytes,
                manifest_len,
                manifest_hash,
            } => {
                let mut w = Writer::new(kind::OFFER, id, 52);
                w.u32(*chunk_size)
                    .u32(*file_count)
                    .u64(*total_bytes)
                    .u32(*manifest_len)
                    .bytes(manifest_hash);
                w.0
            }
            Self::Accept { id } => Writer::new(kind::ACCEPT, id, 0).0,
            Self::Done { id } => Writer::new(kind::DONE, id, 0).0,
            Self::Decline { id, reason } => {
                let mut w = Writer::new(kind::DECLINE, id, 2 + reason.len());
                w.text(reason);
                w.0
            }
            Self::Cancel { id, reason } => {
                let mut w = Writer::new(kind::CANCEL, id, 2 + reason.len());
                w.text(reason);
                w.0
            }
            Self::MetaRequest {
                id,
                meta,
                offset,
                len,
            } => {
                let mut w = Writer::new(kind::META_REQUEST, id, 13);
                w.meta(*meta).u32(*offset).u32(*len);
                w.0
            }
            Self::MetaData {
                id,
                meta,
                offset,
                data,
            } => {
                let mut w = Writer::new(kind::META_DATA, id, 9 + data.len());
                w.meta(*meta).u32(*offset).bytes(data);
                w.0
            }
            Self::Request { id, chunks } => {
                let n = chunks.len().min(MAX_REQUESTS_PER_FRAME);
                let mut w = Writer::new(kind::REQUEST, id, 2 + 12 * n);
                w.u16(n as u16);
                for (f, c) in &chunks[..n] {
                    w.u32(*f).u64(*c);
                }
                w.0
            }
            Self::Chunk {
                id,
                file,
                chunk,
                data,
            } => {
                let mut w = Writer::new(kind::CHUNK, id, 12 + data.len());
                w.u32(*file).u64(*chunk).bytes(data);
                w.0
            }
        }
    }

    /// Decodes a frame; never panics.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != FRAME_VERSION {
            return Err(FrameError::Version(version));
        }
        let k = r.u8()?;
        let id: TransferId = r.array()?;
        let frame = match k {
            kind::OFFER => Self::Offer {
                id,
                chunk_size: r.u32()?,
                file_count: r.u32()?,
                total_bytes: r.u64()?,
                manifest_len: r.u32()?,
                manifest_hash: r.array()?,
            },
            kind::ACCEPT => Self::Accept { id },
            kind::DONE => Self::Done { id },
            kind::DECLINE => Self::Decline {
                id,
                reason: r.text()?,
            },
            kind::CANCEL => Self::Cancel {
                id,
                reason: r.text()?,
            },
            kind::META_REQUEST => Self::MetaRequest {
                id,
                meta: r.meta()?,
                offset: r.u32()?,
                len: r.u32()?,
            },
            kind::META_DATA => Self::MetaData {
                id,
                meta: r.meta()?,
                offset: r.u32()?,
                data: r.rest().to_vec(),
            },
            kind::REQUEST => {
                let n = usize::from(r.u16()?);
                if n > MAX_REQUESTS_PER_FRAME {
                    return Err(FrameError::Invalid("too many requests in one frame"));
                }
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push((r.u32()?, r.u64()?));
                }
                Self::Request { id, chunks }
            }
            kind::CHUNK => Self::Chunk {
                id,
                file: r.u32()?,
                chunk: r.u64()?,
                data: r.rest().to_vec(),
            },
            other => return Err(FrameError::Kind(other)),
        };
        r.end()?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TransferId = [7; 16];

    fn all() -> Vec<Frame> {
        vec![
            Frame::Offer {
                id: ID,
                chunk_size: 131_072,
                file_count: 2,
                total_bytes: 1 << 30,
                manifest_len: 99,
                manifest_hash: [3; 32],
            },
            Frame::Accept { id: ID },
            Frame::Decline {
                id: ID,
                reason: "no thanks".into(),
            },
            Frame::Cancel {
                id: ID,
                reason: "stopped by the sender".into(),
            },
            Frame::MetaRequest {
                id: ID,
                meta: Meta::Manifest,
                offset: 0,
                len: 65_536,
            },
            Frame::MetaRequest {
                id: ID,
                meta: Meta::HashList(3),
                offset: 64,
                len: 32,
            },
            Frame::MetaData {
                id: ID,
                meta: Meta::HashList(1),
                offset: 32,
                data: vec![1, 2, 3],
            },
            Frame::Request {
                id: ID,
                chunks: vec![(0, 0), (1, 5), (u32::MAX, u64::MAX)],
            },
            Frame::Chunk {
                id: ID,
                file: 1,
                chunk: 2,
                data: vec![9; 100],
            },
            Frame::Done { id: ID },
        ]
    }

    #[test]
    fn frames_round_trip() {
        for f in all() {
            assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn golden_chunk_header() {
        let f = Frame::Chunk {
            id: [0xAB; 16],
            file: 1,
            chunk: 2,
            data: vec![0xFF],
        };
        let mut want = vec![1, 8];
        want.extend_from_slice(&[0xAB; 16]);
        want.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xFF]);
        assert_eq!(f.encode(), want);
        assert_eq!(CHUNK_HEADER_LEN, want.len() - 1);
    }

    #[test]
    fn truncations_and_garbage_are_errors_not_panics() {
        for f in all() {
            let bytes = f.encode();
            for cut in 0..bytes.len() {
                let _ = Frame::decode(&bytes[..cut]);
            }
        }
        assert_eq!(Frame::decode(&[]), Err(FrameError::Truncated));
        assert_eq!(Frame::decode(&[2, 1]), Err(FrameError::Version(2)));
        let mut bad = Frame::Accept { id: ID }.encode();
        bad.push(0);
        assert_eq!(Frame::decode(&bad), Err(FrameError::Trailing));
        let mut unknown = Frame::Accept { id: ID }.encode();
        unknown[1] = 200;
        assert_eq!(Frame::decode(&unknown), Err(FrameError::Kind(200)));
        let mut req = Frame::Request {
            id: ID,
            chunks: vec![],
        }
        .encode();
        req[HEADER_LEN] = 0xFF;
        req[HEADER_LEN + 1] = 0xFF;
        assert!(Frame::decode(&req).is_err());
    }
}
