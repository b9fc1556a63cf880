//! Canonical store keys: one byte string per Erlang term, equal iff the terms are `=:=`.
//!
//! `eetf::Term` cannot be used as a `HashMap` key directly:
//! - `Map`'s `Hash` walks a `HashMap` in arbitrary order while its `Eq` is order-independent,
//!   so two equal maps can hash differently;
//! - `ByteList` (STRING_EXT) and a `List` of the same small integers are one Erlang term but two
//!   different `eetf` values;
//! - `FixInteger(5)` and `BigInteger(5)` are one Erlang integer;
//! - `Float`'s `Eq` says `0.0 == -0.0`, which OTP 27+ `=:=` does not.
//!
//! [`Key::from_term`] maps every term to a self-delimiting canonical byte encoding. Two terms get
//! the same [`Key`] exactly when they are equal under `=:=` (i.e. as Elixir map keys):
//!
//! - **integers** are encoded by value, whatever their `eetf` representation; an integer is never
//!   equal to a float (`1` and `1.0` are different keys);
//! - **floats** are encoded by their IEEE-754 bit pattern, so `0.0` and `-0.0` are *different*
//!   keys. This follows OTP 27+ `=:=` semantics (OTP 25/26 treated them as equal);
//! - **lists** are flattened into cons cells: `ByteList`, `List` and chains of `ImproperList`
//!   spelling the same cells give the same key, and an empty `ImproperList` is just its tail;
//! - **maps** are encoded with their entries sorted by canonical key bytes, so iteration and
//!   insertion order do not matter;
//! - **atoms** by their UTF-8 name; **pids, ports and references** by node name, every id field
//!   and creation;
//! - **bitstrings** by their exact bit content: a `BitBinary` whose `tail_bits_size` is 8 is the
//!   same key as the `Binary` of the same bytes (a `tail_bits_size` of 0 means the last byte holds
//!   no bits; values above 8 are treated as 8);
//! - **tuples** by arity and elements; **funs** by all of their fields (deterministic, though
//!   Erlang's own fun equality is not specified beyond that);
//! - **native records** (OTP 29, `RECORD_EXT`; no `eetf::Term` holds them, so only
//!   [`canonical_from_etf`] reads them) by exported flag, module, name, then field names and
//!   values in order, as OTP 29 `=:=` compares them. A Latin-1 atom is read as its UTF-8 name.
//!
//! The ordering of keys as byte strings is *not* Erlang term order; only equality is meaningful.
//!
//! Encoding is iterative (a heap stack of tasks), so terms nested as deep as
//! `--max-term-depth` allows cost no machine stack; only map keys are encoded apart (to sort
//! them), which recurses once per map key a term sits inside, a nesting the validator bounds.

use eetf::{BigInteger, BitBinary, InternalFun, Pid, Term};
use num_bigint::Sign;
use num_traits::ToPrimitive;

/// Tag bytes of the canonical encoding. Each encoded term starts with exactly one of these, and
/// every form is self-delimiting, which makes concatenations of encodings unambiguous.
mod tag {
    /// An integer in `0..=255`, followed by one byte.
    pub const BYTE: u8 = 1;
    /// Any other integer that fits an `i64`, followed by its zigzag LEB128 varint.
    pub const INT: u8 = 2;
    /// An integer outside `i64`: sign byte (0 negative, 1 positive), varint length, magnitude BE.
    pub const BIG: u8 = 3;
    /// A float: 8 bytes, little-endian IEEE-754 bits.
    pub const FLOAT: u8 = 4;
    /// An atom: varint length, UTF-8 name.
    pub const ATOM: u8 = 5;
    /// A pid: node atom, varint id, serial, creation.
    pub const PID: u8 = 6;
    /// A port: node atom, varint id, creation.
    pub const PORT: u8 = 7;
    /// A reference: node atom, varint creation, varint word count, varint words.
    pub const REF: u8 = 8;
    /// `fun M:F/A`: module atom, function atom, arity byte.
    pub const EXPORT_FUN: u8 = 9;
    /// Old-style local fun.
    pub const OLD_FUN: u8 = 10;
    /// New-style local fun.
    pub const NEW_FUN: u8 = 11;
    /// A bitstring: varint whole-byte count, bytes, tail bit count (0..=7), tail bits if any.
    pub const BITS: u8 = 12;
    /// A non-empty list: varint cell count, the heads, then the tail (`NIL` if proper).
    pub const LIST: u8 = 13;
    /// The empty list `[]`.
    pub const NIL: u8 = 14;
    /// A tuple: varint arity, elements.
    pub const TUPLE: u8 = 15;
    /// A map: varint size, entries (key then value) sorted by encoded key bytes.
    pub const MAP: u8 = 16;
    /// An OTP 29 native record: flags, module, name, arity, then field names and values.
    pub const RECORD: u8 = 17;
}

/// A canonical, hashable identity for an Erlang term: two terms have equal keys iff they are
/// exactly equal (`=:=`). See the module docs for the precise rules.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Key(Box<[u8]>);

impl Key {
    /// Builds the canonical key of `term`. Never fails; every `eetf` term has a key.
    pub fn from_term(term: &Term) -> Key {
        let mut out = Vec::new();
        encode(term, &mut out);
        Key(out.into_boxed_slice())
    }

