//! Terms as text: Erlang and Elixir term syntax, parsed into terms and printed back, and a
//! JSON rendering. Used by the command-line client (`kvnode call` and friends).
//!
//! Parsing, printing and JSON are iterative (heap stacks, not recursion), so text nested
//! [`MAX_DEPTH`] deep cannot overflow the stack while it is read, and a term of any depth
//! prints. The terms themselves are `eetf` terms, whose `Drop`, `Hash`, `Clone` and encoder
//! recurse: a thread that keeps a term nested thousands deep needs the stack
//! `crate::etf::stack_size_for_depth` gives (kvnode's threads have it).
//!
//! # What parses
//!
//! | Form | Erlang | Elixir |
//! |------|--------|--------|
//! | atom | `ok`, `node@host`, `'Quoted \' atom'` | `:ok`, `:"quoted atom"`, `:'q'`, `true`, `false`, `nil`, `Foo.Bar` (= `'Elixir.Foo.Bar'`) |
//! | integer | `42`, `-7`, `1_000`, `16#ff`, `2#1010`, `$a`, `$\n`, bignums | `42`, `-7`, `1_000`, `0xff`, `0o17`, `0b1010`, `?a`, `?\n`, bignums |
//! | float | `1.0`, `-0.0`, `1.5e-7`, `1_000.5` | same |
//! | string | `"abc"`: a charlist (list of code points; `""` is `[]`; `"ab" "cd"` is one) | `"abc"`: a UTF-8 binary |
//! | charlist | (the string above) | `'abc'`, `~c"abc"`, `~c'abc'` |
//! | binary | `<<"abc">>` (latin-1), `<<"é"/utf8>>`, `<<1,2,3>>`, `<<"a",1>>`, `<<1:3>>`, `<<-1:16>>`, `<<233/utf8>>` | `<<1, 2>>`, `<<"a", 1>>`, `<<1::3>>`, `<<1::size(3)>>`, `<<233::utf8>>` |
//! | tuple | `{a, 1}`, `{}` | `{:a, 1}`, `{}` |
//! | list | `[1,2]`, `[1|T]` forms `[1|2]` | `[1, 2]`, `[1 | 2]`, keyword lists `[a: 1, "b c": 2]` |
//! | map | `#{k => v}` | `%{k => v}`, `%{a: 1}`, `%{"k" => 1, a: 2}` |
//! | pid | `<0.12.0>` | `#PID<0.12.0>` |
//!
//! One term per text, surrounded by any whitespace; Erlang allows a trailing `.`. Escapes
//! are each language's: `\n \r \t \v \b \f \e \s \d \\ \' \"`, Erlang `\NNN` (octal),
//! `\xHH`, `\x{H...}`, `\^a`; Elixir `\a \0 \#`, `\xHH`, `\uHHHH`, `\u{H...}`. The first number
//! of a pid is ignored: it is a node index that only means something inside the shell that
//! printed it; the parsed pid has node `''` and creation 0, and the caller puts in the node
//! it means. References, ports and funs print but do not parse. Binary segments are integers
//! (default 8 bits, any size up to [`MAX_SEGMENT_BITS`], negative in two's complement) and
//! strings; a value that does not fit its size is an error, not truncated as Erlang would.
//! Erlang string segments without `/utf8` take characters up to 255 only.
//!
//! Errors give the 1-based column (in characters) of the first character that could not be
//! read and what was expected there. Refused outright: nesting deeper than [`MAX_DEPTH`],
//! map keys nested inside map keys deeper than [`MAX_MAP_KEY_NESTING`], atoms longer than
//! [`MAX_ATOM_CHARS`], floats beyond ±1.8e308.
//!
//! # How terms print
//!
//! As the language's shell would print them, on one line, so that [`parse()`] reads the text
//! back to an exactly equal term (`=:=`, with `-0.0` apart from `0.0`):
//!
//! - Atoms bare when they can be (Erlang `ok`, `node@host`; Elixir `:ok`, `true`, `nil`,
//!   `Foo.Bar` for `'Elixir.Foo.Bar'`), else quoted (`'Hello'`, `:"hello world"`). Non-ASCII
//!   atoms print quoted.
//! - Integers in decimal; floats in the shortest text that reads back exactly, always with a
//!   `.`, with an exponent when that is shorter: `1.0`, `-0.0`, `0.1`, `100.0`, `1.0e3`,
//!   `1.0e300`, `1.5e-7` (the Erlang shell's rule, `float_to_list(F, [short])`). Elixir as
//!   IEx: the same, except integral values from 1 to 1e16 in plain form (`1000.0`).
//! - Lists of integers that are all printable characters print as strings: Erlang `"abc"`
//!   when every element is printable by `io_lib:printable_unicode_list/1` (the shell started
//!   with `+pc unicode`); Elixir `~c"abc"` (the form of Elixir 1.15+, which Elixir 1.14 also
//!   reads) when every element is ASCII-printable (`List.ascii_printable?/1`, as IEx).
//!   `[]` prints as `[]`.
//! - Binaries: Elixir `"text"` when valid UTF-8 without control characters other than the
//!   named escapes, else `<<1, 2, 255>>`. Erlang `<<"text">>` when ASCII-printable,
//!   `<<"héllo"/utf8>>` when printable UTF-8, else `<<1,2,255>>`. Bitstrings `<<1,0:3>>` /
//!   `<<1, 0::size(3)>>`.
//! - Elixir proper lists of `{atom, value}` pairs print as keyword lists `[a: 1]`; maps whose
//!   keys are all atoms as `%{a: 1}`.
//! - Map keys in Erlang term order ([`compare`]: numbers < atoms < refs < funs < ports <
//!   pids < tuples < maps < lists < bitstrings, numerically equal keys integer first and
//!   `-0.0` before `0.0`), whatever the map's size (the shells print maps of over 32 keys in
//!   hash order).
//! - Pids `<0.B.C>` / `#PID<0.B.C>` (the node is not shown), references `#Ref<0.c.b.a>` /
//!   `#Reference<0.c.b.a>`, ports `#Port<0.N>`, funs `fun m:f/1` / `&:m.f/1` and
//!   `#Fun<m.I.U>` / `#Function<I.U/1 in :m>`: these do not parse back (pids do, without
//!   their node).
//!
//! ## From external term format
//!
//! [`print_bytes()`] and [`json_bytes()`] print from the bytes, so also terms no `eetf::Term`
//! can hold: OTP 29 native records print as OTP 29 prints them, `#geo:pt{x = 1,y = 2.5}`
//! (in both syntaxes: Elixir 1.20's `inspect` prints records that way, fields in Erlang
//! syntax), and maps with both `0.0` and `-0.0` as keys with every key. A term eetf can
//! hold prints exactly as [`print()`] / [`to_json()`] print it decoded (it is decoded whole
//! and printed by them). Map keys sort in OTP 29's order, records between tuples and maps.
//! Iterative, as the other printers.
//!
//! ## JSON mapping
//!
//! [`to_json()`] writes one JSON document; [`from_json()`] reads it back to an exactly equal term
//! for everything but internal funs (and reads hand-written documents by the same rules).
//! Tagged forms are objects with exactly one key, which starts with `$`.
//!
//! | Term | JSON |
//! |------|------|
//! | integer, \|n\| ≤ 2^53 − 1 | number: `42` |
//! | larger integer | `{"$int": "123456789012345678901234567890"}` |
//! | float | number, always with `.` or an exponent: `1.0`, `-0.0`, `1.0e300` (a JSON number without them reads back as an integer) |
//! | `true`, `false` | `true`, `false` |
//! | `nil` | `null` |
//! | any other atom | `{"$atom": "ok"}` |
//! | binary, valid UTF-8 | string: `"text"` |
//! | other binary | `{"$binary": "AQL/"}` (standard base64, padded) |
//! | bitstring | `{"$bitstring": {"base64": "AQI=", "bits": 11}}` (`bits` = length in bits; unused low bits of the last byte are 0) |
//! | proper list, charlists included | array: `[1, 2]`, `[104, 105]` |
//! | improper list | `{"$improper_list": {"elements": [1], "tail": 2}}` |
//! | tuple | `{"$tuple": [1, 2]}` |
//! | map, all keys UTF-8 binaries not starting with `$` | object, keys sorted: `{"k": 1}` |
//! | map, all keys atoms not starting with `$` | `{"$atom_keys": {"name": "x"}}` |
//! | any other map | `{"$map": [[k, v], ...]}`, pairs in key order |
//! | pid | `{"$pid": {"node": "a@host", "id": 85, "serial": 0, "creation": 3}}` |
//! | port | `{"$port": {"node": "a@host", "id": 9, "creation": 3}}` |
//! | reference | `{"$ref": {"node": "a@host", "id": [1, 2, 3], "creation": 3}}` (id words in wire order) |
//! | external fun | `{"$fun": {"module": "lists", "function": "map", "arity": 2}}` |
//! | internal fun | `{"$fun": {"module": "erl_eval", "index": 42, "uniq": 1234, "arity": 1}}` (not read back) |
//! | OTP 29 native record ([`json_bytes()`] only) | `{"$record": {"module": "geo", "name": "pt", "exported": true, "fields": {"x": 1, "y": 2.5}}}` (fields in the record's order; not read back) |
//!
//! Reading: integers of any size are accepted as plain numbers too; an object with keys that
//! start with `$` other than one known tag is an error; duplicate keys keep the last.

