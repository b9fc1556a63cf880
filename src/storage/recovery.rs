//! Opening a data directory: finding the files, reading the newest snapshot, replaying the
//! log segments after it and deciding whether damage is a torn tail or corruption.

use super::format::{
    self, FILE_HEADER_LEN, FRAME_HEADER_LEN, Payload, SEGMENT_MAGIC, SNAPSHOT_MAGIC,
};
use super::{DroppedTail, Entry, KeyIdentity, Op, StorageError, io_err};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The files found in a data directory, by sequence number.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub snapshots: BTreeMap<u64, PathBuf>,
    pub segments: BTreeMap<u64, PathBuf>,
    /// Leftover `*.tmp` files from an interrupted snapshot or rotation.
    pub temps: Vec<PathBuf>,
}

/// File name of log segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

/// File name of snapshot `seq`.
pub(crate) fn snapshot_name(seq: u64) -> String {
    format!("snap-{seq:016x}.snap")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Lists the storage files in `dir`; other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Listing, StorageError> {
    let mut l = Listing::default();
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io_err("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_name(name, "wal-", ".log") {
            l.segments.insert(seq, entry.path());
        } else if let Some(seq) = parse_name(name, "snap-", ".snap") {
            l.snapshots.insert(seq, entry.path());
        } else if name.ends_with(".tmp") && (name.starts_with("wal-") || name.starts_with("snap-"))
        {
            l.temps.push(entry.path());
        }
    }
    Ok(l)
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Bytes of a key shown in an error: enough to recognise it, bounded whatever its size.
const KEY_EXCERPT: usize = 32;

/// `len` and the first [`KEY_EXCERPT`] bytes of `key` in hex, for error messages.
pub(crate) fn key_excerpt(key: &[u8]) -> String {
    let shown = &key[..key.len().min(KEY_EXCERPT)];
    let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    let more = if key.len() > shown.len() { "..." } else { "" };
    format!("{} bytes: {hex}{more}", key.len())
}

/// The live state being rebuilt: entries by key identity (see "Key identity" in the module
/// docs), each with the key's bytes as last written and the value.
pub(crate) struct State<'a> {
    map: HashMap<Vec<u8>, (Vec<u8>, Vec<u8>), foldhash::fast::RandomState>,
    identity: &'a KeyIdentity,
    scratch: Vec<u8>,
}

impl<'a> State<'a> {
    pub(crate) fn new(identity: &'a KeyIdentity) -> Self {
        State {
            map: HashMap::default(),
            identity,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The identity of `key` into `self.scratch`, or why it has none.
    fn identify(&mut self, key: &[u8]) -> Result<(), String> {
        self.scratch.clear();
        (self.identity)(key, &mut self.scratch).map_err(|why| {
            format!(
                "a key that is not a valid key ({}): {why}",
                key_excerpt(key)
            )
        })
    }

    /// Applies one log record group, op by op, in order.
    fn apply(&mut self, ops: Vec<Op>) -> Result<(), String> {
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.identify(&key)?;
                    match self.map.get_mut(self.scratch.as_slice()) {
                        Some(entry) => *entry = (key, value),
                        None => {
                            self.map.insert(self.scratch.clone(), (key, value));
                        }
                    }
                }
                Op::Delete { key } => {
                    self.identify(&key)?;
                    self.map.remove(self.scratch.as_slice());
                }
            }
        }
        Ok(())
    }

    /// Adds one snapshot entry; a snapshot holds each key once.
    fn load(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        self.identify(&key)?;
        if self.map.contains_key(self.scratch.as_slice()) {
            return Err(format!(
                "two snapshot entries for the same key ({})",
                key_excerpt(&key)
            ));
        }
        self.map.insert(self.scratch.clone(), (key, value));
        Ok(())
    }

    pub(crate) fn into_entries(self) -> Vec<Entry> {
        self.map
            .into_iter()
            .map(|(id, (key, value))| Entry { id, key, value })
            .collect()
    }
}

