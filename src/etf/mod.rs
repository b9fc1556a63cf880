//! Safe decoding of Erlang External Term Format (ETF) received from untrusted peers.
//!
//! kvnode decodes terms with the [`eetf`] crate, which trusts its input: `ATOM_CACHE_REF`
//! panics (`unimplemented!()`), list/tuple counts go straight into `Vec::with_capacity`,
//! recursion is unbounded and `COMPRESSED` terms are inflated without limit. Rather than fork
//! eetf, this module walks the bytes first ([`validate_term`], [`validate_versioned`]) and
//! only hands them to eetf ([`decode`]) once they are known to be safe. The validator mirrors
//! eetf 0.11's `decode_term_with_tag` tag by tag, so a validated term is guaranteed to:
//!
//! - decode without panicking (every tag, length, sign byte, bit count and nested
//!   atom/pid/integer that eetf would trip on has been checked);
//! - allocate in proportion to the input: every element count is backed by real elements,
//!   each at least one byte long, and nothing is decompressed. The worst case is one-byte
//!   elements such as `[]`, each becoming a 56-byte `eetf::Term`: a 1 MiB frame of nothing
//!   but `[]` becomes ~56 MiB of terms (up to ~3× that, briefly, for map pairs while eetf's
//!   `HashMap` grows). Callers must still cap the frame size;
//! - nest at most [`Limits::max_depth`] `decode_term` calls deep, which also bounds the
//!   recursion of eetf's encoder, `Drop`, `Hash`, `PartialEq` and `Display` on the result;
//! - hold at most [`Limits::max_terms`] terms (`decode_term` calls), which caps that
//!   amplification in absolute terms whatever the frame size: see [`DEFAULT_MAX_TERMS`].
//!
//! The validator itself is iterative: its stack is a heap `Vec` bounded by `max_depth`.
//!
//! # Stack budget
//!
//! Depth is counted in eetf `decode_term` calls: the top-level term is at depth 1 and every
//! nested term (list element, list tail, tuple element, map key or value, fun free variable,
//! and also the node atom of a pid/port/reference and the pid inside a fun) is one deeper.
//! An improper chain `[1|[2|[3|...]]]` nests through list tails and counts like any nesting.
//!
//! Measured with `cargo test --lib -- --ignored measure_stack_depth --nocapture` (it binary
//! searches in subprocesses, because a stack overflow aborts the process) with eetf 0.11 on
//! x86_64 and an 8 MiB thread stack (what kvnode's tokio workers get), doing decode, clone,
//! `==`, `Display`, `Debug`, encode and drop on the result:
//!
//! | build            | lists, improper tails | tuples | maps   | funs (free vars) |
//! |------------------|-----------------------|--------|--------|------------------|
//! | debug (opt 0)    | ~4 860                | ~6 080 | ~4 700 | ~2 580           |
//! | release          | ~6 080                | ~6 080 | ~6 080 | ~6 080           |
//!
//! That is up to ~3.3 KiB of stack per level unoptimised (funs; lists ~1.7 KiB) and ~1.4 KiB
//! in release (where eetf's whole decoder is inlined into one large frame). kvnode therefore
//! gives every thread that may decode, encode, clone, compare or drop a peer's term a stack of
//! [`stack_size_for_depth`]: [`BASE_STACK_BYTES`] plus [`STACK_BYTES_PER_LEVEL`] (4 KiB debug,
//! 2 KiB release) per level of `--max-term-depth` ([`DEFAULT_MAX_DEPTH`], 100 000): ~406 MiB
//! of address space per thread in debug, ~211 MiB in release, resident only as deep as terms
//! really go. The test `depth_limit_is_exact_and_the_default_fits_the_stack_kvnode_threads_get`
//! runs every shape at the default limit on exactly that stack. Nesting through map keys is
//! limited apart ([`DEFAULT_MAX_MAP_KEY_NESTING`]), because eetf hashes every map key whole.
//!
//! Spec: <https://www.erlang.org/doc/apps/erts/erl_ext_dist.html>.

/// The version byte that starts every externally encoded term.
pub const VERSION_MAGIC: u8 = 131;

/// `RECORD_EXT` (OTP 29 native records): `67, Arity:u32, Flags:u8, Module atom, Name atom`,
/// then `Arity` field-name atoms, then `Arity` values. Flags bit 0: the record is exported.
/// eetf has no term for it: kvnode keeps such terms as bytes (see [`TermError::NativeRecord`]).
pub(crate) const RECORD_EXT: u8 = 67;
pub(crate) const NEW_FLOAT_EXT: u8 = 70;
pub(crate) const BIT_BINARY_EXT: u8 = 77;
const COMPRESSED: u8 = 80;
const ATOM_CACHE_REF: u8 = 82;
pub(crate) const NEW_PID_EXT: u8 = 88;
pub(crate) const NEW_PORT_EXT: u8 = 89;
pub(crate) const NEWER_REFERENCE_EXT: u8 = 90;
pub(crate) const SMALL_INTEGER_EXT: u8 = 97;
pub(crate) const INTEGER_EXT: u8 = 98;
pub(crate) const FLOAT_EXT: u8 = 99;
pub(crate) const ATOM_EXT: u8 = 100;
pub(crate) const REFERENCE_EXT: u8 = 101;
pub(crate) const PORT_EXT: u8 = 102;
pub(crate) const PID_EXT: u8 = 103;
pub(crate) const SMALL_TUPLE_EXT: u8 = 104;
pub(crate) const LARGE_TUPLE_EXT: u8 = 105;
pub(crate) const NIL_EXT: u8 = 106;
pub(crate) const STRING_EXT: u8 = 107;
pub(crate) const LIST_EXT: u8 = 108;
pub(crate) const BINARY_EXT: u8 = 109;
pub(crate) const SMALL_BIG_EXT: u8 = 110;
pub(crate) const LARGE_BIG_EXT: u8 = 111;
pub(crate) const NEW_FUN_EXT: u8 = 112;
pub(crate) const EXPORT_EXT: u8 = 113;
pub(crate) const NEW_REFERENCE_EXT: u8 = 114;
pub(crate) const SMALL_ATOM_EXT: u8 = 115;
pub(crate) const MAP_EXT: u8 = 116;
pub(crate) const FUN_EXT: u8 = 117;
pub(crate) const ATOM_UTF8_EXT: u8 = 118;
pub(crate) const SMALL_ATOM_UTF8_EXT: u8 = 119;
pub(crate) const V4_PORT_EXT: u8 = 120;