mod json;
mod lex;
mod order;
mod parse;
mod print;
mod raw;
#[cfg(test)]
mod tests;

use erl_dist::term::Term;
use std::fmt;

pub use json::MAX_JSON_SAFE_INTEGER;
pub use order::{compare, exact_eq};

/// Deepest nesting [`parse()`] accepts: at most this many tuples, lists and
/// maps may be open at once. Deeper text is an error, never a stack overflow (the parsers are
/// iterative); a term this deep still needs a thread stack of
/// `crate::etf::stack_size_for_depth``(MAX_DEPTH)` to be encoded or dropped.
pub const MAX_DEPTH: usize = 10_000;

/// Deepest JSON nesting [`from_json()`] accepts: three times [`MAX_DEPTH`], because a tagged
/// form takes up to three JSON levels for one level of term (`{"$improper_list":
/// {"elements": [...]}}`), so every term [`parse()`] accepts also reads back from its JSON.
pub const MAX_JSON_DEPTH: usize = 3 * MAX_DEPTH;

/// How many map keys a term in parsed text may sit inside (a map used as a key of a map used
/// as a key ...): the limit kvnode applies to terms from peers,
/// `crate::etf::DEFAULT_MAX_MAP_KEY_NESTING`. Sorting map keys for printing recurses this
/// deep.
pub const MAX_MAP_KEY_NESTING: usize = crate::etf::DEFAULT_MAX_MAP_KEY_NESTING;