/// Reads snapshot `seq` completely into `state` (which must be empty) and returns the
/// snapshot's size. Any damage is [`StorageError::Corrupt`]: a snapshot is renamed into place
/// only after it was written and fsync'd, so it is never legitimately torn.
pub(crate) fn read_snapshot(
    path: &Path,
    seq: u64,
    state: &mut State<'_>,
) -> Result<u64, StorageError> {
    let file = File::open(path).map_err(|e| io_err("open snapshot", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io_err("stat snapshot", path, e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; FILE_HEADER_LEN];
    r.read_exact(&mut header)
        .map_err(|_| corrupt(path, 0, "snapshot shorter than its header"))?;
    format::check_file_header(&header, SNAPSHOT_MAGIC, seq).map_err(|why| corrupt(path, 0, why))?;
    let mut pos = FILE_HEADER_LEN as u64;
    loop {
        let frame = match read_frame(&mut r, pos, file_len) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(corrupt(path, pos, "snapshot ends without its end record")),
            Err(why) => return Err(corrupt(path, pos, why)),
        };
        let (payload, next) = frame;
        match format::decode_payload(&payload).map_err(|why| corrupt(path, pos, why))? {
            Payload::Chunk(entries) => {
                for (key, value) in entries {
                    state
                        .load(key, value)
                        .map_err(|why| corrupt(path, pos, why))?;
                }
            }
            Payload::End(total) => {
                if total != state.len() as u64 {
                    return Err(corrupt(
                        path,
                        pos,
                        format!("snapshot says {total} entries, found {}", state.len()),
                    ));
                }
                if next != file_len {
                    return Err(corrupt(path, next, "data after the snapshot's end record"));
                }
                return Ok(file_len);
            }
            Payload::Group(_) => return Err(corrupt(path, pos, "log record inside a snapshot")),
        }
        pos = next;
    }
}

/// Reads the frame at `pos`: `Ok(None)` at a clean end of file, `Err(why)` if the frame is
/// short or fails a checksum, otherwise the payload and the offset after the frame.
fn read_frame<R: Read>(
    r: &mut R,
    pos: u64,
    file_len: u64,
) -> Result<Option<(Vec<u8>, u64)>, String> {
    if pos == file_len {
        return Ok(None);
    }
    let remaining = file_len - pos;
    if remaining < FRAME_HEADER_LEN as u64 {
        return Err(format!("short frame header ({remaining} bytes)"));
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|e| format!("read failed: {e}"))?;
    let fh = format::parse_frame_header(&h).ok_or("frame header checksum mismatch")?;
    if fh.len > remaining - FRAME_HEADER_LEN as u64 {
        return Err(format!(
            "frame of {} bytes runs past the end of the file",
            fh.len
        ));
    }
    if fh.batch_start > pos {
        return Err(format!(
            "frame names a batch start {} after itself",
            fh.batch_start
        ));
    }
    let len = usize::try_from(fh.len).map_err(|_| "frame too large for this machine")?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .map_err(|e| format!("read failed: {e}"))?;
    if crc32fast::hash(&payload) != fh.payload_crc {
        return Err("payload checksum mismatch".to_string());
    }
    Ok(Some((payload, pos + FRAME_HEADER_LEN as u64 + fh.len)))
}

/// The outcome of replaying one segment.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Offset just after the last good frame: where appends continue.
    pub end: u64,
    /// Record groups replayed.
    pub records: u64,
    /// The torn tail that was found (only ever in the last segment).
    pub dropped: Option<DroppedTail>,
}

/// Replays segment `seq` into `state`, every record group in order.
///
/// In a segment that is not the last one, any bad frame is corruption. In the last one, a
/// bad frame at offset `X` ends the log there (a torn tail) unless some valid frame after
/// `X` names a batch start greater than `X`: such a frame was written by a later commit,
/// which the writer only starts after the commit holding `X` was fsync'd and acknowledged,
/// so the damage hit acknowledged data and recovery refuses with [`StorageError::Corrupt`].
/// A key the identity function refuses is [`StorageError::Corrupt`] too, at its frame.
pub(crate) fn replay_segment(
    path: &Path,
    seq: u64,
    is_last: bool,
    state: &mut State<'_>,
) -> Result<SegmentScan, StorageError> {
    let mut file = File::open(path).map_err(|e| io_err("open segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io_err("stat segment", path, e))?
        .len();
    let mut header = [0u8; FILE_HEADER_LEN];
    {
        let mut r = BufReader::new(&mut file);
        r.read_exact(&mut header)
            .map_err(|_| corrupt(path, 0, "segment shorter than its header"))?;
    }
    format::check_file_header(&header, SEGMENT_MAGIC, seq).map_err(|why| corrupt(path, 0, why))?;
    file.seek(SeekFrom::Start(FILE_HEADER_LEN as u64))
        .map_err(|e| io_err("seek segment", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, &mut file);
    let mut pos = FILE_HEADER_LEN as u64;
    let mut records = 0u64;
    loop {
        match read_frame(&mut r, pos, file_len) {
            Ok(None) => {
                return Ok(SegmentScan {
                    end: pos,
                    records,
                    dropped: None,
                });
            }
            Ok(Some((payload, next))) => {
                match format::decode_payload(&payload).map_err(|why| corrupt(path, pos, why))? {
                    Payload::Group(ops) => {
                        state.apply(ops).map_err(|why| corrupt(path, pos, why))?
                    }
                    _ => return Err(corrupt(path, pos, "snapshot record inside a log segment")),
                }
                records += 1;
                pos = next;
            }
            Err(why) => {
                if !is_last {
                    return Err(corrupt(
                        path,
                        pos,
                        format!("{why} (in a log segment that is not the last one)"),
                    ));
                }
                drop(r);
                check_tail(&mut file, path, pos, file_len)?;
                return Ok(SegmentScan {
                    end: pos,
                    records,
                    dropped: Some(DroppedTail {
                        file: path.to_path_buf(),
                        offset: pos,
                        bytes: file_len - pos,
                        reason: why,
                    }),
                });
            }
        }
    }
}

/// Looks at every offset after the bad frame at `bad` for a complete, valid frame from a
/// later commit (batch start > `bad`); finding one means acknowledged data was damaged.
fn check_tail(file: &mut File, path: &Path, bad: u64, file_len: u64) -> Result<(), StorageError> {
    file.seek(SeekFrom::Start(bad))
        .map_err(|e| io_err("seek segment", path, e))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)
        .map_err(|e| io_err("read segment", path, e))?;
    if (rest.len() as u64) != file_len - bad {
        return Err(io_err(
            "read segment",
            path,
            std::io::Error::other("segment changed size during recovery"),
        ));
    }
    for i in 1..rest.len() {
        let Some(fh) = format::parse_frame_header(&rest[i..]) else {
            continue;
        };
        let start = i + FRAME_HEADER_LEN;
        let Some(end) = usize::try_from(fh.len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= rest.len())
        else {
            continue;
        };
        if crc32fast::hash(&rest[start..end]) != fh.payload_crc {
            continue;
        }
        let at = bad + i as u64;
        if fh.batch_start > bad && fh.batch_start <= at {
            return Err(corrupt(
                path,
                bad,
                format!(
                    "damaged record followed by a valid record of a later commit at offset {at}"
                ),
            ));
        }
    }
    Ok(())
}