/// Length of the fixed-width decimal string in `FLOAT_EXT`.
const FLOAT_EXT_LEN: usize = 31;

/// Default [`Limits::max_terms`]: 4 000 000 terms in one external term.
///
/// Every term eetf decodes is a 56-byte `eetf::Term` (x86_64, eetf 0.11; checked by the
/// test `term_size_behind_the_default_term_limit`) plus whatever it owns, so without this
/// limit a 128 MiB frame (the default `--max-message-size`) of one-byte `[]`s would become
/// 134 M terms, ~7.5 GB. At 4 M terms the `Term`s of one message take at most ~224 MB (up to
/// ~3× that for a moment while eetf's `HashMap` of a huge map grows), plus what they own
/// (binaries, atom names, bignums: the frame's bytes again, plus one allocation each).
/// Measured worst case at the defaults (README, "Floods and big messages"): a 124 MB
/// message of 4 M 26-byte binaries peaks at 773 MiB RSS. A legitimate message with 4 M small
/// terms (e.g. `Enum.to_list(1..4_000_000)`, 20 MB on the wire) still passes; bulk data
/// belongs in binaries, which count as one term whatever their size.
pub const DEFAULT_MAX_TERMS: usize = 4_000_000;

/// Default [`Limits::max_depth`] and `--max-term-depth`: 100 000 levels.
///
/// BEAM nodes accept terms nested far deeper than eetf's recursive decoder survives on a
/// normal stack, and legitimate data (a long chain of nested tuples, a linked structure built
/// from nested lists) does nest thousands of levels. kvnode accepts 100 000 and gives every
/// thread that may decode, encode, clone, compare or drop such a term a stack sized for it
/// ([`stack_size_for_depth`]); the stack is reserved address space, touched (resident) only
/// as deep as a term actually goes.
pub const DEFAULT_MAX_DEPTH: usize = 100_000;

/// The largest `--max-term-depth` accepted: each level reserves [`STACK_BYTES_PER_LEVEL`] of
/// address space on every kvnode thread, so 1 000 000 levels already reserve ~2 GiB (release)
/// per thread.
pub const MAX_MAX_DEPTH: usize = 1_000_000;

/// Default [`Limits::max_map_key_nesting`]: a term may sit inside at most 16 map keys
/// (a map used as a key of a map used as a key of ..., counting only the key positions).
///
/// eetf stores maps in a `HashMap<Term, Term>` and hashes every key, whole, when it inserts
/// it, so a map nested `n` levels deep through its keys costs `n²/2` steps to decode (and the
/// KV store's canonical key encodes keys apart before sorting them, the same
/// again). With at most 16 key positions above any term, decoding costs at most 16 steps
/// per term. Nesting through map *values*, lists and tuples is limited only by
/// [`Limits::max_depth`].
pub const DEFAULT_MAX_MAP_KEY_NESTING: usize = 16;

/// Stack bytes per level of term nesting that a kvnode thread reserves (see the module docs,
/// "Stack budget"): the most any recursive walk over an `eetf::Term` (eetf's decoder is the
/// deepest; funs cost most) was measured to need, plus about a quarter for margin. Debug
/// builds (what the tests run) need more than twice what release builds do.
pub const STACK_BYTES_PER_LEVEL: usize = if cfg!(debug_assertions) { 4096 } else { 2048 };

/// Stack every kvnode thread gets on top of `STACK_BYTES_PER_LEVEL` per level: its own
/// frames, the runtime's, tracing's and the allocator's.
pub const BASE_STACK_BYTES: usize = 16 * 1024 * 1024;

/// The stack a thread needs to decode, encode, clone, compare and drop terms nested
/// `max_depth` levels deep, with margin.
pub fn stack_size_for_depth(max_depth: usize) -> usize {
    max_depth
        .min(MAX_MAX_DEPTH)
        .saturating_mul(STACK_BYTES_PER_LEVEL)
        .saturating_add(BASE_STACK_BYTES)
}

static CONFIGURED_DEPTH: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_DEPTH);