/// Longest atom [`parse()`] accepts, in characters: the BEAM's own limit, so an atom that
/// parses can be sent.
pub const MAX_ATOM_CHARS: usize = 255;

/// Largest size of one binary segment, in bits (`<<0:65536>>`): text is typed by people, and
/// this bounds what a few characters can make.
pub const MAX_SEGMENT_BITS: usize = 65_536;

/// Which language's term syntax to read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `atom`, `'Quoted'`, `"string"` (a list), `<<"bin">>`, `{a, b}`, `[1, 2]`, `#{k => v}`.
    Erlang,
    /// `:atom`, `"binary"`, `'charlist'`, `{:a, :b}`, `[1, 2]`, `%{k => v}`, `nil`/`true`.
    Elixir,
}

/// Text that is not a term: where (1-based column, in characters) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based column (character, not byte) of the first character that could not be read.
    pub column: usize,
    /// What was expected or what is wrong.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for SyntaxError {}

/// Parses one term written in `syntax`. A pid written `<A.B.C>` becomes a [`Term::Pid`] whose
/// node is the atom `''` and creation 0: the caller puts in the node it means.
pub fn parse(text: &str, syntax: Syntax) -> Result<Term, SyntaxError> {
    parse::parse(text, syntax)
}

/// Parses a pid, `<A.B.C>` or `#PID<A.B.C>` (either syntax), surrounding whitespace allowed.
/// As with [`parse()`], the node is `''` with creation 0 for the caller to fill in.
pub fn parse_pid(text: &str) -> Result<eetf::Pid, SyntaxError> {
    let syntax = if text.trim_start().starts_with('#') {
        Syntax::Elixir
    } else {
        Syntax::Erlang
    };
    match parse(text, syntax)? {
        Term::Pid(p) => Ok(p),
        _ => Err(SyntaxError {
            column: text.chars().take_while(|c| c.is_whitespace()).count() + 1,
            message: "expected a pid, <A.B.C> or #PID<A.B.C>".into(),
        }),
    }
}

/// Prints `term` in `syntax`, such that [`parse()`] reads it back to an equal term (pids, refs,
/// ports and funs print in their `<...>`/`#Ref<...>`/`#Fun<...>` forms, which only pids parse).
pub fn print(term: &Term, syntax: Syntax) -> String {
    print::print(term, syntax)
}

/// Prints the term in `etf` (external term format, version byte first, exactly one term),
/// as [`print()`] prints it, straight from the bytes: also terms no `eetf::Term` can hold,
/// OTP 29 native records (`#geo:pt{x = 1,y = 2.5}`, in both syntaxes, as OTP 29 and Elixir
/// 1.20 print them) and maps with both `0.0` and `-0.0` as keys. A term eetf can hold
/// prints exactly as [`print()`] prints it decoded. Errors: the bytes are not one valid term.
pub fn print_bytes(etf: &[u8], syntax: Syntax) -> Result<String, crate::etf::TermError> {
    raw::print_bytes(etf, syntax)
}

/// [`to_json()`] straight from external term format, as [`print_bytes()`]; a native record is
/// `{"$record": {"module": "geo", "name": "pt", "exported": true, "fields": {"x": 1, "y":
/// 2.5}}}` (fields in the record's order).
pub fn json_bytes(etf: &[u8]) -> Result<String, crate::etf::TermError> {
    raw::json_bytes(etf)
}

/// `term` as one JSON document, by the mapping in the module docs ("JSON mapping").
pub fn to_json(term: &Term) -> String {
    json::to_json(term)
}

/// Reads a JSON document into a term by the mapping in the module docs ("JSON mapping");
/// `column` in the error counts characters of `text`.
pub fn from_json(text: &str) -> Result<Term, SyntaxError> {
    json::from_json(text)
}
