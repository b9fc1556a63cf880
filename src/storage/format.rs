//! On-disk encoding: file headers, checksummed frames, and the payloads inside frames
//! (record groups in log segments, entry chunks in snapshots).
//!
//! Everything is little-endian. See the [module docs](super) for the layout and the
//! recovery rule that uses it.

use super::Op;

/// Size of a file header (segment or snapshot).
pub(crate) const FILE_HEADER_LEN: usize = 24;
/// Size of a frame header.
pub(crate) const FRAME_HEADER_LEN: usize = 24;
/// Magic of a log segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"KVNWAL\0\0";
/// Magic of a snapshot file.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"KVNSNAP\0";
/// Format version written in every file header.
pub(crate) const VERSION: u32 = 1;

/// Payload tag: one atomic record group (log segments).
pub(crate) const TAG_GROUP: u8 = 1;
/// Payload tag: a chunk of live entries (snapshots).
pub(crate) const TAG_CHUNK: u8 = 2;
/// Payload tag: the end of a snapshot, with the total entry count.
pub(crate) const TAG_END: u8 = 3;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Largest key or value one op can carry (lengths are stored as `u32`).
pub(crate) const MAX_ITEM_LEN: usize = u32::MAX as usize;

/// Encodes a file header: magic, version, sequence number, CRC32 of the first 20 bytes.
pub(crate) fn file_header(magic: [u8; 8], seq: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header; returns why it is bad, if it is.
pub(crate) fn check_file_header(h: &[u8], magic: [u8; 8], seq: u64) -> Result<(), String> {
    if h.len() < FILE_HEADER_LEN {
        return Err(format!("file header is short ({} bytes)", h.len()));
    }
    if h[0..8] != magic {
        return Err("bad magic in file header".to_string());
    }
    if crc32fast::hash(&h[0..20]) != u32_at(h, 20) {
        return Err("file header checksum mismatch".to_string());
    }
    let version = u32_at(h, 8);
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let found = u64_at(h, 12);
    if found != seq {
        return Err(format!(
            "file header names sequence {found}, file name says {seq}"
        ));
    }
    Ok(())
}

/// Encodes a frame header for a payload of `len` bytes with checksum `payload_crc`,
/// written by the batch that starts at `batch_start` in the same file.
///
/// Layout: `len: u64, batch_start: u64, payload_crc: u32, header_crc: u32` where
/// `header_crc` is the CRC32 of the first 20 bytes.
pub(crate) fn frame_header(len: u64, batch_start: u64, payload_crc: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&batch_start.to_le_bytes());
    h[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A frame header whose own checksum is valid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub len: u64,
    pub batch_start: u64,
    pub payload_crc: u32,
}

/// Parses a frame header; `None` if it is short or its checksum does not match.
pub(crate) fn parse_frame_header(h: &[u8]) -> Option<FrameHeader> {
    if h.len() < FRAME_HEADER_LEN || crc32fast::hash(&h[0..20]) != u32_at(h, 20) {
        return None;
    }
    Some(FrameHeader {
        len: u64_at(h, 0),
        batch_start: u64_at(h, 8),
        payload_crc: u32_at(h, 16),
    })
}

/// Encodes one record group (the payload of one log frame).
///
/// Layout: `TAG_GROUP, count: u32`, then per op `OP_PUT, klen: u32, key, vlen: u32, value`
/// or `OP_DELETE, klen: u32, key`. Fails (with the offending length) if a key or value
/// does not fit a `u32` length.
pub(crate) fn encode_group(ops: &[Op]) -> Result<Vec<u8>, u64> {
    let mut size = 5usize;
    for op in ops {
        size += match op {
            Op::Put { key, value } => {
                check_len(key.len())?;
                check_len(value.len())?;
                9 + key.len() + value.len()
            }
            Op::Delete { key } => {
                check_len(key.len())?;
                5 + key.len()
            }
        };
    }
    let count = u32::try_from(ops.len()).map_err(|_| ops.len() as u64)?;
    let mut out = Vec::with_capacity(size);
    out.push(TAG_GROUP);
    out.extend_from_slice(&count.to_le_bytes());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                out.push(OP_PUT);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Op::Delete { key } => {
                out.push(OP_DELETE);
                put_bytes(&mut out, key);
            }
        }
    }
    Ok(out)
}

