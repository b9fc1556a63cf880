//! Peer data in text (log lines, error values): bounded excerpts, never formatted terms.
//!
//! eetf's `Display` and `Debug` print a whole term: a 16 MB binary becomes a 57 MB line, and a
//! bignum is converted to decimal, which takes time quadratic in its size (9 s for 4 MiB, on
//! the thread that serves other connections too). Everything kvnode writes about a peer's
//! data goes through this module instead: [`excerpt`] shows the first [`EXCERPT_BYTES`] bytes
//! in hex plus the total length, [`summary`] names a decoded term's kind and size in constant
//! time, and [`DecodeErrorText`] / [`RecvErrorText`] describe eetf's and erl_dist's errors,
//! which carry the offending term, with a summary of it.

use eetf::{DecodeError, Term};
use std::fmt;

/// Bytes of peer data an [`excerpt`] shows (in hex).
pub const EXCERPT_BYTES: usize = 32;

/// Characters of an atom's name a [`summary`] shows.
pub const EXCERPT_CHARS: usize = 32;

/// The first [`EXCERPT_BYTES`] of `bytes` in hex, with the total length: `"1024 bytes: 83 68
/// 04 ..."`. Formats in constant time and space whatever the length.
pub fn excerpt(bytes: &[u8]) -> Excerpt<'_> {
    Excerpt(bytes)
}

/// See [`excerpt`].
#[derive(Clone, Copy)]
pub struct Excerpt<'a>(&'a [u8]);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes:", self.0.len())?;
        for b in self.0.iter().take(EXCERPT_BYTES) {
            write!(f, " {b:02x}")?;
        }
        if self.0.len() > EXCERPT_BYTES {
            write!(f, " ...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A name (an atom's, a node's) cut to [`EXCERPT_CHARS`] characters and escaped.
pub fn name(name: &str) -> Name<'_> {
    Name(name)
}

/// See [`name`].
#[derive(Clone, Copy)]
pub struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.char_indices();
        let cut = chars.nth(EXCERPT_CHARS).map(|(at, _)| at);
        let shown = &self.0[..cut.unwrap_or(self.0.len())];
        write!(f, "'{}'", shown.escape_default())?;
        if cut.is_some() {
            write!(f, "...")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A decoded term's kind and size (`"tuple of 3 elements tagged 'put'"`, `"integer of 4194304
/// bytes"`, `"binary of 16777216 bytes: 00 01 ..."`), in constant time and bounded text: no
/// element is formatted, no bignum converted to decimal.
pub fn summary(term: &Term) -> Summary<'_> {
    Summary(term)
}

/// See [`summary`].
#[derive(Clone, Copy)]
pub struct Summary<'a>(&'a Term);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Term::Atom(a) => write!(f, "atom {}", name(&a.name)),
            Term::FixInteger(i) => write!(f, "integer {}", i.value),
            Term::BigInteger(b) => write!(f, "integer of {} bytes", b.value.bits().div_ceil(8)),
            Term::Float(x) => write!(f, "float {}", x.value),
            Term::Pid(p) => write!(f, "pid of node {}", name(&p.node.name)),
            Term::Port(p) => write!(f, "port of node {}", name(&p.node.name)),
            Term::Reference(r) => write!(f, "reference of node {}", name(&r.node.name)),
            Term::ExternalFun(_) | Term::InternalFun(_) => write!(f, "fun"),
            Term::Binary(b) => write!(f, "binary of {}", excerpt(&b.bytes)),
            Term::BitBinary(b) => write!(f, "bitstring of {}", excerpt(&b.bytes)),
            Term::ByteList(l) => write!(f, "string of {}", excerpt(&l.bytes)),
            Term::List(l) => write!(f, "list of {} elements", l.elements.len()),
            Term::ImproperList(l) => {
                write!(
                    f,
                    "improper list of {} elements and a tail",
                    l.elements.len()
                )
            }
            Term::Tuple(t) => {
                write!(f, "tuple of {} elements", t.elements.len())?;
                match t.elements.first() {
                    Some(Term::Atom(a)) => write!(f, " tagged {}", name(&a.name)),
                    Some(Term::FixInteger(i)) => write!(f, " tagged {}", i.value),
                    _ => Ok(()),
                }
            }
            Term::Map(m) => write!(f, "map of {} entries", m.map.len()),
        }
    }
}

impl fmt::Debug for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An eetf decoding error in bounded text: the term an `UnexpectedType` carries is
/// summarized (see [`summary`]), never formatted.
pub struct DecodeErrorText<'a>(pub &'a DecodeError);

impl fmt::Display for DecodeErrorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            DecodeError::UnexpectedType { value, expected } => {
                write!(f, "{} is not a {}", summary(value), name(expected))
            }
            // The other variants hold numbers and I/O errors only.
            other => fmt::Display::fmt(other, f),
        }
    }
}

/// An erl_dist receive error in bounded text (see [`DecodeErrorText`]).
pub struct RecvErrorText<'a>(pub &'a erl_dist::message::RecvError);

impl fmt::Display for RecvErrorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            erl_dist::message::RecvError::Decode(e) => DecodeErrorText(e).fmt(f),
            // The other variants hold numbers and I/O errors only.
            other => fmt::Display::fmt(other, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eetf::{Atom, BigInteger, Binary, Tuple};
    use num_bigint::BigInt;

    #[test]
    fn excerpts_are_bounded_whatever_the_input() {
        let big = vec![0xabu8; 16 << 20];
        let shown = excerpt(&big).to_string();
        assert!(shown.starts_with("16777216 bytes: ab ab"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
        assert_eq!(excerpt(&[1, 2]).to_string(), "2 bytes: 01 02");
        let atom = "é".repeat(255);
        let shown = name(&atom).to_string();
        assert!(shown.len() < 300 && shown.ends_with("..."), "{shown}");
        assert_eq!(name("it's").to_string(), "'it\\'s'");
    }

    #[test]
    fn summaries_never_format_contents() {
        // 4 MiB of bignum: to_string would take seconds; the summary takes nothing.
        let huge = BigInt::from_bytes_le(num_bigint::Sign::Plus, &vec![0xff; 4 << 20]);
        let term = Term::from(Tuple::from(vec![
            Term::from(BigInteger {
                value: huge.clone(),
            }),
            Term::from(Binary::from(vec![7u8; 16 << 20])),
        ]));
        let started = std::time::Instant::now();
        assert_eq!(summary(&term).to_string(), "tuple of 2 elements");
        let Term::Tuple(t) = &term else {
            unreachable!()
        };
        assert_eq!(
            summary(&t.elements[0]).to_string(),
            "integer of 4194304 bytes"
        );
        assert!(summary(&t.elements[1]).to_string().len() < 200);
        let error = DecodeError::UnexpectedType {
            value: t.elements[0].clone(),
            expected: "integer".to_owned(),
        };
        assert_eq!(
            DecodeErrorText(&error).to_string(),
            "integer of 4194304 bytes is not a 'integer'"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let tagged = Term::from(Tuple::from(vec![Term::from(Atom::from("put"))]));
        assert_eq!(
            summary(&tagged).to_string(),
            "tuple of 1 elements tagged 'put'"
        );
    }
}