    /// The canonical encoding bytes (stable within one build of kvnode; not a wire format).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// Appends the canonical key bytes of `term` to `out` (what [`Key::from_term`] holds), for
/// lookups that should not allocate.
pub fn encode_into(term: &Term, out: &mut Vec<u8>) {
    encode(term, out);
}

impl From<&Term> for Key {
    fn from(term: &Term) -> Self {
        Key::from_term(term)
    }
}

/// Appends `v` as unsigned LEB128.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends an integer that fits an `i64` in its one canonical form.
fn put_i64(out: &mut Vec<u8>, v: i64) {
    if let Ok(b) = u8::try_from(v) {
        out.push(tag::BYTE);
        out.push(b);
    } else {
        out.push(tag::INT);
        put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
    }
}

fn put_big(out: &mut Vec<u8>, big: &BigInteger) {
    match big.value.to_i64() {
        Some(v) => put_i64(out, v),
        None => {
            let (sign, magnitude) = big.value.to_bytes_be();
            out.push(tag::BIG);
            out.push(u8::from(sign != Sign::Minus));
            put_bytes(out, &magnitude);
        }
    }
}

fn put_atom(out: &mut Vec<u8>, name: &str) {
    out.push(tag::ATOM);
    put_bytes(out, name.as_bytes());
}

fn put_pid(out: &mut Vec<u8>, pid: &Pid) {
    out.push(tag::PID);
    put_atom(out, &pid.node.name);
    put_varint(out, u64::from(pid.id));
    put_varint(out, u64::from(pid.serial));
    put_varint(out, u64::from(pid.creation));
}

fn put_bit_binary(out: &mut Vec<u8>, bits: &BitBinary) {
    let Some((last, whole)) = bits.bytes.split_last() else {
        put_bitstring(out, &[], 0, 0);
        return;
    };
    match bits.tail_bits_size {
        0 => put_bitstring(out, whole, 0, 0),
        n @ 1..=7 => put_bitstring(out, whole, n, last & ((1u8 << n) - 1)),
        // 8 is a whole byte; larger values are invalid and treated the same way.
        _ => put_bitstring(out, &bits.bytes, 0, 0),
    }
}

/// Appends a bitstring: `whole` full bytes then `tail_bits` (0..=7) low bits of `tail`.
fn put_bitstring(out: &mut Vec<u8>, whole: &[u8], tail_bits: u8, tail: u8) {
    out.push(tag::BITS);
    put_bytes(out, whole);
    out.push(tail_bits);
    if tail_bits > 0 {
        out.push(tail);
    }
}

/// Counts the cons cells of a list-like term, as `eetf` may spell them, and returns the count
/// and the final tail: `None` for a proper list, `Some(tail)` for an improper one. Iterative
/// over tails.
fn walk_list(mut term: &Term) -> (u64, Option<&Term>) {
    let mut cells = 0u64;
    loop {
        match term {
            Term::List(list) => return (cells + list.elements.len() as u64, None),
            Term::ByteList(list) => return (cells + list.bytes.len() as u64, None),
            Term::ImproperList(list) => {
                cells += list.elements.len() as u64;
                term = &list.last;
            }
            other => return (cells, Some(other)),
        }
    }
}

/// What is left to append while encoding a term (see [`encode`]).
enum Task<'a> {
    /// One whole term.
    Term(&'a Term),
    /// The rest of a tuple's elements or a fun's free variables.
    Terms(&'a [Term]),
    /// The cons cells of a list-like term from its element `.1` on, then the list's tail.
    Cells(&'a Term, usize),
    /// Bytes already encoded (a map key).
    Bytes(Vec<u8>),
}

/// Starts a (possibly improper) list: the header, then its cells and tail as tasks.
fn put_list<'a>(out: &mut Vec<u8>, term: &'a Term, tasks: &mut Vec<Task<'a>>) {
    let (cells, tail) = walk_list(term);
    if cells == 0 {
        match tail {
            None => out.push(tag::NIL),
            // `[ | T]` with no heads is just `T` (only reachable via an empty ImproperList).
            Some(t) => tasks.push(Task::Term(t)),
        }
        return;
    }
    out.push(tag::LIST);
    put_varint(out, cells);
    tasks.push(Task::Cells(term, 0));
}

/// The next cell of a list being encoded (see [`Task::Cells`]).
fn put_cell<'a>(out: &mut Vec<u8>, term: &'a Term, at: usize, tasks: &mut Vec<Task<'a>>) {
    match term {
        Term::List(list) => match list.elements.get(at) {
            Some(head) => {
                tasks.push(Task::Cells(term, at + 1));
                tasks.push(Task::Term(head));
            }
            None => out.push(tag::NIL),
        },
        Term::ByteList(list) => {
            for &b in list.bytes.get(at..).unwrap_or_default() {
                put_i64(out, i64::from(b));
            }
            out.push(tag::NIL);
        }
        Term::ImproperList(list) => match list.elements.get(at) {
            Some(head) => {
                tasks.push(Task::Cells(term, at + 1));
                tasks.push(Task::Term(head));
            }
            // The tail: more cells when it is list-like, else the final tail.
            None => match &*list.last {
                tail @ (Term::List(_) | Term::ByteList(_) | Term::ImproperList(_)) => {
                    tasks.push(Task::Cells(tail, 0))
                }
                tail => tasks.push(Task::Term(tail)),
            },
        },
        // Cells are only scheduled for list-like terms.
        other => tasks.push(Task::Term(other)),
    }
}

fn put_terms<'a>(out: &mut Vec<u8>, terms: &'a [Term], tasks: &mut Vec<Task<'a>>) {
    put_varint(out, terms.len() as u64);
    tasks.push(Task::Terms(terms));
}

fn put_internal_fun<'a>(out: &mut Vec<u8>, fun: &'a InternalFun, tasks: &mut Vec<Task<'a>>) {
    match fun {
        InternalFun::Old {
            module,
            pid,
            free_vars,
            index,
            uniq,
        } => {
            out.push(tag::OLD_FUN);
            put_atom(out, &module.name);
            put_pid(out, pid);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&uniq.to_le_bytes());
            put_terms(out, free_vars, tasks);
        }
        InternalFun::New {
            module,
            arity,
            pid,
            free_vars,
            index,
            uniq,
            old_index,
            old_uniq,
        } => {
            out.push(tag::NEW_FUN);
            put_atom(out, &module.name);
            out.push(*arity);
            put_pid(out, pid);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(uniq);
            out.extend_from_slice(&old_index.to_le_bytes());
            out.extend_from_slice(&old_uniq.to_le_bytes());
            put_terms(out, free_vars, tasks);
        }
    }
}

/// The canonical encoding of `term` on its own (a map's key, sorted before it is written).
fn encoded(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    encode(term, &mut out);
    out
}

/// Starts a map: the header, then its entries sorted by canonical key bytes as tasks. Keys
/// are encoded apart to sort them, which recurses into [`encode`] once per map key a term
/// sits in: the validator bounds that ([`crate::etf::Limits::max_map_key_nesting`]), and
/// keeps the cost linear in the term's size. Values are written in place, never copied.
fn put_map<'a>(out: &mut Vec<u8>, map: &'a eetf::Map, tasks: &mut Vec<Task<'a>>) {
    let mut entries: Vec<(Vec<u8>, &Term)> = map.map.iter().map(|(k, v)| (encoded(k), v)).collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.push(tag::MAP);
    put_varint(out, entries.len() as u64);
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        // Two `=:=` keys (a malformed map; a decoded Erlang map never has them): sorting by
        // value bytes too keeps the key deterministic whatever the HashMap's order.
        let mut full: Vec<(Vec<u8>, Vec<u8>)> =
            entries.into_iter().map(|(k, v)| (k, encoded(v))).collect();
        full.sort_unstable();
        for (k, v) in full.into_iter().rev() {
            tasks.push(Task::Bytes(v));
            tasks.push(Task::Bytes(k));
        }
        return;
    }
    for (k, v) in entries.into_iter().rev() {
        tasks.push(Task::Term(v));
        tasks.push(Task::Bytes(k));
    }
}