/// Records the node's `--max-term-depth`, for threads started where the configuration is not
/// at hand (storage) and for terms that come back from the data directory. The node's own
/// business: [`crate::NodeBuilder`] sets it.
#[doc(hidden)]
pub fn set_configured_depth(max_depth: usize) {
    CONFIGURED_DEPTH.store(
        max_depth.min(MAX_MAX_DEPTH),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The depth recorded by [`set_configured_depth`] ([`DEFAULT_MAX_DEPTH`] before).
#[doc(hidden)]
pub fn configured_depth() -> usize {
    CONFIGURED_DEPTH.load(std::sync::atomic::Ordering::Relaxed)
}

/// [`stack_size_for_depth`] of [`configured_depth`]: what every thread that may touch a
/// decoded term is started with.
#[doc(hidden)]
pub fn thread_stack_size() -> usize {
    stack_size_for_depth(configured_depth())
}

/// Resource limits enforced by the validator on top of the structural checks, for one term.
/// Not the node's [`crate::Limits`] (connections, messages, mailboxes), which sets some of
/// these for the terms peers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting depth, counted in eetf `decode_term` calls (see the module docs).
    pub max_depth: usize,
    /// Maximum number of atoms in one term, node names of pids, ports and refs included.
    pub max_atoms: usize,
    /// Maximum number of terms (eetf `decode_term` calls: every list element and tail, tuple
    /// element, map key and value, and the atoms, pids and integers inside pids, ports,
    /// references and funs) in one term, or in the terms of one message when they are
    /// validated with `validate_versioned_counted`.
    pub max_terms: usize,
    /// Maximum number of map keys any term may sit inside (see
    /// `DEFAULT_MAX_MAP_KEY_NESTING`).
    pub max_map_key_nesting: usize,
}

impl Default for Limits {
    /// [`DEFAULT_MAX_DEPTH`] levels, 1 000 000 atoms (each costs a `String` in eetf; real
    /// messages carry a handful), [`DEFAULT_MAX_TERMS`] terms and
    /// [`DEFAULT_MAX_MAP_KEY_NESTING`] map keys.
    fn default() -> Self {
        Limits {
            max_depth: DEFAULT_MAX_DEPTH,
            max_atoms: 1_000_000,
            max_terms: DEFAULT_MAX_TERMS,
            max_map_key_nesting: DEFAULT_MAX_MAP_KEY_NESTING,
        }
    }
}

/// Why a term was rejected. Offsets are byte positions in the buffer that was passed in.
///
/// Public (`kvnode::etf`) and open to new reasons: a `match` on it needs a wildcard arm.
/// Naming every reason known today does not compile:
///
/// ```compile_fail
/// use kvnode::etf::TermError as E;
/// fn what(e: &E) -> &'static str {
///     match e {
///         E::Truncated { .. } | E::BadVersion { .. } | E::UnknownTag { .. } => "bytes",
///         E::AtomCacheRef { .. } | E::Compressed { .. } => "unsupported",
///         E::TooDeep { .. } | E::MapKeysTooDeep { .. } => "too deep",
///         E::TooManyAtoms { .. } | E::TooManyTerms { .. } => "too big",
///         E::BadLength { .. } | E::FunSizeMismatch { .. } | E::UnexpectedTag { .. } => "bad",
///         E::BadSign { .. } | E::BadBitBinary { .. } | E::BadFloat { .. } => "bad",
///         E::InvalidUtf8Atom { .. } | E::Latin1Atom { .. } => "atom",
///         E::TrailingBytes { .. } | E::Decode(_) => "other",
///     }
/// }
/// ```
///
/// ```
/// use kvnode::etf::TermError as E;
/// fn what(e: &E) -> &'static str {
///     match e {
///         E::TooDeep { .. } | E::MapKeysTooDeep { .. } => "too deep",
///         _ => "other",
///     }
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TermError {
    /// The buffer ends before the term does.
    #[error("term truncated: the field at offset {offset} is {needed} byte(s) short")]
    Truncated {
        /// Where the field that runs past the end starts.
        offset: usize,
        /// How many of its bytes are missing.
        needed: usize,
    },
    /// A versioned term does not start with byte 131.
    #[error("bad external term format version {found} (expected {VERSION_MAGIC})")]
    BadVersion {
        /// The byte found instead.
        found: u8,
    },
    /// A tag eetf cannot decode (e.g. `DISTRIBUTION_HEADER` 68, `LOCAL_EXT` 121).
    #[error("unknown or unsupported term tag {tag} at offset {offset}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Its position.
        offset: usize,
    },
    /// An `ATOM_CACHE_REF` (82): only valid with a distribution header's atom cache.
    #[error("atom cache reference at offset {offset} (atom cache not supported)")]
    AtomCacheRef {
        /// Position of the tag.
        offset: usize,
    },
    /// A `COMPRESSED` term (80), refused because inflating it is unbounded.
    #[error("compressed term at offset {offset} refused")]
    Compressed {
        /// Position of the tag.
        offset: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("term nested deeper than {max} levels (--max-term-depth)")]
    TooDeep {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A term inside more map keys than [`Limits::max_map_key_nesting`].
    #[error("term nested inside more than {max} map keys")]
    MapKeysTooDeep {
        /// The limit that was exceeded.
        max: usize,
    },
    /// More atoms than [`Limits::max_atoms`].
    #[error("term contains more than {max} atoms")]
    TooManyAtoms {
        /// The limit that was exceeded.
        max: usize,
    },
    /// More terms than [`Limits::max_terms`].
    #[error("term holds more than {max} terms (--max-terms-per-message)")]
    TooManyTerms {
        /// The limit that was exceeded.
        max: usize,
    },
    /// An element count that the remaining bytes cannot possibly hold.
    #[error("{what} at offset {offset} claims {count} elements but only {remaining} bytes remain")]
    BadLength {
        /// Which kind of term carries the count.
        what: &'static str,
        /// Position of the term's tag.
        offset: usize,
        /// The claimed count.
        count: u64,
        /// Bytes left in the buffer after the count.
        remaining: usize,
    },
    /// A `NEW_FUN_EXT` whose size field does not match its contents.
    #[error("fun at offset {offset} declares size {declared} but occupies {actual} bytes")]
    FunSizeMismatch {
        /// Position of the tag.
        offset: usize,
        /// The size field.
        declared: u64,
        /// The size actually occupied (size field included, tag excluded).
        actual: usize,
    },
    /// A UTF-8 atom (`ATOM_UTF8_EXT`, `SMALL_ATOM_UTF8_EXT`) that is not valid UTF-8.
    #[error("atom at offset {offset} is not valid UTF-8")]
    InvalidUtf8Atom {
        /// Position of the atom's tag.
        offset: usize,
    },
    /// A Latin-1 atom (`ATOM_EXT`, `SMALL_ATOM_EXT`) with non-ASCII bytes inside a fun
    /// (`NEW_FUN_EXT`), whose size field a rewrite to UTF-8 would change: refused when
    /// decoding. Elsewhere such atoms are valid and decode as the same atom in UTF-8.
    #[error("Latin-1 atom at offset {offset} has non-ASCII bytes")]
    Latin1Atom {
        /// Position of the atom's tag.
        offset: usize,
    },
    /// A term of the wrong kind where the format requires a specific one (e.g. a pid's node
    /// must be an atom).
    #[error("expected {expected} at offset {offset}, found tag {tag}")]
    UnexpectedTag {
        /// What the format requires there.
        expected: &'static str,
        /// The tag found.
        tag: u8,
        /// Its position.
        offset: usize,
    },
    /// A bignum sign byte other than 0 or 1.
    #[error("bad bignum sign byte {sign} at offset {offset}")]
    BadSign {
        /// The sign byte.
        sign: u8,
        /// Position of the big integer's tag.
        offset: usize,
    },
    /// A bitstring whose tail bit count is not 1..=8 (or 0 for an empty one).
    #[error("bitstring at offset {offset} has {size} bytes and {bits} tail bits")]
    BadBitBinary {
        /// Position of the tag.
        offset: usize,
        /// Its byte count.
        size: u32,
        /// Its tail bit count.
        bits: u8,
    },
    /// A float that is NaN, infinite or (for `FLOAT_EXT`) unparsable.
    #[error("bad float at offset {offset}")]
    BadFloat {
        /// Position of the tag.
        offset: usize,
    },
    /// Bytes remain after a term that had to fill the whole buffer.
    #[error("{extra} trailing byte(s) after a {len}-byte term")]
    TrailingBytes {
        /// Length of the term.
        len: usize,
        /// Bytes left over.
        extra: usize,
    },
    /// An OTP 29 native record (`RECORD_EXT`), which eetf has no term for. Validation
    /// accepts it (it can be stored, measured and compared as bytes); only decoding it into
    /// an `eetf::Term` is refused.
    #[error("native record (OTP 29 RECORD_EXT) at offset {offset}: no eetf term can hold it")]
    NativeRecord {
        /// Position of the record's tag.
        offset: usize,
    },
    /// A map whose keys eetf cannot tell apart although they are different terms (`0.0` and
    /// `-0.0` since OTP 27, or terms holding them): decoding it would silently drop entries,
    /// so it is refused instead.
    #[error(
        "a map holds keys that differ only in the sign of a zero float (0.0 and -0.0): decoding it would merge them"
    )]
    MapKeysMerged,
    /// eetf rejected a term that passed validation (a float precision quirk at worst;
    /// anything else is a bug in the validator).
    #[error("eetf failed to decode a validated term: {}", DecodeErrorText(.0))]
    Decode(#[from] eetf::DecodeError),
}

