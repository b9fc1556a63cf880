//! The printer of both term syntaxes. Iterative: a term nested any depth prints without
//! recursing (only sorting map keys recurses, as deep as maps nest inside map keys).

use super::Syntax;
use super::lex::erlang_reserved;
use super::order::{Sorter, bit_len};
use super::parse::cons;
use eetf::{InternalFun, Term};
use std::fmt::Write;

enum Job<'a> {
    T(&'a Term),
    S(&'static str),
    /// An Elixir keyword key, `name: `.
    Kw(&'a str),
}

/// Shortest text that reads back as exactly `v`, always with a `.`, with an exponent when that
/// is shorter (a tie goes to the plain form): `1.0`, `-0.0`, `0.1`, `100.0`, `1.0e3`,
/// `1.0e300`, `1.5e-7`. This is `io_lib_format:fwrite_g/1`'s rule (`float_to_list(F,
/// [short])`, the Erlang shell).
pub(super) fn fmt_float(v: f64) -> String {
    let sci = format!("{v:e}"); // shortest round-trip digits: "1.5e-7", "-0e0", "1e300"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    let (first, rest) = digits.split_at(1);
    let sci = format!(
        "{sign}{first}.{}e{exp}",
        if rest.is_empty() { "0" } else { rest }
    );
    let fixed = if exp >= 0 {
        let point = exp as usize + 1;
        if digits.len() > point {
            format!("{sign}{}.{}", &digits[..point], &digits[point..])
        } else {
            format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
        }
    } else {
        format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
    };
    if fixed.len() <= sci.len() { fixed } else { sci }
}

/// A float as Elixir's `inspect` writes it: integral values from 1 to 1e16 as `1000.0`,
/// everything else as [`fmt_float`] (Erlang's shortest form, which Elixir also uses then).
pub(super) fn fmt_float_elixir(v: f64) -> String {
    if v.abs() >= 1.0 && v.abs() < 1.0e16 && v.trunc() == v {
        format!("{v:.1}")
    } else {
        fmt_float(v)
    }
}

/// `io_lib:printable_unicode_list/1`'s notion of a printable character.
fn erlang_printable(c: i64) -> bool {
    matches!(c, 32..=126 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
        || matches!(c, 8..=13 | 27)
}

/// `List.ascii_printable?/1`'s notion (what IEx uses to print a list as a charlist).
fn elixir_printable(c: i64) -> bool {
    matches!(c, 32..=126) || matches!(c, 7..=13 | 27 | 127)
}

/// The escape of a named control character, in both syntaxes.
fn named_escape(c: char, syntax: Syntax) -> Option<&'static str> {
    Some(match c {
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        '\u{b}' => "\\v",
        '\u{8}' => "\\b",
        '\u{c}' => "\\f",
        '\u{1b}' => "\\e",
        '\u{7f}' => "\\d",
        '\u{7}' if syntax == Syntax::Elixir => "\\a",
        '\0' if syntax == Syntax::Elixir => "\\0",
        _ => return None,
    })
}

/// `s` between `q` quotes with every character that needs it escaped (in Elixir also the
/// `#` of a `#{`, which would start an interpolation).
fn quote(out: &mut String, s: impl Iterator<Item = char>, q: char, syntax: Syntax) {
    out.push(q);
    let mut s = s.peekable();
    while let Some(c) = s.next() {
        if c == q || c == '\\' {
            out.push('\\');
            out.push(c);
        } else if let Some(e) = named_escape(c, syntax) {
            out.push_str(e);
        } else if c.is_control() {
            let esc = if syntax == Syntax::Elixir { "u" } else { "x" };
            let _ = write!(out, "\\{esc}{{{:X}}}", u32::from(c));
        } else if c == '#' && syntax == Syntax::Elixir && s.peek() == Some(&'{') {
            out.push_str("\\#");
        } else {
            out.push(c);
        }
    }
    out.push(q);
}

fn is_erlang_bare(name: &str) -> bool {
    let mut cs = name.chars();
    matches!(cs.next(), Some('a'..='z'))
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        && !erlang_reserved(name)
}

fn is_elixir_identifier(name: &str) -> bool {
    let body = name.strip_suffix(['?', '!']).unwrap_or(name);
    let mut cs = body.chars();
    matches!(cs.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
}

fn is_alias(name: &str) -> bool {
    name == "Elixir"
        || name.strip_prefix("Elixir.").is_some_and(|rest| {
            rest.split('.').all(|seg| {
                let mut cs = seg.chars();
                matches!(cs.next(), Some('A'..='Z'))
                    && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
}

pub(super) fn write_atom(out: &mut String, name: &str, syntax: Syntax) {
    match syntax {
        Syntax::Erlang if is_erlang_bare(name) => out.push_str(name),
        Syntax::Erlang => quote(out, name.chars(), '\'', syntax),
        Syntax::Elixir => {
            if matches!(name, "true" | "false" | "nil") {
                out.push_str(name);
            } else if is_alias(name) {
                out.push_str(name.strip_prefix("Elixir.").unwrap_or(name));
            } else if is_elixir_identifier(name) {
                out.push(':');
                out.push_str(name);
            } else {
                out.push(':');
                quote(out, name.chars(), '"', syntax);
            }
        }
    }
}

pub(super) fn write_kw(out: &mut String, name: &str) {
    if is_elixir_identifier(name) {
        out.push_str(name);
    } else {
        quote(out, name.chars(), '"', Syntax::Elixir);
    }
    out.push_str(": ");
}

/// The characters of a list if it prints as a string in `syntax`.
fn as_chars(t: &Term, syntax: Syntax) -> Option<String> {
    let ok = |c: i64| match syntax {
        Syntax::Erlang => erlang_printable(c),
        Syntax::Elixir => elixir_printable(c),
    };
    let to_char = |c: i64| u32::try_from(c).ok().and_then(char::from_u32);
    match t {
        Term::ByteList(b) if !b.bytes.is_empty() => b
            .bytes
            .iter()
            .map(|&x| ok(i64::from(x)).then(|| char::from(x)))
            .collect(),
        Term::List(l) if !l.elements.is_empty() => l
            .elements
            .iter()
            .map(|e| match e {
                Term::FixInteger(i) if ok(i64::from(i.value)) => to_char(i64::from(i.value)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Whether `l` is a non-empty keyword list (`[a: 1]`), which Elixir prints as such.
fn is_keyword(elements: &[Term]) -> bool {
    !elements.is_empty()
        && elements.iter().all(|e| {
            matches!(e, Term::Tuple(t) if t.elements.len() == 2 && matches!(t.elements[0], Term::Atom(_)))
        })
}

fn write_bytes(out: &mut String, bytes: &[u8], tail_bits: Option<(u8, u8)>, syntax: Syntax) {
    let sep = if syntax == Syntax::Erlang { "," } else { ", " };
    out.push_str("<<");
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let _ = write!(out, "{b}");
    }
    if let Some((value, bits)) = tail_bits {
        if !bytes.is_empty() {
            out.push_str(sep);
        }
        match syntax {
            Syntax::Erlang => {
                let _ = write!(out, "{value}:{bits}");
            }
            Syntax::Elixir => {
                let _ = write!(out, "{value}::size({bits})");
            }
        }
    }
    out.push_str(">>");
}

fn write_binary(out: &mut String, bytes: &[u8], syntax: Syntax) {
    let ascii = |b: &u8| matches!(b, 32..=126 | 8..=13 | 27);
    match syntax {
        Syntax::Erlang if bytes.is_empty() => out.push_str("<<>>"),
        Syntax::Erlang if bytes.iter().all(ascii) => {
            out.push_str("<<");
            quote(out, bytes.iter().map(|&b| char::from(b)), '"', syntax);
            out.push_str(">>");
        }
        Syntax::Erlang => match std::str::from_utf8(bytes) {
            Ok(s) if s.chars().all(|c| erlang_printable(i64::from(u32::from(c)))) => {
                out.push_str("<<");
                quote(out, s.chars(), '"', syntax);
                out.push_str("/utf8>>");
            }
            _ => write_bytes(out, bytes, None, syntax),
        },
        Syntax::Elixir => match std::str::from_utf8(bytes) {
            Ok(s)
                if s.chars()
                    .all(|c| !c.is_control() || named_escape(c, syntax).is_some()) =>
            {
                quote(out, s.chars(), '"', syntax)
            }
            _ => write_bytes(out, bytes, None, syntax),
        },
    }
}

/// Prints `term`; see [`super::print()`].
pub(super) fn print(term: &Term, syntax: Syntax) -> String {
    let erlang = syntax == Syntax::Erlang;
    let sep = if erlang { "," } else { ", " };
    let mut out = String::new();
    // Map keys sorted once for the whole print (see [`Sorter`]).
    let sorter = Sorter::new();
    let mut jobs = vec![Job::T(term)];
    // Pushes `items` (in order) separated by `sep`, to be printed before what is already queued.
    fn seq<'a>(jobs: &mut Vec<Job<'a>>, items: Vec<Job<'a>>, sep: &'static str) {
        let n = items.len();
        for (i, j) in items.into_iter().rev().enumerate() {
            jobs.push(j);
            if i + 1 < n {
                jobs.push(Job::S(sep));
            }
        }
    }
    while let Some(job) = jobs.pop() {
        let t = match job {
            Job::S(s) => {
                out.push_str(s);
                continue;
            }
            Job::Kw(k) => {
                write_kw(&mut out, k);
                continue;
            }
            Job::T(t) => t,
        };
        match t {
            Term::Atom(a) => write_atom(&mut out, &a.name, syntax),
            Term::FixInteger(i) => {
                let _ = write!(out, "{}", i.value);
            }
            Term::BigInteger(b) => {
                let _ = write!(out, "{}", b.value);
            }
            Term::Float(f) if erlang => out.push_str(&fmt_float(f.value)),
            Term::Float(f) => out.push_str(&fmt_float_elixir(f.value)),
            Term::Pid(p) => {
                let _ = write!(
                    out,
                    "{}<0.{}.{}>",
                    if erlang { "" } else { "#PID" },
                    p.id,
                    p.serial
                );
            }
            Term::Port(p) => {
                let _ = write!(out, "#Port<0.{}>", p.id);
            }
            Term::Reference(r) => {
                out.push_str(if erlang { "#Ref<0" } else { "#Reference<0" });
                for id in r.id.iter().rev() {
                    let _ = write!(out, ".{id}");
                }
                out.push('>');
            }
            Term::ExternalFun(f) => {
                if erlang {
                    out.push_str("fun ");
                    write_atom(&mut out, &f.module.name, syntax);
                    out.push(':');
                    write_atom(&mut out, &f.function.name, syntax);
                } else {
                    out.push('&');
                    write_atom(&mut out, &f.module.name, syntax);
                    out.push('.');
                    if is_elixir_identifier(&f.function.name) {
                        out.push_str(&f.function.name);
                    } else {
                        quote(&mut out, f.function.name.chars(), '"', syntax);
                    }
                }
                let _ = write!(out, "/{}", f.arity);
            }
            Term::InternalFun(f) => {
                let (module, index, uniq, arity) = match f.as_ref() {
                    InternalFun::Old {
                        module,
                        index,
                        uniq,
                        ..
                    } => (module, i64::from(*index), i64::from(*uniq), None),
                    InternalFun::New {
                        module,
                        arity,
                        old_index,
                        old_uniq,
                        ..
                    } => (
                        module,
                        i64::from(*old_index),
                        i64::from(*old_uniq),
                        Some(*arity),
                    ),
                };
                if erlang {
                    out.push_str("#Fun<");
                    write_atom(&mut out, &module.name, syntax);
                    let _ = write!(out, ".{index}.{uniq}>");
                } else {
                    let _ = write!(out, "#Function<{index}.{uniq}/{} in ", arity.unwrap_or(0));
                    write_atom(&mut out, &module.name, syntax);
                    out.push('>');
                }
            }
            Term::Binary(b) => write_binary(&mut out, &b.bytes, syntax),
            Term::BitBinary(b) => {
                let bits = bit_len(b);
                if bits.is_multiple_of(8) {
                    write_binary(&mut out, &b.bytes[..bits / 8], syntax);
                } else {
                    let whole = bits / 8;
                    let tail = (bits % 8) as u8;
                    // eetf keeps the tail bits in the low end of the last byte.
                    let value = b.bytes[whole] & ((1u8 << tail) - 1);
                    write_bytes(&mut out, &b.bytes[..whole], Some((value, tail)), syntax);
                }
            }
            Term::List(_) | Term::ByteList(_) if as_chars(t, syntax).is_some() => {
                let chars = as_chars(t, syntax).unwrap_or_default();
                if !erlang {
                    out.push_str("~c");
                }
                quote(&mut out, chars.chars(), '"', syntax);
            }
            Term::ByteList(b) => {
                out.push('[');
                for (i, x) in b.bytes.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    let _ = write!(out, "{x}");
                }
                out.push(']');
            }
            Term::List(l) if !erlang && is_keyword(&l.elements) => {
                out.push('[');
                jobs.push(Job::S("]"));
                for (i, e) in l.elements.iter().enumerate().rev() {
                    if let Term::Tuple(t) = e
                        && let [Term::Atom(k), v] = &t.elements[..]
                    {
                        jobs.push(Job::T(v));
                        jobs.push(Job::Kw(&k.name));
                    }
                    if i > 0 {
                        jobs.push(Job::S(sep));
                    }
                }
            }
            Term::List(l) => {
                out.push('[');
                jobs.push(Job::S("]"));
                seq(&mut jobs, l.elements.iter().map(Job::T).collect(), sep);
            }
            // No elements: the term is its tail (eetf can hold this shape; Erlang cannot).
            Term::ImproperList(l) if l.elements.is_empty() => jobs.push(Job::T(&l.last)),
            // A list tail (which Erlang never sends) prints spliced, as it parses.
            Term::ImproperList(l)
                if matches!(
                    *l.last,
                    Term::List(_) | Term::ByteList(_) | Term::ImproperList(_)
                ) =>
            {
                let spliced = cons(l.elements.clone(), (*l.last).clone());
                out.push_str(&print(&spliced, syntax));
            }
            Term::ImproperList(l) => {
                out.push('[');
                jobs.push(Job::S("]"));
                jobs.push(Job::T(&l.last));
                jobs.push(Job::S(if erlang { "|" } else { " | " }));
                seq(&mut jobs, l.elements.iter().map(Job::T).collect(), sep);
            }
            Term::Tuple(tu) => {
                out.push('{');
                jobs.push(Job::S("}"));
                seq(&mut jobs, tu.elements.iter().map(Job::T).collect(), sep);
            }
            Term::Map(m) => {
                out.push_str(if erlang { "#{" } else { "%{" });
                jobs.push(Job::S("}"));
                let entries = sorter.entries(m);
                let kw = !erlang && entries.iter().all(|(k, _)| matches!(k, Term::Atom(_)));
                let n = entries.len();
                for (i, &(k, v)) in entries.iter().enumerate().rev() {
                    jobs.push(Job::T(v));
                    match k {
                        Term::Atom(a) if kw => jobs.push(Job::Kw(&a.name)),
                        _ => {
                            jobs.push(Job::S(" => "));
                            jobs.push(Job::T(k));
                        }
                    }
                    if i > 0 && n > 1 {
                        jobs.push(Job::S(sep));
                    }
                }
            }
        }
    }
    out
}
