//! Measuring terms that were already validated (see [`super::validate_term`]) without
//! validating them again: the hot path locates the parts of a call (pids, tags, requests) many
//! times per message, and re-running the validator for each was a visible share of a call.

use super::{
    ATOM_EXT as ATOM, ATOM_UTF8_EXT as ATOM_UTF8, BINARY_EXT as BINARY, INTEGER_EXT as INTEGER,
    LIST_EXT as LIST, NEW_PID_EXT as NEW_PID, NEW_REFERENCE_EXT as NEW_REFERENCE,
    NEWER_REFERENCE_EXT as NEWER_REFERENCE, NIL_EXT as NIL, PID_EXT as PID,
    SMALL_ATOM_EXT as SMALL_ATOM, SMALL_ATOM_UTF8_EXT as SMALL_ATOM_UTF8,
    SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE,
};

/// The name of the atom at the start of `buf`, and its encoded length.
pub fn atom(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (&tag, rest) = buf.split_first()?;
    let (len, skip) = match tag {
        ATOM_UTF8 | ATOM => (
            u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
            2,
        ),
        SMALL_ATOM_UTF8 | SMALL_ATOM => (*rest.first()? as usize, 1),
        _ => return None,
    };
    Some((rest.get(skip..skip + len)?, 1 + skip + len))
}

/// The length of the validated term at the start of `buf`, for the kinds calls are made of
/// (pids, references, atoms, small integers, binaries, small tuples, lists); `None` for other
/// kinds or deeper nesting (ask the validator then). Never measures past the end of `buf`.
pub fn skip(buf: &[u8]) -> Option<usize> {
    skip_at(buf, 0)
}

/// Tuples and lists nest at most this deep in [`skip`]; deeper terms are measured by the
/// validator instead.
const MAX_SKIP_DEPTH: u32 = 8;

/// The length of the already validated term at the start of `buf`, for the kinds calls are
/// made of (pids, references, atoms, small integers, binaries, small tuples, lists), without
/// validating it again; `None` for other kinds (the caller asks the validator).
fn skip_at(buf: &[u8], depth: u32) -> Option<usize> {
    let (&tag, rest) = buf.split_first()?;
    let be16 = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]) as usize)
    };
    let be32 = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let len = match tag {
        SMALL_INTEGER => 2,
        INTEGER => 5,
        NIL => 1,
        ATOM | SMALL_ATOM | ATOM_UTF8 | SMALL_ATOM_UTF8 => atom(buf)?.1,
        BINARY => 5 + be32(0)?,
        NEW_PID => 1 + atom(rest)?.1 + 12,
        PID => 1 + atom(rest)?.1 + 9,
        NEWER_REFERENCE => 3 + atom(rest.get(2..)?)?.1 + 4 + 4 * be16(0)?,
        NEW_REFERENCE => 3 + atom(rest.get(2..)?)?.1 + 1 + 4 * be16(0)?,
        SMALL_TUPLE if depth < MAX_SKIP_DEPTH => {
            let mut pos = 2;
            for _ in 0..*rest.first()? {
                pos += skip_at(buf.get(pos..)?, depth + 1)?;
            }
            pos
        }
        LIST if depth < MAX_SKIP_DEPTH => {
            let mut pos = 5;
            // The elements, then the tail.
            for _ in 0..=be32(0)? {
                pos += skip_at(buf.get(pos..)?, depth + 1)?;
            }
            pos
        }
        _ => return None,
    };
    (len <= buf.len()).then_some(len)
}