/// Validates one term starting at `buf[0]` (the tag byte; no version byte) and returns the
/// number of bytes it occupies. Bytes after the term are ignored.
pub fn validate_term(buf: &[u8], limits: &Limits) -> Result<usize, TermError> {
    Validator::new(buf, 0, limits, 0).run().map(|(len, _)| len)
}

/// Validates a version-prefixed term (`131`, then the term) and returns its length including
/// the version byte. Bytes after the term are ignored.
pub fn validate_versioned(buf: &[u8], limits: &Limits) -> Result<usize, TermError> {
    match buf.first() {
        None => Err(TermError::Truncated {
            offset: 0,
            needed: 1,
        }),
        Some(&VERSION_MAGIC) => Validator::new(buf, 1, limits, 0).run().map(|(len, _)| len),
        Some(&found) => Err(TermError::BadVersion { found }),
    }
}

/// Like [`validate_versioned`], for one of several terms that share [`Limits::max_terms`]
/// (a frame's control tuple and message): counting starts at `*terms`, which is then
/// advanced by this term's count.
pub fn validate_versioned_counted(
    buf: &[u8],
    limits: &Limits,
    terms: &mut usize,
) -> Result<usize, TermError> {
    match buf.first() {
        None => Err(TermError::Truncated {
            offset: 0,
            needed: 1,
        }),
        Some(&VERSION_MAGIC) => {
            let (len, counted) = Validator::new(buf, 1, limits, *terms).run()?;
            *terms = counted;
            Ok(len)
        }
        Some(&found) => Err(TermError::BadVersion { found }),
    }
}