fn check_len(len: usize) -> Result<(), u64> {
    if len > MAX_ITEM_LEN {
        Err(len as u64)
    } else {
        Ok(())
    }
}

/// Appends `u32 length, bytes`; the caller has checked the length fits.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decoded contents of one frame payload.
#[derive(Debug)]
pub(crate) enum Payload {
    /// A record group from a log segment.
    Group(Vec<Op>),
    /// Entries from a snapshot.
    Chunk(Vec<(Vec<u8>, Vec<u8>)>),
    /// End of a snapshot: how many entries it holds.
    End(u64),
}

/// Decodes a frame payload whose checksum has been verified. An error here means the
/// writer and reader disagree (a bug or a foreign file), never a torn write.
pub(crate) fn decode_payload(p: &[u8]) -> Result<Payload, String> {
    let mut r = Reader { buf: p, pos: 0 };
    let payload = match r.u8()? {
        TAG_GROUP => {
            let count = r.u32()?;
            let mut ops = Vec::with_capacity((count as usize).min(1 << 16));
            for _ in 0..count {
                match r.u8()? {
                    OP_PUT => {
                        let key = r.bytes()?;
                        let value = r.bytes()?;
                        ops.push(Op::Put { key, value });
                    }
                    OP_DELETE => ops.push(Op::Delete { key: r.bytes()? }),
                    other => return Err(format!("unknown op tag {other}")),
                }
            }
            Payload::Group(ops)
        }
        TAG_CHUNK => {
            let count = r.u32()?;
            let mut entries = Vec::with_capacity((count as usize).min(1 << 16));
            for _ in 0..count {
                let key = r.bytes()?;
                let value = r.bytes()?;
                entries.push((key, value));
            }
            Payload::Chunk(entries)
        }
        TAG_END => Payload::End(r.u64()?),
        other => return Err(format!("unknown payload tag {other}")),
    };
    if r.pos != p.len() {
        return Err(format!("{} trailing bytes in payload", p.len() - r.pos));
    }
    Ok(payload)
}

/// Builds snapshot chunk payloads of roughly `target` bytes each.
pub(crate) struct ChunkBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl ChunkBuilder {
    pub(crate) fn new() -> Self {
        let mut b = ChunkBuilder {
            buf: Vec::new(),
            count: 0,
        };
        b.reset();
        b
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.buf.push(TAG_CHUNK);
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.count = 0;
    }

    /// Adds an entry; lengths must fit `u32` (they came through [`encode_group`]).
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
        self.count += 1;
    }

    /// Payload bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Entries so far.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Returns the finished payload and starts a new one.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let count = self.count.to_le_bytes();
        self.buf[1..5].copy_from_slice(&count);
        let out = std::mem::take(&mut self.buf);
        self.reset();
        out
    }
}

/// The payload that ends a snapshot.
pub(crate) fn end_payload(total: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(TAG_END);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("payload too short at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Reads a little-endian `u32` at `at`; callers have checked the length.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads a little-endian `u64` at `at`; callers have checked the length.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_round_trip() {
        let ops = vec![
            Op::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            Op::Delete { key: b"d".to_vec() },
        ];
        let enc = encode_group(&ops).unwrap_or_default();
        match decode_payload(&enc) {
            Ok(Payload::Group(back)) => assert_eq!(back, ops),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frame_header_checks() {
        let h = frame_header(10, 5, 77);
        let p = parse_frame_header(&h).map(|f| (f.len, f.batch_start, f.payload_crc));
        assert_eq!(p, Some((10, 5, 77)));
        let mut bad = h;
        bad[3] ^= 1;
        assert!(parse_frame_header(&bad).is_none());
        assert!(parse_frame_header(&[0u8; FRAME_HEADER_LEN]).is_none());
    }
}
