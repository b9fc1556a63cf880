//! Opening a data directory: finding the files, reading the newest snapshot, replaying the
//! log segments after it and deciding whether damage is a torn tail or corruption.

use super::format::{
    self, FILE_HEADER_LEN, FRAME_HEADER_LEN, Payload, SEGMENT_MAGIC, SNAPSHOT_MAGIC,
};
use super::{DroppedTail, Op, StorageError, io_err};
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

/// The live state as a map.
pub(crate) type State = HashMap<Vec<u8>, Vec<u8>>;

/// Reads snapshot `seq` completely. Any damage is [`StorageError::Corrupt`]: a snapshot is
/// renamed into place only after it was written and fsync'd, so it is never legitimately torn.
pub(crate) fn read_snapshot(path: &Path, seq: u64) -> Result<(State, u64), StorageError> {
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
    let mut map = HashMap::new();
    let mut pos = FILE_HEADER_LEN as u64;
    loop {
        let frame = match read_frame(&mut r, pos, file_len) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(corrupt(path, pos, "snapshot ends without its end record")),
            Err(why) => return Err(corrupt(path, pos, why)),
        };
        let (payload, next) = frame;
        match format::decode_payload(&payload).map_err(|why| corrupt(path, pos, why))? {
            Payload::Chunk(entries) => map.extend(entries),
            Payload::End(total) => {
                if total != map.len() as u64 {
                    return Err(corrupt(
                        path,
                        pos,
                        format!("snapshot says {total} entries, found {}", map.len()),
                    ));
                }
                if next != file_len {
                    return Err(corrupt(path, next, "data after the snapshot's end record"));
                }
                return Ok((map, file_len));
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

/// Replays segment `seq`, calling `apply` for every record group in order.
///
/// In a segment that is not the last one, any bad frame is corruption. In the last one, a
/// bad frame at offset `X` ends the log there (a torn tail) unless some valid frame after
/// `X` names a batch start greater than `X`: such a frame was written by a later commit,
/// which the writer only starts after the commit holding `X` was fsync'd and acknowledged,
/// so the damage hit acknowledged data and recovery refuses with [`StorageError::Corrupt`].
pub(crate) fn replay_segment(
    path: &Path,
    seq: u64,
    is_last: bool,
    apply: &mut dyn FnMut(Vec<Op>),
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
                    Payload::Group(ops) => apply(ops),
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