/// Decodes a version-prefixed term from the start of `buf` with eetf after validating it, and
/// returns the term and the number of bytes consumed. Bytes after the term are left alone.
///
/// Never returns a term different from the one the bytes hold: Latin-1 atoms with non-ASCII
/// bytes are rewritten as the same atoms in UTF-8 first (BEAM treats both encodings as one
/// atom); a native record ([`TermError::NativeRecord`]) or a map whose keys eetf would merge
/// ([`TermError::MapKeysMerged`]) is refused rather than decoded into something else.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<(eetf::Term, usize), TermError> {
    let (len, traits) = match buf.first() {
        None => {
            return Err(TermError::Truncated {
                offset: 0,
                needed: 1,
            });
        }
        Some(&VERSION_MAGIC) => {
            let (len, _, traits) = Validator::new(buf, 1, limits, 0).run_keep()?;
            (len, traits)
        }
        Some(&found) => return Err(TermError::BadVersion { found }),
    };
    if let Some(offset) = traits.record {
        return Err(TermError::NativeRecord { offset });
    }
    let term = if traits.latin1.is_empty() {
        eetf::Term::decode(&buf[..len])?
    } else {
        if traits.latin1_in_fun {
            return Err(TermError::Latin1Atom {
                offset: traits.latin1[0],
            });
        }
        eetf::Term::decode(latin1_to_utf8(&buf[..len], &traits.latin1).as_slice())?
    };
    // Every map is counted, not only those `key_may_merge` points at: bytes holding one key
    // twice (which `binary_to_term` refuses) are merged by eetf too.
    if traits.map_pairs > 0 && map_entries(&term) < traits.map_pairs {
        return Err(TermError::MapKeysMerged);
    }
    Ok((term, len))
}

/// Prepares bytes holding versioned terms back to back (a frame's control message and
/// payload) for a decoder that uses eetf directly (erl_dist's): Latin-1 atoms with non-ASCII
/// bytes are rewritten as UTF-8 (borrowed as they are when there are none), and a native
/// record or a map whose keys eetf would merge is refused ([`TermError::NativeRecord`],
/// [`TermError::MapKeysMerged`]) instead of being decoded into a different term.
pub fn checked_for_eetf<'b>(
    buf: &'b [u8],
    limits: &Limits,
) -> Result<std::borrow::Cow<'b, [u8]>, TermError> {
    let mut at = 0;
    let mut latin1 = Vec::new();
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.first() != Some(&VERSION_MAGIC) {
            break;
        }
        let (len, _, traits) = Validator::new(rest, 1, limits, 0).run_keep()?;
        if let Some(offset) = traits.record {
            return Err(TermError::NativeRecord {
                offset: at + offset,
            });
        }
        if traits.latin1_in_fun {
            return Err(TermError::Latin1Atom {
                offset: at + traits.latin1[0],
            });
        }
        if traits.map_pairs > 0 {
            // Decoded once more only to count: maps are where eetf may merge keys.
            decode(rest, limits)?;
        }
        latin1.extend(traits.latin1.iter().map(|o| at + o));
        at += len;
    }
    Ok(if latin1.is_empty() {
        std::borrow::Cow::Borrowed(buf)
    } else {
        std::borrow::Cow::Owned(latin1_to_utf8(buf, &latin1))
    })
}

/// `buf` with every Latin-1 atom at `offsets` (tag positions, in order) rewritten as the
/// same atom in UTF-8 (`ATOM_UTF8_EXT`; each Latin-1 byte is its code point).
fn latin1_to_utf8(buf: &[u8], offsets: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 16 * offsets.len());
    let mut at = 0;
    for &offset in offsets {
        let Some(&tag) = buf.get(offset) else { break };
        let (len, header) = if tag == ATOM_EXT {
            let b = buf.get(offset + 1..offset + 3).unwrap_or(&[0, 0]);
            (usize::from(u16::from_be_bytes([b[0], b[1]])), 3)
        } else {
            (usize::from(buf.get(offset + 1).copied().unwrap_or(0)), 2)
        };
        let Some(name) = buf.get(offset + header..offset + header + len) else {
            break;
        };
        out.extend_from_slice(&buf[at..offset]);
        let utf8: String = name.iter().map(|&b| char::from(b)).collect();
        out.push(ATOM_UTF8_EXT);
        out.extend_from_slice(&(utf8.len() as u16).to_be_bytes());
        out.extend_from_slice(utf8.as_bytes());
        at = offset + header + len;
    }
    out.extend_from_slice(&buf[at..]);
    out
}

/// Map entries in a decoded term, summed over every map (iterative).
fn map_entries(term: &eetf::Term) -> u64 {
    use eetf::Term as T;
    let mut count = 0u64;
    let mut stack = vec![term];
    while let Some(t) = stack.pop() {
        match t {
            T::Map(m) => {
                count += m.map.len() as u64;
                for (k, v) in &m.map {
                    stack.push(k);
                    stack.push(v);
                }
            }
            T::List(l) => stack.extend(l.elements.iter()),
            T::ImproperList(l) => {
                stack.extend(l.elements.iter());
                stack.push(&l.last);
            }
            T::Tuple(x) => stack.extend(x.elements.iter()),
            T::InternalFun(f) => {
                let (eetf::InternalFun::New { free_vars, .. }
                | eetf::InternalFun::Old { free_vars, .. }) = f.as_ref();
                stack.extend(free_vars.iter());
            }
            _ => {}
        }
    }
    count
}

/// Whether the version-prefixed term at the start of `buf` is one eetf cannot hold as it is
/// as the BEAM means it: it holds an OTP 29 native record, or a map two of whose different
/// keys eetf would merge (`0.0` and `-0.0`, or terms holding them). Cheap for everything
/// else: the validator's walk, plus a decode only when a map key holds a `-0.0`, an old
/// `FLOAT_EXT` or a non-ASCII Latin-1 atom. Not looked for: a map that holds the same key
/// twice, which no BEAM sends and `binary_to_term` refuses ([`decode`] refuses it too, with
/// [`TermError::MapKeysMerged`]).
pub fn needs_bytes(buf: &[u8], limits: &Limits) -> Result<bool, TermError> {
    match buf.first() {
        None => Err(TermError::Truncated {
            offset: 0,
            needed: 1,
        }),
        Some(&VERSION_MAGIC) => needs_bytes_at(buf, 1, limits),
        Some(&found) => Err(TermError::BadVersion { found }),
    }
}