/// Appends the canonical encoding of `term` to `out`. Iterative: nesting (lists, tuples, map
/// values, fun variables) costs heap for the task stack, never machine stack, so terms nested
/// as deep as `--max-term-depth` allows are encoded on any thread.
fn encode(term: &Term, out: &mut Vec<u8>) {
    let mut tasks = vec![Task::Term(term)];
    while let Some(task) = tasks.pop() {
        let term = match task {
            Task::Term(term) => term,
            Task::Terms(terms) => {
                if let Some((first, rest)) = terms.split_first() {
                    if !rest.is_empty() {
                        tasks.push(Task::Terms(rest));
                    }
                    tasks.push(Task::Term(first));
                }
                continue;
            }
            Task::Cells(term, at) => {
                put_cell(out, term, at, &mut tasks);
                continue;
            }
            Task::Bytes(bytes) => {
                out.extend_from_slice(&bytes);
                continue;
            }
        };
        match term {
            Term::Atom(a) => put_atom(out, &a.name),
            Term::FixInteger(i) => put_i64(out, i64::from(i.value)),
            Term::BigInteger(b) => put_big(out, b),
            Term::Float(f) => {
                out.push(tag::FLOAT);
                out.extend_from_slice(&f.value.to_bits().to_le_bytes());
            }
            Term::Pid(p) => put_pid(out, p),
            Term::Port(p) => {
                out.push(tag::PORT);
                put_atom(out, &p.node.name);
                put_varint(out, p.id);
                put_varint(out, u64::from(p.creation));
            }
            Term::Reference(r) => {
                out.push(tag::REF);
                put_atom(out, &r.node.name);
                put_varint(out, u64::from(r.creation));
                put_varint(out, r.id.len() as u64);
                for &w in &r.id {
                    put_varint(out, u64::from(w));
                }
            }
            Term::ExternalFun(f) => {
                out.push(tag::EXPORT_FUN);
                put_atom(out, &f.module.name);
                put_atom(out, &f.function.name);
                out.push(f.arity);
            }
            Term::InternalFun(f) => put_internal_fun(out, f, &mut tasks),
            Term::Binary(b) => put_bitstring(out, &b.bytes, 0, 0),
            Term::BitBinary(b) => put_bit_binary(out, b),
            Term::ByteList(_) | Term::List(_) | Term::ImproperList(_) => {
                put_list(out, term, &mut tasks)
            }
            Term::Tuple(t) => {
                out.push(tag::TUPLE);
                put_terms(out, &t.elements, &mut tasks);
            }
            Term::Map(m) => put_map(out, m, &mut tasks),
        }
    }
}

/// Appends the canonical key bytes of a term still in external format (tag first, no version
/// byte), without decoding it, for the kinds keys usually are: atoms, binaries, integers that
/// fit 32 bits, and small tuples of those. Returns false, with `out` as it was, for any other
/// kind (the caller then decodes the term and uses [`encode_into`]) or for bytes that are not
/// exactly one such term. For every term it accepts, the bytes equal [`Key::from_term`]'s.
pub fn encode_etf_into(etf: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let ok = encode_etf(etf, out, 0) == Some(etf.len());
    if !ok {
        out.truncate(start);
    }
    ok
}

/// Appends the canonical key bytes of any valid term in external format (tag first, no
/// version byte): read directly for the usual kinds ([`encode_etf_into`]), else decoded and
/// encoded ([`encode_into`]), else, for terms no `eetf::Term` can hold (native records, maps
/// whose keys differ only in the sign of a zero float), read from the bytes container by
/// container ([`encode_etf_full`]). False, with `out` as it was, when the bytes are not
/// one valid term, or are nested deeper than [`MAX_FULL_DEPTH`] around such a term, or
/// would cost that reader more than its work budget ([`FULL_WORK_PER_BYTE`]).
pub fn canonical_from_etf(etf: &[u8], out: &mut Vec<u8>) -> bool {
    if encode_etf_into(etf, out) {
        return true;
    }
    let mut versioned = Vec::with_capacity(etf.len() + 1);
    versioned.push(crate::etf::VERSION_MAGIC);
    versioned.extend_from_slice(etf);
    let limits = crate::kv::durable::recovery_limits();
    match crate::etf::decode_exact(&versioned, &limits) {
        Ok(term) => {
            encode_into(&term, out);
            true
        }
        Err(crate::etf::TermError::NativeRecord { .. } | crate::etf::TermError::MapKeysMerged) => {
            let start = out.len();
            let mut walk = Walk {
                budget: etf
                    .len()
                    .saturating_mul(FULL_WORK_PER_BYTE)
                    .saturating_add(FULL_WORK_FLOOR),
            };
            let ok = encode_etf_full(etf, out, 0, &mut walk) == Some(etf.len());
            if !ok {
                out.truncate(start);
            }
            ok
        }
        Err(_) => false,
    }
}

/// How deep [`encode_etf_full`] follows containers (it recurses); only terms eetf cannot
/// hold take it, and one nested deeper has no canonical key (refused as a key or `cas`
/// operand, never stored changed).
pub const MAX_FULL_DEPTH: u32 = 2_000;

/// The work budget of [`encode_etf_full`], in bytes it reads or copies per byte of the term
/// (plus [`FULL_WORK_FLOOR`]). A list or map level builds its canonical bytes apart (a
/// list's length and a map's order are known only once its elements are read) and copies
/// them into its parent, so a term nested `d` levels deep costs up to `d` times its size:
/// without a bound, one 2 MB key nested 2,000 lists deep held the KV server for minutes.
/// Flat terms cost 2 to 3 bytes per byte; a term over budget has no canonical key (refused
/// like one nested deeper than [`MAX_FULL_DEPTH`]).
pub const FULL_WORK_PER_BYTE: usize = 16;

/// Work every [`encode_etf_full`] walk may spend whatever the term's size (see
/// [`FULL_WORK_PER_BYTE`]): enough for a small key nested [`MAX_FULL_DEPTH`] levels deep
/// (about 12 MB for 2,000 one-element lists around a record).
pub const FULL_WORK_FLOOR: usize = 32 << 20;

/// What an [`encode_etf_full`] walk may still spend (bytes read or copied).
struct Walk {
    budget: usize,
}

impl Walk {
    /// Spends `n`; None once the budget is exhausted.
    fn spend(&mut self, n: usize) -> Option<()> {
        self.budget = self.budget.checked_sub(n)?;
        Some(())
    }
}

