//! Terms as JSON and back, by the mapping in the module docs of [`super`] ("JSON mapping").
//! Both directions are iterative; reading is bounded by [`MAX_JSON_DEPTH`].

use super::order::{Sorter, wire_bits};
use super::parse::{cons, int_term};
use super::print::fmt_float;
use super::{MAX_JSON_DEPTH, SyntaxError};
use eetf::{
    Atom, Binary, BitBinary, ExternalFun, InternalFun, List, Map, Pid, Port, Reference, Term, Tuple,
};
use num_bigint::BigInt;
use num_traits::ToPrimitive;
use std::collections::HashMap;
use std::fmt::Write;

/// Integers up to this magnitude (2^53 − 1) are JSON numbers; larger ones are
/// `{"$int": "digits"}`, because most JSON readers hold numbers in doubles.
pub const MAX_JSON_SAFE_INTEGER: i64 = (1 << 53) - 1;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_end_matches('=');
    if !text.len().is_multiple_of(4) || text.len() - t.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let (mut acc, mut n) = (0u32, 0);
    for c in t.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = acc << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
            acc &= (1 << n) - 1;
        }
    }
    Some(out)
}

pub(super) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

enum Job<'a> {
    T(&'a Term),
    S(&'static str),
    /// An object key and its colon.
    Key(&'a str),
}

pub(super) fn utf8_key(t: &Term) -> Option<&str> {
    match t {
        Term::Binary(b) => std::str::from_utf8(&b.bytes)
            .ok()
            .filter(|s| !s.starts_with('$')),
        _ => None,
    }
}

pub(super) fn atom_key(t: &Term) -> Option<&str> {
    match t {
        Term::Atom(a) if !a.name.starts_with('$') => Some(&a.name),
        _ => None,
    }
}

fn node_fields(out: &mut String, node: &Atom) {
    out.push_str("{\"node\":");
    json_str(out, &node.name);
}

/// Renders `term` as JSON; see [`super::to_json()`].
pub(super) fn to_json(term: &Term) -> String {
    let mut out = String::new();
    // Map keys sorted once for the whole document (see [`Sorter`]).
    let sorter = Sorter::new();
    let mut jobs = vec![Job::T(term)];
    fn seq<'a>(jobs: &mut Vec<Job<'a>>, items: &'a [Term]) {
        for (i, t) in items.iter().enumerate().rev() {
            jobs.push(Job::T(t));
            if i > 0 {
                jobs.push(Job::S(","));
            }
        }
    }
    while let Some(job) = jobs.pop() {
        let t = match job {
            Job::S(s) => {
                out.push_str(s);
                continue;
            }
            Job::Key(k) => {
                json_str(&mut out, k);
                out.push(':');
                continue;
            }
            Job::T(t) => t,
        };
        match t {
            Term::Atom(a) => match a.name.as_str() {
                "true" | "false" => out.push_str(&a.name),
                "nil" => out.push_str("null"),
                name => {
                    out.push_str("{\"$atom\":");
                    json_str(&mut out, name);
                    out.push('}');
                }
            },
            Term::FixInteger(i) => {
                let _ = write!(out, "{}", i.value);
            }
            Term::BigInteger(b) => match b.value.to_i64() {
                Some(i) if i.abs() <= MAX_JSON_SAFE_INTEGER => {
                    let _ = write!(out, "{i}");
                }
                _ => {
                    let _ = write!(out, "{{\"$int\":\"{}\"}}", b.value);
                }
            },
            Term::Float(f) => out.push_str(&fmt_float(f.value)),
            Term::Binary(b) => match std::str::from_utf8(&b.bytes) {
                Ok(s) => json_str(&mut out, s),
                Err(_) => {
                    let _ = write!(out, "{{\"$binary\":\"{}\"}}", base64(&b.bytes));
                }
            },
            Term::BitBinary(b) => {
                let (bytes, bits) = wire_bits(b);
                if bits.is_multiple_of(8) {
                    match std::str::from_utf8(&bytes) {
                        Ok(s) => json_str(&mut out, s),
                        Err(_) => {
                            let _ = write!(out, "{{\"$binary\":\"{}\"}}", base64(&bytes));
                        }
                    }
                } else {
                    let _ = write!(
                        out,
                        "{{\"$bitstring\":{{\"base64\":\"{}\",\"bits\":{bits}}}}}",
                        base64(&bytes)
                    );
                }
            }
            Term::ByteList(b) => {
                out.push('[');
                for (i, x) in b.bytes.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{x}");
                }
                out.push(']');
            }
            Term::List(l) => {
                out.push('[');
                jobs.push(Job::S("]"));
                seq(&mut jobs, &l.elements);
            }
            Term::ImproperList(l) => {
                out.push_str("{\"$improper_list\":{\"elements\":[");
                jobs.push(Job::S("}}"));
                jobs.push(Job::T(&l.last));
                jobs.push(Job::S("],\"tail\":"));
                seq(&mut jobs, &l.elements);
            }
            Term::Tuple(tu) => {
                out.push_str("{\"$tuple\":[");
                jobs.push(Job::S("]}"));
                seq(&mut jobs, &tu.elements);
            }
            Term::Map(m) => {
                let mut entries = sorter.entries(m).to_vec();
                if entries.iter().all(|(k, _)| utf8_key(k).is_some()) {
                    entries.sort_by(|a, b| utf8_key(a.0).cmp(&utf8_key(b.0)));
                    out.push('{');
                    jobs.push(Job::S("}"));
                    object(&mut jobs, &entries, utf8_key);
                } else if entries.iter().all(|(k, _)| atom_key(k).is_some()) {
                    out.push_str("{\"$atom_keys\":{");
                    jobs.push(Job::S("}}"));
                    object(&mut jobs, &entries, atom_key);
                } else {
                    out.push_str("{\"$map\":[");
                    jobs.push(Job::S("]}"));
                    for (i, (k, v)) in entries.iter().enumerate().rev() {
                        jobs.push(Job::S("]"));
                        jobs.push(Job::T(v));
                        jobs.push(Job::S(","));
                        jobs.push(Job::T(k));
                        jobs.push(Job::S("["));
                        if i > 0 {
                            jobs.push(Job::S(","));
                        }
                    }
                }
            }
            Term::Pid(p) => {
                out.push_str("{\"$pid\":");
                node_fields(&mut out, &p.node);
                let _ = write!(
                    out,
                    ",\"id\":{},\"serial\":{},\"creation\":{}}}}}",
                    p.id, p.serial, p.creation
                );
            }
            Term::Port(p) => {
                out.push_str("{\"$port\":");
                node_fields(&mut out, &p.node);
                let _ = write!(out, ",\"id\":{},\"creation\":{}}}}}", p.id, p.creation);
            }
            Term::Reference(r) => {
                out.push_str("{\"$ref\":");
                node_fields(&mut out, &r.node);
                out.push_str(",\"id\":[");
                for (i, id) in r.id.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{id}");
                }
                let _ = write!(out, "],\"creation\":{}}}}}", r.creation);
            }
            Term::ExternalFun(f) => {
                out.push_str("{\"$fun\":{\"module\":");
                json_str(&mut out, &f.module.name);
                out.push_str(",\"function\":");
                json_str(&mut out, &f.function.name);
                let _ = write!(out, ",\"arity\":{}}}}}", f.arity);
            }
            Term::InternalFun(f) => {
                let (module, index, uniq, arity) = match f.as_ref() {
                    InternalFun::Old {
                        module,
                        index,
                        uniq,
                        ..
                    } => (module, *index, *uniq, 0),
                    InternalFun::New {
                        module,
                        arity,
                        old_index,
                        old_uniq,
                        ..
                    } => (module, *old_index, *old_uniq, *arity),
                };
                out.push_str("{\"$fun\":{\"module\":");
                json_str(&mut out, &module.name);
                let _ = write!(
                    out,
                    ",\"index\":{index},\"uniq\":{uniq},\"arity\":{arity}}}}}"
                );
            }
        }
    }
    out
}