/// The length of the term at the start of `buf` (no version byte), validated, and whether
/// it holds a `-0.0`, an old `FLOAT_EXT` or a non-ASCII Latin-1 atom (what can make map keys
/// merge in eetf).
pub(crate) fn measure_term(buf: &[u8], limits: &Limits) -> Result<(usize, bool), TermError> {
    let (len, _, traits) = Validator::new(buf, 0, limits, 0).run_keep()?;
    Ok((len, traits.merge_risk))
}

/// [`needs_bytes`] for a term without its version byte (as it sits inside a message).
pub fn term_needs_bytes(buf: &[u8], limits: &Limits) -> Result<bool, TermError> {
    needs_bytes_at(buf, 0, limits)
}

fn needs_bytes_at(buf: &[u8], start: usize, limits: &Limits) -> Result<bool, TermError> {
    let (len, _, traits) = Validator::new(buf, start, limits, 0).run_keep()?;
    if traits.record.is_some() || !traits.may_need_bytes() {
        return Ok(traits.record.is_some());
    }
    // A map key may merge: decode to find out (rare: see `Traits::key_may_merge`).
    let mut versioned = Vec::with_capacity(len + 1 - start);
    versioned.push(VERSION_MAGIC);
    versioned.extend_from_slice(&buf[start..len]);
    match decode(&versioned, limits) {
        Ok(_) => Ok(false),
        Err(TermError::MapKeysMerged | TermError::NativeRecord { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Like [`decode`], but the term must fill `buf` exactly.
pub fn decode_exact(buf: &[u8], limits: &Limits) -> Result<eetf::Term, TermError> {
    let (term, len) = decode(buf, limits)?;
    match buf.len() - len {
        0 => Ok(term),
        extra => Err(TermError::TrailingBytes { len, extra }),
    }
}

/// What remains to be checked for an enclosing term once its header has been read.
#[derive(Debug)]
enum Frame {
    /// `left` more nested terms, each at `depth` and inside `keys` map keys; for a map's
    /// children (`map`), every other one (the first, third, ...) is a key.
    Children {
        left: u64,
        depth: usize,
        keys: usize,
        map: bool,
    },
    /// A `NEW_FUN_EXT` whose size field says it ends at `end`.
    FunEnd {
        offset: usize,
        declared: u64,
        end: u64,
    },
}

struct Validator<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    atoms: usize,
    terms: usize,
    stack: Vec<Frame>,
    /// What decoding this term with eetf must take care of.
    traits: Traits,
    /// Whether the term being read sits inside a map key.
    in_key: bool,
}

/// What the validator noticed that matters for decoding with eetf (see [`decode`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Traits {
    /// Offset of the first native record (`RECORD_EXT`), which eetf cannot decode.
    pub(crate) record: Option<usize>,
    /// Offsets of Latin-1 atoms with non-ASCII bytes, which must be rewritten as UTF-8
    /// before eetf decodes them.
    pub(crate) latin1: Vec<usize>,
    /// Whether one of those sits inside a `NEW_FUN_EXT` (whose size field the rewrite
    /// would have to patch: refused instead).
    pub(crate) latin1_in_fun: bool,
    /// Map entries the bytes declare, summed over every map.
    pub(crate) map_pairs: u64,
    /// Whether some map key holds what can make two different keys one to eetf (whose
    /// `HashMap` then keeps only one of them): a `-0.0` (eetf's `Float` equates `0.0` and
    /// `-0.0`; OTP 27+ does not), an old `FLOAT_EXT` (eetf parses it as an `f32`, so close
    /// values coincide) or a non-ASCII Latin-1 atom (rewritten to UTF-8, it may meet its
    /// UTF-8 twin). Without any of these, no two *different* keys are one to eetf (a key
    /// written twice still is: [`decode`] counts every map's entries).
    pub(crate) key_may_merge: bool,
    /// Whether the term holds any of what [`Traits::key_may_merge`] looks for in map keys,
    /// anywhere (it may become a map key: see `syntax::print_bytes`).
    pub(crate) merge_risk: bool,
}

impl Traits {
    /// Whether eetf may be unable to hold the validated term as it is: it holds a native
    /// record, or a map key that [`Traits::key_may_merge`] (a decode settles that).
    pub(crate) fn may_need_bytes(&self) -> bool {
        self.record.is_some() || (self.key_may_merge && self.map_pairs > 0)
    }
}

impl<'a> Validator<'a> {
    fn new(buf: &'a [u8], start: usize, limits: &'a Limits, terms: usize) -> Self {
        Validator {
            buf,
            pos: start,
            limits,
            atoms: 0,
            terms,
            stack: Vec::new(),
            traits: Traits::default(),
            in_key: false,
        }
    }

    /// Validates the term at `pos` and returns the position just past it, relative to the
    /// start of the buffer, and the term count (including any the validator started with).
    fn run(self) -> Result<(usize, usize), TermError> {
        self.run_keep().map(|(len, terms, _)| (len, terms))
    }

    fn run_keep(mut self) -> Result<(usize, usize, Traits), TermError> {
        self.term(1, 0)?;
        while let Some(frame) = self.stack.last_mut() {
            match frame {
                Frame::Children { left: 0, .. } => {
                    self.stack.pop();
                }
                Frame::Children {
                    left,
                    depth,
                    keys,
                    map,
                } => {
                    // A map's children count down from an even number: key, value, key, ...
                    let keys = *keys + usize::from(*map && *left % 2 == 0);
                    *left -= 1;
                    let depth = *depth;
                    if keys > self.limits.max_map_key_nesting {
                        return Err(TermError::MapKeysTooDeep {
                            max: self.limits.max_map_key_nesting,
                        });
                    }
                    self.term(depth, keys)?;
                }
                &mut Frame::FunEnd {
                    offset,
                    declared,
                    end,
                } => {
                    if self.pos as u64 != end {
                        return Err(TermError::FunSizeMismatch {
                            offset,
                            declared,
                            actual: self.pos - offset - 1,
                        });
                    }
                    self.stack.pop();
                }
            }
        }
        Ok((self.pos, self.terms, self.traits))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TermError> {
        if n > self.remaining() {
            return Err(TermError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TermError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TermError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, TermError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, TermError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn enter(&self, depth: usize) -> Result<(), TermError> {
        if depth > self.limits.max_depth {
            return Err(TermError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// Reads a tag for a term at `depth`. Every term eetf decodes passes here once, so this
    /// is where terms are counted.
    fn tag(&mut self, depth: usize) -> Result<(usize, u8), TermError> {
        self.enter(depth)?;
        self.terms += 1;
        if self.terms > self.limits.max_terms {
            return Err(TermError::TooManyTerms {
                max: self.limits.max_terms,
            });
        }
        let offset = self.pos;
        let tag = self.u8()?;
        match tag {
            ATOM_CACHE_REF => Err(TermError::AtomCacheRef { offset }),
            COMPRESSED => Err(TermError::Compressed { offset }),
            _ => Ok((offset, tag)),
        }
    }

    /// Schedules `count` nested terms at `depth`, after checking that the bytes left can hold
    /// them (every term is at least one byte), so no count is trusted blindly.
    fn children(
        &mut self,
        what: &'static str,
        offset: usize,
        count: u64,
        (depth, keys): (usize, usize),
    ) -> Result<(), TermError> {
        let remaining = self.remaining();
        if count > remaining as u64 {
            return Err(TermError::BadLength {
                what,
                offset,
                count,
                remaining,
            });
        }
        if count > 0 {
            self.stack.push(Frame::Children {
                left: count,
                depth,
                keys,
                map: what == "map",
            });
        }
        Ok(())
    }

    /// Validates any term at `depth`; nested terms of lists, tuples, maps and fun free
    /// variables are pushed on the stack instead of recursing.
    fn term(&mut self, depth: usize, keys: usize) -> Result<(), TermError> {
        let (offset, tag) = self.tag(depth)?;
        self.in_key = keys > 0;
        let inner = depth + 1;
        let nested = (inner, keys);
        match tag {
            NEW_FLOAT_EXT => {
                let value = f64::from_be_bytes(self.array()?);
                if !value.is_finite() {
                    return Err(TermError::BadFloat { offset });
                }
                if value == 0.0 && value.is_sign_negative() {
                    self.traits.key_may_merge |= self.in_key;
                    self.traits.merge_risk = true;
                    self.traits.merge_risk = true;
                }
            }
            FLOAT_EXT => {
                self.float_ext(offset)?;
                self.traits.key_may_merge |= self.in_key;
                self.traits.merge_risk = true;
            }
            BIT_BINARY_EXT => {
                let size = self.u32()?;
                let bits = self.u8()?;
                // eetf shifts the last byte right by `8 - bits`: bits must be 1..=8 unless
                // there is no last byte (OTP uses the same rule).
                if bits > 8 || (bits == 0) != (size == 0) {
                    return Err(TermError::BadBitBinary { offset, size, bits });
                }
                self.take(size as usize)?;
            }
            SMALL_INTEGER_EXT => {
                self.take(1)?;
            }
            INTEGER_EXT => {
                self.take(4)?;
            }
            ATOM_EXT | SMALL_ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_UTF8_EXT => {
                self.atom_body(offset, tag)?
            }
            REFERENCE_EXT | PORT_EXT => {
                self.node(inner)?;
                self.take(4 + 1)?;
            }
            NEW_PORT_EXT => {
                self.node(inner)?;
                self.take(4 + 4)?;
            }
            V4_PORT_EXT => {
                self.node(inner)?;
                self.take(8 + 4)?;
            }
            PID_EXT | NEW_PID_EXT => self.pid_body(tag, inner)?,
            NEW_REFERENCE_EXT | NEWER_REFERENCE_EXT => {
                let ids = usize::from(self.u16()?);
                self.node(inner)?;
                self.take(if tag == NEW_REFERENCE_EXT { 1 } else { 4 })?;
                self.take(ids * 4)?;
            }
            SMALL_TUPLE_EXT => {
                let count = self.u8()?;
                self.children("tuple", offset, count.into(), nested)?;
            }
            LARGE_TUPLE_EXT => {
                let count = self.u32()?;
                self.children("tuple", offset, count.into(), nested)?;
            }
            NIL_EXT => {}
            STRING_EXT => {
                let len = self.u16()?;
                self.take(len.into())?;
            }
            LIST_EXT => {
                // The elements, then the tail.
                let count = self.u32()?;
                self.children("list", offset, u64::from(count) + 1, nested)?;
            }
            BINARY_EXT => {
                let len = self.u32()?;
                self.take(len as usize)?;
            }
            SMALL_BIG_EXT => {
                let len = self.u8()?;
                self.big_body(offset, len.into())?;
            }
            LARGE_BIG_EXT => {
                let len = self.u32()?;
                self.big_body(offset, len as usize)?;
            }
            RECORD_EXT => {
                let arity = self.u32()?;
                // Flags (bit 0: exported), then the module and the record's name.
                self.take(1)?;
                self.atom(inner)?;
                self.atom(inner)?;
                self.traits.record.get_or_insert(offset);
                // The field names, then the values.
                self.children("record", offset, 2 * u64::from(arity), nested)?;
            }
            MAP_EXT => {
                let pairs = self.u32()?;
                self.traits.map_pairs += u64::from(pairs);
                self.children("map", offset, 2 * u64::from(pairs), nested)?;
            }
            EXPORT_EXT => {
                self.atom(inner)?;
                self.atom(inner)?;
                let (arity_offset, arity_tag) = self.tag(inner)?;
                if arity_tag != SMALL_INTEGER_EXT {
                    return Err(TermError::UnexpectedTag {
                        expected: "small integer arity",
                        tag: arity_tag,
                        offset: arity_offset,
                    });
                }
                self.take(1)?;
            }
            FUN_EXT => {
                let free = self.u32()?;
                self.pid(inner)?;
                self.atom(inner)?;
                self.fix_integer(inner)?;
                self.fix_integer(inner)?;
                self.children("fun", offset, free.into(), nested)?;
            }
            NEW_FUN_EXT => {
                // Size counts itself and everything after it up to the end of the fun.
                let declared = u64::from(self.u32()?);
                let end = (offset as u64) + 1 + declared;
                // Arity, Uniq, Index.
                self.take(1 + 16 + 4)?;
                let free = self.u32()?;
                self.atom(inner)?;
                self.fix_integer(inner)?;
                self.fix_integer(inner)?;
                self.pid(inner)?;
                // Checked once the free variables (pushed on top of it) are done.
                self.stack.push(Frame::FunEnd {
                    offset,
                    declared,
                    end,
                });
                self.children("fun", offset, free.into(), nested)?;
            }
            _ => return Err(TermError::UnknownTag { tag, offset }),
        }
        Ok(())
    }

    /// Mirrors eetf's `FLOAT_EXT` parsing so that eetf cannot fail on it.
    fn float_ext(&mut self, offset: usize) -> Result<(), TermError> {
        let text = self.take(FLOAT_EXT_LEN)?;
        let parsed = std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.trim_end_matches('\0').parse::<f32>().ok());
        match parsed {
            Some(value) if value.is_finite() => Ok(()),
            _ => Err(TermError::BadFloat { offset }),
        }
    }

    fn big_body(&mut self, offset: usize, len: usize) -> Result<(), TermError> {
        let sign = self.u8()?;
        if sign > 1 {
            return Err(TermError::BadSign { sign, offset });
        }
        self.take(len)?;
        Ok(())
    }

    fn atom_body(&mut self, offset: usize, tag: u8) -> Result<(), TermError> {
        self.atoms += 1;
        if self.atoms > self.limits.max_atoms {
            return Err(TermError::TooManyAtoms {
                max: self.limits.max_atoms,
            });
        }
        let len = match tag {
            ATOM_EXT | ATOM_UTF8_EXT => usize::from(self.u16()?),
            _ => usize::from(self.u8()?),
        };
        let name = self.take(len)?;
        match tag {
            ATOM_UTF8_EXT | SMALL_ATOM_UTF8_EXT => {
                if std::str::from_utf8(name).is_err() {
                    return Err(TermError::InvalidUtf8Atom { offset });
                }
            }
            _ => {
                if !name.is_ascii() {
                    // Each byte is its code point: valid as it is, rewritten for eetf.
                    self.traits.latin1.push(offset);
                    self.traits.key_may_merge |= self.in_key;
                    self.traits.merge_risk = true;
                    if self.stack.iter().any(|f| matches!(f, Frame::FunEnd { .. })) {
                        self.traits.latin1_in_fun = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn unexpected(expected: &'static str, tag: u8, offset: usize) -> TermError {
        TermError::UnexpectedTag {
            expected,
            tag,
            offset,
        }
    }

    /// An atom at `depth` (eetf decodes it as a whole term, then insists on an atom).
    fn atom(&mut self, depth: usize) -> Result<(), TermError> {
        match self.tag(depth)? {
            (offset, tag @ (ATOM_EXT | SMALL_ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_UTF8_EXT)) => {
                self.atom_body(offset, tag)
            }
            (offset, tag) => Err(Self::unexpected("atom", tag, offset)),
        }
    }

    /// The node name of a pid, port or reference.
    fn node(&mut self, depth: usize) -> Result<(), TermError> {
        self.atom(depth)
    }

    /// A pid at `depth` (inside a fun).
    fn pid(&mut self, depth: usize) -> Result<(), TermError> {
        match self.tag(depth)? {
            (_, tag @ (PID_EXT | NEW_PID_EXT)) => self.pid_body(tag, depth + 1),
            (offset, tag) => Err(Self::unexpected("pid", tag, offset)),
        }
    }

    fn pid_body(&mut self, tag: u8, node_depth: usize) -> Result<(), TermError> {
        self.node(node_depth)?;
        // ID, Serial, then Creation: one byte in PID_EXT, four in NEW_PID_EXT.
        self.take(4 + 4 + if tag == PID_EXT { 1 } else { 4 })?;
        Ok(())
    }

    /// A fixnum at `depth` (a fun's index and uniq).
    fn fix_integer(&mut self, depth: usize) -> Result<(), TermError> {
        match self.tag(depth)? {
            (_, SMALL_INTEGER_EXT) => self.take(1).map(drop),
            (_, INTEGER_EXT) => self.take(4).map(drop),
            (offset, tag) => Err(Self::unexpected("integer", tag, offset)),
        }
    }
}

pub mod encode;
pub mod skip;
pub mod text;

pub use text::{DecodeErrorText, excerpt, summary};

#[cfg(test)]
mod tests;