/// One leaf term (no map or record inside it), decoded and encoded canonically.
fn encode_leaf(b: &[u8], out: &mut Vec<u8>, walk: &mut Walk) -> Option<usize> {
    let limits = crate::kv::durable::recovery_limits();
    let len = crate::etf::validate_term(b, &limits).ok()?;
    walk.spend(len)?;
    let mut versioned = Vec::with_capacity(len + 1);
    versioned.push(crate::etf::VERSION_MAGIC);
    versioned.extend_from_slice(&b[..len]);
    let term = crate::etf::decode_exact(&versioned, &limits).ok()?;
    encode_into(&term, out);
    Some(len)
}

/// The canonical bytes of the term at the start of `b` (see [`canonical_from_etf`]), read
/// container by container; returns its length. Each element is read once; what it costs
/// comes out of `walk`. The output equals [`Key::from_term`]'s for every term eetf can hold
/// (the test `full_reader_agrees_with_from_term` checks the zoo).
fn encode_etf_full(b: &[u8], out: &mut Vec<u8>, depth: u32, walk: &mut Walk) -> Option<usize> {
    use crate::etf::{
        LARGE_TUPLE_EXT, LIST_EXT, MAP_EXT, NIL_EXT, RECORD_EXT, SMALL_TUPLE_EXT, STRING_EXT,
    };
    if depth > MAX_FULL_DEPTH {
        return None;
    }
    let (&tag, rest) = b.split_first()?;
    let be32 = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    match tag {
        SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
            let (arity, mut pos) = if tag == SMALL_TUPLE_EXT {
                (usize::from(*rest.first()?), 2)
            } else {
                (be32(0)?, 5)
            };
            out.push(tag::TUPLE);
            put_varint(out, arity as u64);
            for _ in 0..arity {
                pos += encode_etf_full(b.get(pos..)?, out, depth + 1, walk)?;
            }
            Some(pos)
        }
        NIL_EXT | STRING_EXT | LIST_EXT => {
            // The cells through chained list tails, each read once into `cells`, then
            // written as from_term does (the count first).
            let mut cells = Vec::new();
            let mut count: u64 = 0;
            let mut pos = 0;
            let tail = loop {
                let here = b.get(pos..)?;
                match *here.first()? {
                    NIL_EXT => {
                        pos += 1;
                        break None;
                    }
                    STRING_EXT => {
                        let n = usize::from(u16::from_be_bytes([*here.get(1)?, *here.get(2)?]));
                        for &c in here.get(3..3 + n)? {
                            put_i64(&mut cells, i64::from(c));
                        }
                        count += n as u64;
                        pos += 3 + n;
                        break None;
                    }
                    LIST_EXT => {
                        let n = u32::from_be_bytes(here.get(1..5)?.try_into().ok()?) as usize;
                        pos += 5;
                        for _ in 0..n {
                            pos += encode_etf_full(b.get(pos..)?, &mut cells, depth + 1, walk)?;
                            count += 1;
                        }
                    }
                    _ => {
                        let mut t = Vec::new();
                        pos += encode_etf_full(here, &mut t, depth + 1, walk)?;
                        break Some(t);
                    }
                }
            };
            walk.spend(cells.len() + tail.as_ref().map_or(0, Vec::len))?;
            if count > 0 {
                out.push(tag::LIST);
                put_varint(out, count);
                out.extend_from_slice(&cells);
            }
            match tail {
                None => out.push(tag::NIL),
                Some(t) => out.extend_from_slice(&t),
            }
            Some(pos)
        }
        MAP_EXT => {
            let pairs = be32(0)?;
            let mut pos = 5;
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(pairs.min(1 << 16));
            for _ in 0..pairs {
                let mut k = Vec::new();
                pos += encode_etf_full(b.get(pos..)?, &mut k, depth + 1, walk)?;
                let mut v = Vec::new();
                pos += encode_etf_full(b.get(pos..)?, &mut v, depth + 1, walk)?;
                walk.spend(k.len() + v.len())?;
                entries.push((k, v));
            }
            // By key; equal keys (a malformed map) by value too, as `put_map` does.
            entries.sort_unstable();
            out.push(tag::MAP);
            put_varint(out, entries.len() as u64);
            for (k, v) in entries {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
            Some(pos)
        }
        RECORD_EXT => {
            let arity = be32(0)?;
            let flags = *rest.get(4)?;
            out.push(tag::RECORD);
            out.push(flags);
            let mut pos = 6;
            // Module and name, then the field names, then the values: all in order, since
            // OTP 29 `=:=` compares records field by field in declaration order.
            for _ in 0..2 + 2 * arity {
                pos += encode_etf_full(b.get(pos..)?, out, depth + 1, walk)?;
            }
            Some(pos)
        }
        _ => encode_leaf(b, out, walk),
    }
}

/// External term format tags that [`encode_etf_into`] reads.
mod etf {
    pub(super) use crate::etf::{
        ATOM_EXT as ATOM, ATOM_UTF8_EXT as ATOM_UTF8, BINARY_EXT as BINARY, INTEGER_EXT as INTEGER,
        SMALL_ATOM_EXT as SMALL_ATOM, SMALL_ATOM_UTF8_EXT as SMALL_ATOM_UTF8,
        SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE,
    };
}

/// Tuples nest at most this deep in [`encode_etf_into`]; deeper keys take the decoding path.
const MAX_RAW_DEPTH: u32 = 4;