fn object<'a>(
    jobs: &mut Vec<Job<'a>>,
    entries: &[(&'a Term, &'a Term)],
    key: fn(&'a Term) -> Option<&'a str>,
) {
    for (i, (k, v)) in entries.iter().enumerate().rev() {
        jobs.push(Job::T(v));
        jobs.push(Job::Key(key(k).unwrap_or_default()));
        if i > 0 {
            jobs.push(Job::S(","));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

fn err(column: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        column,
        message: message.into(),
    }
}

/// A JSON value read but not yet made a term.
enum J {
    Null,
    Bool(bool),
    /// The number's text and column.
    Num(String, usize),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>, usize),
}

struct Reader {
    chars: Vec<char>,
    pos: usize,
}

impl Reader {
    fn ws(&mut self) {
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }
    fn cur(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn col(&self) -> usize {
        self.pos + 1
    }
    fn word(&mut self, w: &str) -> bool {
        let n = w.chars().count();
        if self
            .chars
            .get(self.pos..self.pos + n)
            .is_some_and(|s| s.iter().copied().eq(w.chars()))
        {
            self.pos += n;
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.col();
        self.pos += 1;
        let mut out = String::new();
        loop {
            let col = self.col();
            match self.cur() {
                None => {
                    return Err(err(
                        col,
                        format!("expected the `\"` closing the string at column {start}"),
                    ));
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    let c = self.cur().ok_or_else(|| err(col, "expected an escape"))?;
                    self.pos += 1;
                    match c {
                        '"' | '\\' | '/' => out.push(c),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let hi = self.hex4(col)?;
                            let v = if (0xD800..0xDC00).contains(&hi) && self.word("\\u") {
                                let lo = self.hex4(col)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(err(col, "unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(v)
                                    .ok_or_else(|| err(col, "unpaired surrogate in \\u escape"))?,
                            );
                        }
                        _ => return Err(err(col, "unknown escape in a JSON string")),
                    }
                }
                Some(c) if u32::from(c) < 0x20 => {
                    return Err(err(col, "control character in a JSON string (escape it)"));
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
    fn hex4(&mut self, col: usize) -> Result<u32, SyntaxError> {
        let s: String = self
            .chars
            .get(self.pos..self.pos + 4)
            .unwrap_or(&[])
            .iter()
            .collect();
        let v = u32::from_str_radix(&s, 16)
            .ok()
            .filter(|_| s.len() == 4 && s.chars().all(|c| c.is_ascii_hexdigit()));
        self.pos += 4;
        v.ok_or_else(|| err(col, "expected 4 hex digits after \\u"))
    }
    fn number(&mut self) -> Result<J, SyntaxError> {
        let col = self.col();
        let s = self.pos;
        if self.cur() == Some('-') {
            self.pos += 1;
        }
        let digits = |r: &mut Reader| {
            let s = r.pos;
            while r.cur().is_some_and(|c| c.is_ascii_digit()) {
                r.pos += 1;
            }
            r.pos > s
        };
        if !digits(self) {
            return Err(err(self.col(), "expected digits"));
        }
        if self.cur() == Some('.') {
            self.pos += 1;
            if !digits(self) {
                return Err(err(self.col(), "expected digits after `.`"));
            }
        }
        if matches!(self.cur(), Some('e' | 'E')) {
            self.pos += 1;
            if matches!(self.cur(), Some('+' | '-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(err(self.col(), "expected exponent digits"));
            }
        }
        Ok(J::Num(self.chars[s..self.pos].iter().collect(), col))
    }
}

enum Open {
    Arr(Vec<J>),
    Obj(Vec<(String, J)>, Option<String>, usize),
}

/// Reads one JSON document into a [`J`] tree, iteratively.
fn read(text: &str) -> Result<J, SyntaxError> {
    let mut r = Reader {
        chars: text.chars().collect(),
        pos: 0,
    };
    let mut stack: Vec<Open> = Vec::new();
    'value: loop {
        r.ws();
        let col = r.col();
        // An object expects a key first.
        if let Some(Open::Obj(_, key @ None, _)) = stack.last_mut() {
            if r.cur() != Some('"') {
                return Err(err(col, "expected a string key in the object"));
            }
            *key = Some(r.string()?);
            r.ws();
            if r.cur() != Some(':') {
                return Err(err(r.col(), "expected `:` after the object key"));
            }
            r.pos += 1;
            r.ws();
        }
        let col = r.col();
        let mut value = match r.cur() {
            Some('{') | Some('[') => {
                let obj = r.cur() == Some('{');
                r.pos += 1;
                r.ws();
                let close = if obj { '}' } else { ']' };
                if r.cur() == Some(close) {
                    r.pos += 1;
                    if obj {
                        J::Obj(Vec::new(), col)
                    } else {
                        J::Arr(Vec::new())
                    }
                } else {
                    if stack.len() >= MAX_JSON_DEPTH {
                        return Err(err(
                            col,
                            format!("JSON nested deeper than {MAX_JSON_DEPTH} levels is refused"),
                        ));
                    }
                    stack.push(if obj {
                        Open::Obj(Vec::new(), None, col)
                    } else {
                        Open::Arr(Vec::new())
                    });
                    continue 'value;
                }
            }
            Some('"') => J::Str(r.string()?),
            Some('-' | '0'..='9') => r.number()?,
            _ if r.word("null") => J::Null,
            _ if r.word("true") => J::Bool(true),
            _ if r.word("false") => J::Bool(false),
            _ => return Err(err(col, "expected a JSON value")),
        };
        loop {
            r.ws();
            let Some(top) = stack.last_mut() else {
                if r.cur().is_some() {
                    return Err(err(
                        r.col(),
                        "expected the end of the text after the JSON value",
                    ));
                }
                return Ok(value);
            };
            let close = match top {
                Open::Arr(items) => {
                    items.push(value);
                    ']'
                }
                Open::Obj(pairs, key, _) => {
                    pairs.push((key.take().unwrap_or_default(), value));
                    '}'
                }
            };
            match r.cur() {
                Some(',') => {
                    r.pos += 1;
                    continue 'value;
                }
                Some(c) if c == close => {
                    r.pos += 1;
                    value = match stack.pop() {
                        Some(Open::Arr(items)) => J::Arr(items),
                        Some(Open::Obj(pairs, _, c)) => J::Obj(pairs, c),
                        None => unreachable!("top exists"),
                    };
                }
                _ => return Err(err(r.col(), format!("expected `,` or `{close}`"))),
            }
        }
    }
}

fn get<'a>(pairs: &'a [(String, J)], name: &str, col: usize) -> Result<&'a J, SyntaxError> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .ok_or_else(|| err(col, format!("expected the field \"{name}\"")))
}

fn get_u64(pairs: &[(String, J)], name: &str, col: usize) -> Result<u64, SyntaxError> {
    match get(pairs, name, col)? {
        J::Num(n, _) => n
            .parse()
            .map_err(|_| err(col, format!("\"{name}\" must be a non-negative integer"))),
        _ => Err(err(col, format!("\"{name}\" must be a number"))),
    }
}

fn get_str<'a>(pairs: &'a [(String, J)], name: &str, col: usize) -> Result<&'a str, SyntaxError> {
    match get(pairs, name, col)? {
        J::Str(s) => Ok(s),
        _ => Err(err(col, format!("\"{name}\" must be a string"))),
    }
}

fn u32_of(v: u64, col: usize) -> Result<u32, SyntaxError> {
    u32::try_from(v).map_err(|_| err(col, "number out of range"))
}

/// Work for the conversion of a [`J`] tree into a term: convert, or assemble from converted.
enum Step {
    Conv(J),
    List(usize),
    Tuple(usize),
    Improper(usize),
    /// A map of this many entries, keys and values alternating.
    Map(usize),
    /// A map of this many entries with these keys (binary keys if true, atom keys if false).
    Keyed(Vec<String>, bool),
}

/// Reads a JSON document written by [`to_json()`] (or by hand, by the same mapping) back into
/// a term; see [`super::from_json()`].
pub(super) fn from_json(text: &str) -> Result<Term, SyntaxError> {
    let root = read(text)?;
    let mut steps = vec![Step::Conv(root)];
    let mut done: Vec<Term> = Vec::new();
    while let Some(step) = steps.pop() {
        let term = match step {
            Step::Conv(j) => match j {
                J::Null => Term::from(Atom::from("nil")),
                J::Bool(b) => Term::from(Atom::from(if b { "true" } else { "false" })),
                J::Str(s) => Term::from(Binary::from(s.into_bytes())),
                J::Num(n, col) => number(&n, col)?,
                J::Arr(items) => {
                    steps.push(Step::List(items.len()));
                    steps.extend(items.into_iter().rev().map(Step::Conv));
                    continue;
                }
                J::Obj(pairs, col) => {
                    let tagged = pairs.len() == 1 && pairs[0].0.starts_with('$');
                    if !tagged {
                        if let Some((k, _)) = pairs.iter().find(|(k, _)| k.starts_with('$')) {
                            return Err(err(
                                col,
                                format!(
                                    "unknown or misplaced tag \"{}\" (a map with such keys is written {{\"$map\": [[k, v], ...]}})",
                                    super::lex::excerpt(k)
                                ),
                            ));
                        }
                        let (keys, vals): (Vec<String>, Vec<J>) = pairs.into_iter().unzip();
                        steps.push(Step::Keyed(keys, true));
                        steps.extend(vals.into_iter().rev().map(Step::Conv));
                        continue;
                    }
                    let Some((tag, body)) = pairs.into_iter().next() else {
                        unreachable!("one pair")
                    };
                    match (tag.as_str(), body) {
                        ("$atom", J::Str(s)) => Term::from(Atom::from(s)),
                        ("$int", J::Str(s)) => {
                            let v: BigInt = s
                                .parse()
                                .map_err(|_| err(col, "\"$int\" needs decimal digits"))?;
                            int_term(v)
                        }
                        ("$binary", J::Str(s)) => Term::from(Binary::from(
                            unbase64(&s).ok_or_else(|| err(col, "\"$binary\" needs base64"))?,
                        )),
                        ("$bitstring", J::Obj(f, c)) => {
                            let bytes = unbase64(get_str(&f, "base64", c)?)
                                .ok_or_else(|| err(c, "\"base64\" needs base64"))?;
                            let bits = get_u64(&f, "bits", c)? as usize;
                            if bits.div_ceil(8) != bytes.len() {
                                return Err(err(c, "\"bits\" does not match the bytes"));
                            }
                            if bits.is_multiple_of(8) {
                                Term::from(Binary::from(bytes))
                            } else {
                                // eetf keeps the tail bits in the low end of the last byte.
                                let mut bytes = bytes;
                                let tail = (bits % 8) as u8;
                                if let Some(last) = bytes.last_mut() {
                                    *last >>= 8 - tail;
                                }
                                Term::from(BitBinary::from((bytes, tail)))
                            }
                        }
                        ("$tuple", J::Arr(items)) => {
                            steps.push(Step::Tuple(items.len()));
                            steps.extend(items.into_iter().rev().map(Step::Conv));
                            continue;
                        }
                        ("$improper_list", J::Obj(f, c)) => {
                            let mut elements = None;
                            let mut tail = None;
                            for (k, v) in f {
                                match (k.as_str(), v) {
                                    ("elements", J::Arr(items)) => elements = Some(items),
                                    ("tail", v) => tail = Some(v),
                                    _ => {
                                        return Err(err(
                                            c,
                                            "\"$improper_list\" has \"elements\" (an array) and \"tail\"",
                                        ));
                                    }
                                }
                            }
                            let (Some(elements), Some(tail)) = (elements, tail) else {
                                return Err(err(
                                    c,
                                    "\"$improper_list\" has \"elements\" (an array) and \"tail\"",
                                ));
                            };
                            steps.push(Step::Improper(elements.len()));
                            steps.push(Step::Conv(tail));
                            steps.extend(elements.into_iter().rev().map(Step::Conv));
                            continue;
                        }
                        ("$map", J::Arr(items)) => {
                            steps.push(Step::Map(items.len()));
                            for item in items.into_iter().rev() {
                                match item {
                                    J::Arr(kv) if kv.len() == 2 => {
                                        let mut kv = kv.into_iter();
                                        if let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                                            steps.push(Step::Conv(v));
                                            steps.push(Step::Conv(k));
                                        }
                                    }
                                    _ => return Err(err(col, "\"$map\" holds [key, value] pairs")),
                                }
                            }
                            continue;
                        }
                        ("$atom_keys", J::Obj(f, _)) => {
                            let (keys, vals): (Vec<String>, Vec<J>) = f.into_iter().unzip();
                            steps.push(Step::Keyed(keys, false));
                            steps.extend(vals.into_iter().rev().map(Step::Conv));
                            continue;
                        }
                        ("$pid", J::Obj(f, c)) => Term::from(Pid::new(
                            get_str(&f, "node", c)?,
                            u32_of(get_u64(&f, "id", c)?, c)?,
                            u32_of(get_u64(&f, "serial", c)?, c)?,
                            u32_of(get_u64(&f, "creation", c)?, c)?,
                        )),
                        ("$port", J::Obj(f, c)) => Term::from(Port {
                            node: Atom::from(get_str(&f, "node", c)?),
                            id: get_u64(&f, "id", c)?,
                            creation: u32_of(get_u64(&f, "creation", c)?, c)?,
                        }),
                        ("$ref", J::Obj(f, c)) => {
                            let id = match get(&f, "id", c)? {
                                J::Arr(ids) => ids
                                    .iter()
                                    .map(|i| match i {
                                        J::Num(n, _) => n
                                            .parse::<u32>()
                                            .map_err(|_| err(c, "ref ids are 32-bit numbers")),
                                        _ => Err(err(c, "ref ids are numbers")),
                                    })
                                    .collect::<Result<Vec<_>, _>>()?,
                                _ => return Err(err(c, "\"id\" must be an array")),
                            };
                            Term::from(Reference {
                                node: Atom::from(get_str(&f, "node", c)?),
                                id,
                                creation: u32_of(get_u64(&f, "creation", c)?, c)?,
                            })
                        }
                        ("$fun", J::Obj(f, c)) => {
                            if get(&f, "function", c).is_err() {
                                return Err(err(
                                    c,
                                    "only external funs ({\"module\", \"function\", \"arity\"}) can be read back",
                                ));
                            }
                            let arity = u8::try_from(get_u64(&f, "arity", c)?)
                                .map_err(|_| err(c, "arity beyond 255"))?;
                            Term::from(ExternalFun {
                                module: Atom::from(get_str(&f, "module", c)?),
                                function: Atom::from(get_str(&f, "function", c)?),
                                arity,
                            })
                        }
                        (tag, _) => {
                            return Err(err(
                                col,
                                format!(
                                    "unknown tag \"{}\" or a body of the wrong kind",
                                    super::lex::excerpt(tag)
                                ),
                            ));
                        }
                    }
                }
            },
            Step::List(n) => {
                let items = done.split_off(done.len() - n);
                Term::from(List::from(items))
            }
            Step::Tuple(n) => {
                let items = done.split_off(done.len() - n);
                Term::from(Tuple::from(items))
            }
            Step::Improper(n) => {
                let mut items = done.split_off(done.len() - n - 1);
                let tail = items.pop().unwrap_or_else(|| Term::from(List::nil()));
                cons(items, tail)
            }
            Step::Map(n) => {
                let items = done.split_off(done.len() - 2 * n);
                let mut it = items.into_iter();
                let mut map = HashMap::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    map.insert(k, v);
                }
                Term::from(Map::from(map))
            }
            Step::Keyed(keys, binary) => {
                let vals = done.split_off(done.len() - keys.len());
                let map: HashMap<Term, Term> = keys
                    .into_iter()
                    .map(|k| {
                        if binary {
                            Term::from(Binary::from(k.into_bytes()))
                        } else {
                            Term::from(Atom::from(k))
                        }
                    })
                    .zip(vals)
                    .collect();
                Term::from(Map::from(map))
            }
        };
        done.push(term);
    }
    done.pop().ok_or_else(|| err(1, "empty JSON"))
}

fn number(n: &str, col: usize) -> Result<Term, SyntaxError> {
    if n.contains(['.', 'e', 'E']) {
        let value: f64 = n.parse().map_err(|_| err(col, "not a number"))?;
        if !value.is_finite() {
            return Err(err(col, "float out of range"));
        }
        Ok(Term::from(eetf::Float { value }))
    } else {
        let v: BigInt = n.parse().map_err(|_| err(col, "not an integer"))?;
        Ok(int_term(v))
    }
}