fn encode_etf(b: &[u8], out: &mut Vec<u8>, depth: u32) -> Option<usize> {
    let (&tag, rest) = b.split_first()?;
    match tag {
        etf::SMALL_INTEGER => {
            put_i64(out, i64::from(*rest.first()?));
            Some(2)
        }
        etf::INTEGER => {
            let v = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            put_i64(out, i64::from(v));
            Some(5)
        }
        etf::ATOM | etf::ATOM_UTF8 | etf::SMALL_ATOM | etf::SMALL_ATOM_UTF8 => {
            let (len, skip) = if tag == etf::ATOM || tag == etf::ATOM_UTF8 {
                (
                    u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
                    2,
                )
            } else {
                (*rest.first()? as usize, 1)
            };
            let name = rest.get(skip..skip + len)?;
            // Latin-1 atoms are only read here when ASCII (then they equal their UTF-8 name).
            let latin1 = tag == etf::ATOM || tag == etf::SMALL_ATOM;
            if (latin1 && !name.is_ascii()) || std::str::from_utf8(name).is_err() {
                return None;
            }
            out.push(tag::ATOM);
            put_bytes(out, name);
            Some(1 + skip + len)
        }
        etf::BINARY => {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            put_bitstring(out, rest.get(4..4 + len)?, 0, 0);
            Some(5 + len)
        }
        etf::SMALL_TUPLE if depth < MAX_RAW_DEPTH => {
            let arity = *rest.first()?;
            out.push(tag::TUPLE);
            put_varint(out, u64::from(arity));
            let mut pos = 2;
            for _ in 0..arity {
                pos += encode_etf(b.get(pos..)?, out, depth + 1)?;
            }
            Some(pos)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eetf::{Atom, ExternalFun, List, Map, Port, Reference, Tuple};
    use num_bigint::BigInt;
    use std::collections::HashMap;

    use crate::kv::test_terms::*;

    fn key(t: &Term) -> Key {
        Key::from_term(t)
    }
    fn same(a: &Term, b: &Term) {
        assert_eq!(key(a), key(b), "{a} and {b} should be the same key");
    }
    fn differ(a: &Term, b: &Term) {
        assert_ne!(key(a), key(b), "{a} and {b} should be different keys");
    }

    #[test]
    fn fix_and_big_integers_of_same_value_are_equal() {
        for v in [0, 1, -1, 255, 256, -256, i32::MAX, i32::MIN] {
            same(&int(v), &big(v));
        }
        same(&big(i64::MAX), &big(i64::MAX));
        same(&big(i64::MIN), &big(BigInt::from(i64::MIN)));
        let huge: BigInt = BigInt::from(u64::MAX) * 1000u32;
        same(&big(huge.clone()), &big(huge.clone()));
        differ(&big(huge.clone()), &big(-huge.clone()));
        differ(&big(huge.clone()), &big(huge + 1u32));
        differ(&big(i64::MAX), &big(BigInt::from(i64::MAX) + 1u32));
        differ(&big(i64::MIN), &big(BigInt::from(i64::MIN) - 1u32));
        differ(&int(1), &int(-1));
        differ(&int(255), &int(256));
    }

    #[test]
    fn integers_and_floats_differ() {
        differ(&int(1), &float(1.0));
        differ(&big(0), &float(0.0));
        same(&float(1.5), &float(1.5));
        differ(&float(1.5), &float(2.5));
    }

    #[test]
    fn signed_zeros_are_different_keys_per_otp27() {
        differ(&float(0.0), &float(-0.0));
        same(&float(-0.0), &float(-0.0));
    }

    #[test]
    fn bytelist_equals_list_of_small_integers() {
        same(&bytelist(b"hi"), &list(vec![int(104), int(105)]));
        same(&bytelist(b"hi"), &list(vec![big(104), int(105)]));
        differ(&bytelist(b"hi"), &list(vec![int(104), int(106)]));
        differ(&bytelist(b"hi"), &list(vec![int(104)]));
        differ(&bytelist(b"hi"), &bin(b"hi"));
        differ(&bytelist(b"hi"), &list(vec![int(104), float(105.0)]));
    }

    #[test]
    fn all_spellings_of_nil_are_equal() {
        let nil = list(vec![]);
        same(&nil, &bytelist(b""));
        same(&nil, &Term::from(List::nil()));
        same(&nil, &improper(vec![], list(vec![])));
        differ(&nil, &tuple(vec![]));
        differ(&nil, &bin(b""));
        differ(&nil, &atom("nil"));
        differ(&nil, &atom("[]"));
    }

    #[test]
    fn improper_lists_are_flattened_canonically() {
        // [1, 2 | 3] spelled two ways.
        same(
            &improper(vec![int(1), int(2)], int(3)),
            &improper(vec![int(1)], improper(vec![int(2)], int(3))),
        );
        // [1 | [2]] is the proper list [1, 2].
        same(
            &improper(vec![int(1)], list(vec![int(2)])),
            &list(vec![int(1), int(2)]),
        );
        same(&improper(vec![int(104)], bytelist(b"i")), &bytelist(b"hi"));
        // An ImproperList without heads is just its tail.
        same(&improper(vec![], atom("x")), &atom("x"));
        differ(
            &improper(vec![int(1), int(2)], int(3)),
            &list(vec![int(1), int(2), int(3)]),
        );
        differ(
            &improper(vec![int(1)], int(2)),
            &improper(vec![int(1)], float(2.0)),
        );
    }

    #[test]
    fn alias_tag_shape_round_trips_as_key() {
        let r = Term::from(Reference::from(("a@h", vec![1, 2, 3])));
        same(
            &improper(vec![atom("alias")], r.clone()),
            &improper(vec![atom("alias")], r),
        );
    }

    #[test]
    fn maps_ignore_insertion_order() {
        let entries: Vec<(Term, Term)> = (0..200)
            .map(|i| (int(i), bin(format!("v{i}").as_bytes())))
            .collect();
        let a = map(entries.clone());
        let b = map(entries.into_iter().rev().collect());
        same(&a, &b);
        // Different HashMap instances (distinct random seeds) iterate differently.
        let mut h1 = HashMap::new();
        let mut h2 = HashMap::new();
        for i in 0..50 {
            h1.insert(atom(&format!("k{i}")), int(i));
        }
        for i in (0..50).rev() {
            h2.insert(atom(&format!("k{i}")), int(i));
        }
        same(&Term::from(Map { map: h1 }), &Term::from(Map { map: h2 }));
    }

    #[test]
    fn map_keys_and_values_are_canonicalised_too() {
        same(
            &map(vec![(bytelist(b"ab"), int(1))]),
            &map(vec![(list(vec![int(97), int(98)]), big(1))]),
        );
        differ(
            &map(vec![(int(1), int(1))]),
            &map(vec![(float(1.0), int(1))]),
        );
        differ(&map(vec![(int(1), int(1))]), &map(vec![(int(1), int(2))]));
        differ(&map(vec![]), &list(vec![]));
        differ(&map(vec![(int(1), int(2))]), &tuple(vec![int(1), int(2)]));
    }

    #[test]
    fn atoms_by_name() {
        same(&atom("ok"), &atom("ok"));
        same(
            &atom("héllo"),
            &Term::from(Atom::from(String::from("héllo"))),
        );
        differ(&atom("ok"), &atom("Ok"));
        differ(&atom("ok"), &bin(b"ok"));
        differ(&atom("ok"), &bytelist(b"ok"));
        differ(&atom("nil"), &list(vec![]));
    }

    #[test]
    fn pids_ports_refs_use_every_field() {
        let pid = |n: &str, id, serial, creation| Term::from(Pid::new(n, id, serial, creation));
        same(&pid("a@h", 1, 2, 3), &pid("a@h", 1, 2, 3));
        differ(&pid("a@h", 1, 2, 3), &pid("b@h", 1, 2, 3));
        differ(&pid("a@h", 1, 2, 3), &pid("a@h", 9, 2, 3));
        differ(&pid("a@h", 1, 2, 3), &pid("a@h", 1, 9, 3));
        differ(&pid("a@h", 1, 2, 3), &pid("a@h", 1, 2, 9));
        differ(&pid("a@h", u32::MAX, 0, 0), &pid("a@h", 0, u32::MAX, 0));

        let port = |id, creation| {
            Term::from(Port {
                node: Atom::from("a@h"),
                id,
                creation,
            })
        };
        same(&port(7, 1), &port(7, 1));
        differ(&port(7, 1), &port(8, 1));
        differ(&port(7, 1), &port(7, 2));

        let r = |ids: Vec<u32>, creation| {
            Term::from(Reference {
                node: Atom::from("a@h"),
                id: ids,
                creation,
            })
        };
        same(&r(vec![1, 2, 3], 4), &r(vec![1, 2, 3], 4));
        differ(&r(vec![1, 2, 3], 4), &r(vec![1, 2, 3], 5));
        differ(&r(vec![1, 2, 3], 4), &r(vec![1, 2, 4], 4));
        differ(&r(vec![1, 2, 3], 4), &r(vec![1, 2, 3, 0, 0], 4));
        differ(&r(vec![1, 2, 3], 4), &pid("a@h", 1, 2, 3));
    }

    #[test]
    fn bitstrings() {
        let bits = |b: &[u8], t| Term::from(BitBinary::from((b.to_vec(), t)));
        same(&bin(b"abc"), &bits(b"abc", 8));
        same(&bin(b""), &bits(b"", 3));
        same(&bin(b"ab"), &bits(b"abc", 0));
        // Only the low `tail_bits_size` bits of the last byte count (eetf stores them shifted).
        same(&bits(&[1, 0b101], 3), &bits(&[1, 0b1111_0101], 3));
        differ(&bits(&[1, 0b101], 3), &bits(&[1, 0b101], 4));
        differ(&bits(&[1, 0b101], 3), &bits(&[1, 0b100], 3));
        differ(&bits(&[1, 0b101], 3), &bin(&[1, 0b101]));
        differ(&bin(b"abc"), &bin(b"abd"));
        differ(&bin(b""), &bits(&[0], 1));
    }

    #[test]
    fn tuples_and_funs() {
        same(
            &tuple(vec![int(1), bytelist(b"x")]),
            &tuple(vec![big(1), list(vec![int(120)])]),
        );
        differ(&tuple(vec![int(1)]), &tuple(vec![int(1), int(1)]));
        differ(&tuple(vec![int(1), int(2)]), &list(vec![int(1), int(2)]));
        differ(&tuple(vec![]), &tuple(vec![tuple(vec![])]));

        let export = |m, f, a| Term::from(ExternalFun::from((m, f, a)));
        same(&export("m", "f", 1), &export("m", "f", 1));
        differ(&export("m", "f", 1), &export("m", "f", 2));
        differ(&export("m", "f", 1), &export("m", "g", 1));

        let local = |free: Vec<Term>| {
            Term::from(InternalFun::New {
                module: Atom::from("m"),
                arity: 1,
                pid: Pid::new("a@h", 1, 0, 0),
                free_vars: free,
                index: 3,
                uniq: [7; 16],
                old_index: 3,
                old_uniq: 9,
            })
        };
        same(
            &local(vec![bytelist(b"a")]),
            &local(vec![list(vec![int(97)])]),
        );
        differ(&local(vec![]), &local(vec![int(1)]));
        let old = Term::from(InternalFun::Old {
            module: Atom::from("m"),
            pid: Pid::new("a@h", 1, 0, 0),
            free_vars: vec![],
            index: 3,
            uniq: 9,
        });
        same(&old, &old.clone());
        differ(&old, &local(vec![]));
    }

    /// Encodings are self-delimiting: structurally different terms never collide, including
    /// ones whose naive concatenations would (e.g. `{[1], [2]}` vs `{[1, 2], []}`).
    #[test]
    fn distinct_terms_get_distinct_keys() {
        let terms = vec![
            int(0),
            int(1),
            int(-1),
            int(300),
            big(BigInt::from(u64::MAX)),
            big(-BigInt::from(u64::MAX)),
            float(0.0),
            float(-0.0),
            float(1.0),
            atom(""),
            atom("a"),
            atom("ab"),
            bin(b""),
            bin(b"a"),
            bin(b"ab"),
            list(vec![]),
            list(vec![int(1)]),
            list(vec![int(1), int(2)]),
            list(vec![list(vec![int(1)]), list(vec![int(2)])]),
            list(vec![list(vec![int(1), int(2)]), list(vec![])]),
            improper(vec![int(1)], int(2)),
            improper(vec![int(1)], bin(b"")),
            tuple(vec![]),
            tuple(vec![list(vec![int(1)]), list(vec![int(2)])]),
            tuple(vec![list(vec![int(1), int(2)]), list(vec![])]),
            tuple(vec![atom("a"), atom("b")]),
            tuple(vec![atom("ab"), atom("")]),
            map(vec![]),
            map(vec![(atom("a"), atom("b"))]),
            map(vec![(atom("b"), atom("a"))]),
            map(vec![(atom("a"), atom("b")), (atom("c"), atom("d"))]),
            map(vec![(atom("a"), atom("d")), (atom("c"), atom("b"))]),
            Term::from(Pid::new("a@h", 0, 0, 0)),
        ];
        for (i, a) in terms.iter().enumerate() {
            for b in &terms[i + 1..] {
                differ(a, b);
            }
        }
    }

    #[test]
    fn long_improper_chain_does_not_recurse_on_tails() {
        let mut t = atom("end");
        for i in 0..10_000 {
            t = improper(vec![int(i)], t);
        }
        let flat = improper((0..10_000).rev().map(int).collect(), atom("end"));
        same(&t, &flat);
        // Drop the nested chain without overflowing the stack in the test harness either.
        let mut cur = t;
        while let Term::ImproperList(l) = cur {
            cur = *l.last;
        }
    }

    #[test]
    fn deeply_nested_keys_are_encoded_without_recursion() {
        const LEVELS: usize = 100_000;
        // Building and dropping a term this deep recurses in eetf's Drop: do that on a thread
        // with kvnode's stack, and the encoding itself on one with a small stack.
        let big = crate::etf::stack_size_for_depth(LEVELS);
        std::thread::Builder::new()
            .stack_size(big)
            .spawn(|| {
                let mut list = Term::from(List::nil());
                let mut tuple = int(0);
                let mut map = int(0);
                for _ in 0..LEVELS {
                    list = Term::from(List::from(vec![list]));
                    tuple = Term::from(Tuple::from(vec![tuple]));
                    map = Term::from(Map::from([(atom("a"), map), (int(1), int(2))]));
                }
                std::thread::scope(|scope| {
                    std::thread::Builder::new()
                        .stack_size(256 << 10)
                        .spawn_scoped(scope, || {
                            let k = key(&list);
                            // `[[...]]`: a one-cell list per level, each ending in `[]`.
                            let mut expected = [tag::LIST, 1].repeat(LEVELS);
                            expected.resize(expected.len() + LEVELS + 1, tag::NIL);
                            assert_eq!(k.as_bytes(), &expected[..]);
                            assert_eq!(key(&tuple).as_bytes().len(), 2 * LEVELS + 2);
                            // Each map: header, key `a` (3 bytes) or `1` (2), value `2` (2).
                            let k = key(&map);
                            assert_eq!(k.as_bytes().len(), LEVELS * (2 + 3 + 2 + 2) + 2);
                            assert_eq!(key(&map), k, "deterministic");
                        })
                        .expect("spawn")
                        .join()
                        .expect("encodes on a small stack");
                });
            })
            .expect("spawn")
            .join()
            .expect("big-stack thread");
    }

    #[test]
    fn small_keys_are_compact() {
        assert_eq!(key(&int(5)).as_bytes().len(), 2);
        assert_eq!(key(&atom("message")).as_bytes().len(), 9);
        assert_eq!(key(&bytelist(b"hi")).as_bytes().len(), 1 + 1 + 2 * 2 + 1);
    }

    fn etf_of(t: &Term) -> Vec<u8> {
        let mut v = Vec::new();
        t.encode(&mut v).expect("encode");
        v.split_off(1)
    }

    #[test]
    fn keys_read_from_external_format_equal_decoded_keys() {
        let terms = vec![
            atom("message"),
            atom(""),
            atom("ünïcødé"),
            int(0),
            int(255),
            int(256),
            int(-1),
            int(i32::MIN),
            int(i32::MAX),
            bin(b""),
            bin(b"hello"),
            bin(&[0u8; 300]),
            Term::from(Tuple::from(vec![atom("user"), int(42)])),
            Term::from(Tuple::from(vec![])),
            Term::from(Tuple::from(vec![Term::from(Tuple::from(vec![
                bin(b"x"),
                atom("y"),
            ]))])),
        ];
        for t in &terms {
            let mut raw = Vec::new();
            assert!(encode_etf_into(&etf_of(t), &mut raw), "{t}");
            assert_eq!(raw, key(t).as_bytes(), "{t}");
        }
        // Latin-1 ATOM_EXT / SMALL_ATOM_EXT spellings of an ASCII atom are the same key.
        let mut raw = Vec::new();
        assert!(encode_etf_into(&[100, 0, 2, b'o', b'k'], &mut raw));
        assert_eq!(raw, key(&atom("ok")).as_bytes());
        raw.clear();
        assert!(encode_etf_into(&[115, 2, b'o', b'k'], &mut raw));
        assert_eq!(raw, key(&atom("ok")).as_bytes());
        // Other kinds, trailing bytes and truncation are declined, leaving `out` untouched.
        let mut out = vec![7u8];
        for t in [
            float(1.5),
            list(vec![int(1)]),
            bytelist(b"ab"),
            big(1u64 << 40),
        ] {
            assert!(!encode_etf_into(&etf_of(&t), &mut out), "{t}");
        }
        let mut extra = etf_of(&int(1));
        extra.push(0);
        assert!(!encode_etf_into(&extra, &mut out));
        assert!(!encode_etf_into(&etf_of(&bin(b"hello"))[..4], &mut out));
        assert!(!encode_etf_into(&[115, 1, 0xe9], &mut out));
        assert_eq!(out, vec![7u8]);
    }
}

#[cfg(test)]
mod bytes_tests {
    use super::*;
    use crate::kv::test_terms::zoo;

    fn etf(term: &Term) -> Vec<u8> {
        let mut v = Vec::new();
        crate::etf::encode::encode(term, &mut v).expect("encode");
        v.split_off(1)
    }

    fn canon(bytes: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        canonical_from_etf(bytes, &mut out).then_some(out)
    }

    /// The container-by-container reader gives [`Key::from_term`]'s bytes for every term eetf
    /// can hold, so keys stored either way meet.
    #[test]
    fn full_reader_agrees_with_from_term() {
        for term in zoo() {
            let bytes = etf(&term);
            let mut out = Vec::new();
            assert_eq!(
                encode_etf_full(&bytes, &mut out, 0, &mut Walk { budget: usize::MAX }),
                Some(bytes.len()),
                "{term}"
            );
            assert_eq!(out, Key::from_term(&term).as_bytes(), "{term}");
        }
    }

    /// `%{0.0 => :pos, -0.0 => :neg}` (two keys since OTP 27; eetf merges them) has a key of
    /// its own, different from either one-entry map, whatever the entry order.
    #[test]
    fn maps_with_both_signed_zeros_have_their_own_key() {
        let zero = |neg: bool| {
            let mut v = vec![crate::etf::NEW_FLOAT_EXT];
            v.extend_from_slice(&(if neg { -0.0f64 } else { 0.0 }).to_be_bytes());
            v
        };
        let atom = |a: &str| {
            let mut v = vec![crate::etf::SMALL_ATOM_UTF8_EXT, a.len() as u8];
            v.extend_from_slice(a.as_bytes());
            v
        };
        let map = |entries: &[(Vec<u8>, Vec<u8>)]| {
            let mut v = vec![crate::etf::MAP_EXT];
            v.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for (k, x) in entries {
                v.extend_from_slice(k);
                v.extend_from_slice(x);
            }
            v
        };
        let both = map(&[(zero(false), atom("pos")), (zero(true), atom("neg"))]);
        let swapped = map(&[(zero(true), atom("neg")), (zero(false), atom("pos"))]);
        let pos = map(&[(zero(false), atom("pos"))]);
        let neg = map(&[(zero(true), atom("pos"))]);
        let key = canon(&both).expect("a key");
        assert_eq!(Some(&key), canon(&swapped).as_ref());
        assert_ne!(Some(&key), canon(&pos).as_ref());
        assert_ne!(Some(&key), canon(&neg).as_ref());
        assert_ne!(canon(&pos), canon(&neg));
    }

    /// A Latin-1 atom is the same atom (and key) as its UTF-8 spelling.
    #[test]
    fn latin1_and_utf8_atoms_are_one_key() {
        let latin1 = [crate::etf::ATOM_EXT, 0, 2, b'c', 0xe9];
        let small_latin1 = [crate::etf::SMALL_ATOM_EXT, 2, b'c', 0xe9];
        let utf8 = [crate::etf::SMALL_ATOM_UTF8_EXT, 3, b'c', 0xc3, 0xa9];
        assert_eq!(canon(&latin1), canon(&utf8));
        assert_eq!(canon(&small_latin1), canon(&utf8));
        assert_eq!(
            canon(&utf8).as_deref(),
            Some(Key::from_term(&Term::from(eetf::Atom::from("c\u{e9}"))).as_bytes())
        );
    }

    /// OTP 29 native records: `=:=` compares module, name, the exported flag, and the fields
    /// in order with their values.
    #[test]
    fn native_records_compare_as_otp_29_does() {
        // #geo:pt{x = 1, y = 2}, as OTP 29's term_to_binary writes it.
        let record = |exported: u8, fields: [(&[u8], u8); 2]| {
            let mut v = vec![crate::etf::RECORD_EXT, 0, 0, 0, 2, exported];
            v.extend_from_slice(&[119, 3, b'g', b'e', b'o', 119, 2, b'p', b't']);
            for (name, _) in fields {
                v.extend_from_slice(&[119, name.len() as u8]);
                v.extend_from_slice(name);
            }
            for (_, value) in fields {
                v.extend_from_slice(&[crate::etf::SMALL_INTEGER_EXT, value]);
            }
            v
        };
        let xy = record(1, [(b"x", 1), (b"y", 2)]);
        let key = canon(&xy).expect("a record has a key");
        assert_eq!(Some(&key), canon(&xy.clone()).as_ref());
        assert_ne!(
            Some(&key),
            canon(&record(0, [(b"x", 1), (b"y", 2)])).as_ref()
        );
        assert_ne!(
            Some(&key),
            canon(&record(1, [(b"y", 2), (b"x", 1)])).as_ref()
        );
        assert_ne!(
            Some(&key),
            canon(&record(1, [(b"x", 1), (b"y", 3)])).as_ref()
        );
        // Inside a tuple and a map.
        let mut tuple = vec![crate::etf::SMALL_TUPLE_EXT, 1];
        tuple.extend_from_slice(&xy);
        assert!(canon(&tuple).is_some());
        let mut map = vec![crate::etf::MAP_EXT, 0, 0, 0, 1];
        map.extend_from_slice(&xy);
        map.extend_from_slice(&xy);
        assert!(canon(&map).is_some());
        // Truncated: no key.
        assert_eq!(canon(&xy[..xy.len() - 1]), None);
    }
}

#[cfg(test)]
mod full_work_tests {
    use super::*;
    use crate::etf::{LIST_EXT, MAP_EXT, NIL_EXT};

    /// A native record `#m:n{}` (OTP 29 bytes): what sends a key to the full reader.
    const RECORD: [u8; 12] = [67, 0, 0, 0, 0, 1, 119, 1, b'm', 119, 1, b'n'];

    /// `[[[ ... [<<n small integers>>, record] ... ]]]`, `depth` lists deep.
    fn nested_lists(depth: usize, n: usize) -> Vec<u8> {
        let mut t = vec![LIST_EXT];
        t.extend_from_slice(&((n + 1) as u32).to_be_bytes());
        for _ in 0..n {
            t.extend_from_slice(&[crate::etf::SMALL_INTEGER_EXT, 1]);
        }
        t.extend_from_slice(&RECORD);
        t.push(NIL_EXT);
        for _ in 0..depth {
            let mut o = vec![LIST_EXT, 0, 0, 0, 1];
            o.extend_from_slice(&t);
            o.push(NIL_EXT);
            t = o;
        }
        t
    }

    /// `%{a: %{a: ... {record, <<bytes>>} ...}}`, `depth` maps deep.
    fn nested_maps(depth: usize, bytes: usize) -> Vec<u8> {
        let mut t = vec![crate::etf::SMALL_TUPLE_EXT, 2];
        t.extend_from_slice(&RECORD);
        t.push(crate::etf::BINARY_EXT);
        t.extend_from_slice(&(bytes as u32).to_be_bytes());
        t.resize(t.len() + bytes, 0);
        for _ in 0..depth {
            let mut o = vec![
                MAP_EXT,
                0,
                0,
                0,
                1,
                crate::etf::SMALL_ATOM_UTF8_EXT,
                1,
                b'a',
            ];
            o.extend_from_slice(&t);
            t = o;
        }
        t
    }

    /// A key holding a native record, nested deep around a big list (or a big binary under
    /// nested maps), used to cost its depth times its size: each list level validated its
    /// whole subtree again, each map level copied it (minutes of KV server time for one
    /// 2 MB request). Now refused once over budget, in time linear in its size.
    /// Runs `f` on a thread with the stack kvnode's threads get for terms this deep (the
    /// full reader recurses once a level).
    fn deep_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(crate::etf::stack_size_for_depth(
                MAX_FULL_DEPTH as usize + 10,
            ))
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic");
    }

    #[test]
    fn deep_keys_around_big_terms_are_refused_not_walked_quadratically() {
        deep_stack(refused);
    }

    fn refused() {
        let mut out = Vec::new();
        let lists = nested_lists(1_990, 20_000);
        let started = std::time::Instant::now();
        assert!(
            !canonical_from_etf(&lists, &mut out),
            "nested lists refused"
        );
        assert!(out.is_empty());
        let maps = nested_maps(1_990, 64 << 10);
        assert!(!canonical_from_etf(&maps, &mut out), "nested maps refused");
        assert!(out.is_empty());
        eprintln!("both refused in {:?}", started.elapsed());
    }

    /// Keys as deep as [`MAX_FULL_DEPTH`] allows (the record and its atoms are two levels
    /// more) around small terms, and big flat ones, keep
    /// their canonical key (the budget's floor and factor cover them).
    #[test]
    fn deep_small_keys_and_big_flat_keys_keep_their_key() {
        deep_stack(kept);
    }

    fn kept() {
        let mut out = Vec::new();
        assert!(canonical_from_etf(&nested_lists(1_997, 1), &mut out));
        out.clear();
        assert!(canonical_from_etf(&nested_maps(1_997, 8), &mut out));
        out.clear();
        assert!(canonical_from_etf(&nested_lists(1, 2_000_000), &mut out));
        out.clear();
        assert!(canonical_from_etf(&nested_maps(1, 64 << 20), &mut out));
        // Deeper than MAX_FULL_DEPTH: refused as before.
        out.clear();
        assert!(!canonical_from_etf(&nested_lists(2_001, 1), &mut out));
    }
}
