//! The parser of both term syntaxes. Iterative: nesting lives in a heap stack bounded by
//! [`MAX_DEPTH`], so no input can overflow the thread's stack while it is being read.

use super::lex::{Lexer, Tok, excerpt};
use super::{MAX_DEPTH, MAX_MAP_KEY_NESTING, MAX_SEGMENT_BITS, Syntax, SyntaxError};
use eetf::{
    Atom, BigInteger, Binary, BitBinary, FixInteger, ImproperList, List, Map, Pid, Term, Tuple,
};
use num_bigint::BigInt;
use num_traits::{ToPrimitive, Zero};
use std::collections::HashMap;

fn err(column: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        column,
        message: message.into(),
    }
}

/// An integer term: `FixInteger` when it fits 32 bits (as eetf decodes it), else `BigInteger`.
pub(super) fn int_term(v: BigInt) -> Term {
    match v.to_i32() {
        Some(i) => Term::from(FixInteger::from(i)),
        None => Term::from(BigInteger { value: v }),
    }
}

fn atom(name: String) -> Term {
    Term::from(Atom { name })
}

/// A charlist: a list of the characters' code points (`[]` when empty).
pub(super) fn charlist(s: &str) -> Term {
    Term::from(List::from(
        s.chars()
            .map(|c| Term::from(FixInteger::from(c as i32)))
            .collect::<Vec<_>>(),
    ))
}

/// `[elements | tail]` in the shape Erlang itself would give it: a list tail is spliced in
/// (as often as it takes).
pub(super) fn cons(mut elements: Vec<Term>, mut tail: Term) -> Term {
    while let Term::ImproperList(il) = tail {
        elements.extend(il.elements);
        tail = *il.last;
    }
    match tail {
        Term::List(l) => {
            elements.extend(l.elements);
            Term::from(List::from(elements))
        }
        Term::ByteList(b) => {
            elements.extend(
                b.bytes
                    .iter()
                    .map(|&x| Term::from(FixInteger::from(i32::from(x)))),
            );
            Term::from(List::from(elements))
        }
        other if elements.is_empty() => other,
        other => Term::from(ImproperList {
            elements,
            last: Box::new(other),
        }),
    }
}

enum Frame {
    Tuple {
        elems: Vec<Term>,
        col: usize,
    },
    List {
        elems: Vec<Term>,
        in_tail: bool,
        kw: Option<String>,
        seen_kw: bool,
        col: usize,
    },
    Map {
        pairs: Vec<(Term, Term)>,
        key: Option<Term>,
        kw: Option<String>,
        seen_kw: bool,
        col: usize,
    },
}

/// Parses one term; see [`super::parse()`].
pub(super) fn parse(text: &str, syntax: Syntax) -> Result<Term, SyntaxError> {
    let mut lx = Lexer::new(text, syntax);
    let mut stack: Vec<Frame> = Vec::new();
    // How many map keys the term being read sits inside.
    let mut key_nesting = 0usize;
    let erlang = syntax == Syntax::Erlang;
    'value: loop {
        let (tok, vcol) = lx.next()?;
        let mut value = match tok {
            Tok::Kw(name) => {
                match stack.last_mut() {
                    Some(Frame::List {
                        kw: kw @ None,
                        in_tail: false,
                        seen_kw,
                        ..
                    }) => {
                        *kw = Some(name);
                        *seen_kw = true;
                    }
                    Some(Frame::Map {
                        key: None,
                        kw: kw @ None,
                        seen_kw,
                        ..
                    }) => {
                        *kw = Some(name);
                        *seen_kw = true;
                        key_nesting -= 1;
                    }
                    _ => {
                        return Err(err(
                            vcol,
                            format!(
                                "keyword key `{}:` is allowed only as a list element or map key",
                                excerpt(&name)
                            ),
                        ));
                    }
                }
                continue 'value;
            }
            Tok::Atom(name) => atom(name),
            Tok::Int(v) => int_term(v),
            Tok::Float(value) => Term::from(eetf::Float { value }),
            Tok::Str(mut s) if erlang => {
                // Adjacent strings are one string, as in Erlang: "ab" "cd".
                while let Tok::Str(more) = &lx.peek()?.0 {
                    s.push_str(more);
                    lx.next()?;
                }
                charlist(&s)
            }
            Tok::Str(s) => Term::from(Binary::from(s.into_bytes())),
            Tok::CharList(s) => charlist(&s),
            Tok::Pid(id, serial) => Term::from(Pid::new("", id, serial, 0)),
            Tok::BinOpen => binary(&mut lx, syntax, vcol)?,
            open @ (Tok::LBrace | Tok::LBracket | Tok::MapOpen) => {
                let close_empty = if open == Tok::LBracket {
                    Tok::RBracket
                } else {
                    Tok::RBrace
                };
                if lx.peek()?.0 == close_empty {
                    lx.next()?;
                    match open {
                        Tok::LBrace => Term::from(Tuple::from(vec![])),
                        Tok::LBracket => Term::from(List::nil()),
                        _ => Term::from(Map::from(HashMap::<Term, Term>::new())),
                    }
                } else {
                    if stack.len() >= MAX_DEPTH {
                        return Err(err(
                            vcol,
                            format!("terms nested deeper than {MAX_DEPTH} levels are refused"),
                        ));
                    }
                    stack.push(match open {
                        Tok::LBrace => Frame::Tuple {
                            elems: Vec::new(),
                            col: vcol,
                        },
                        Tok::LBracket => Frame::List {
                            elems: Vec::new(),
                            in_tail: false,
                            kw: None,
                            seen_kw: false,
                            col: vcol,
                        },
                        _ => {
                            enter_key(&mut key_nesting, vcol)?;
                            Frame::Map {
                                pairs: Vec::new(),
                                key: None,
                                kw: None,
                                seen_kw: false,
                                col: vcol,
                            }
                        }
                    });
                    continue 'value;
                }
            }
            Tok::Ident(w) if erlang => {
                return Err(err(
                    vcol,
                    format!(
                        "`{}` is a variable, not a term (quote it to mean the atom: '{}')",
                        excerpt(&w),
                        excerpt(&w)
                    ),
                ));
            }
            Tok::Ident(w) => {
                return Err(err(
                    vcol,
                    format!(
                        "`{}` is not a term (an atom is written :{})",
                        excerpt(&w),
                        excerpt(&w)
                    ),
                ));
            }
            other => {
                return Err(err(
                    vcol,
                    format!("expected a term, found {}", other.describe()),
                ));
            }
        };
        // `value` is complete: hand it to the innermost open container, closing containers
        // for as long as their closing token follows.
        loop {
            let Some(top) = stack.last_mut() else {
                break 'value finish(&mut lx, erlang, value);
            };
            match top {
                Frame::Tuple { elems, col } => {
                    elems.push(value);
                    let (t, c) = lx.next()?;
                    match t {
                        Tok::Comma => continue 'value,
                        Tok::RBrace => {
                            let elems = std::mem::take(elems);
                            stack.pop();
                            value = Term::from(Tuple::from(elems));
                        }
                        other => {
                            return Err(err(
                                c,
                                format!(
                                    "expected `,` or `}}` in the tuple opened at column {col}, found {}",
                                    other.describe()
                                ),
                            ));
                        }
                    }
                }
                Frame::List {
                    elems,
                    in_tail,
                    kw,
                    seen_kw,
                    col,
                } => {
                    if *in_tail {
                        let (t, c) = lx.next()?;
                        if t != Tok::RBracket {
                            return Err(err(
                                c,
                                format!(
                                    "expected `]` after the tail of the list opened at column {col}, found {}",
                                    t.describe()
                                ),
                            ));
                        }
                        let elems = std::mem::take(elems);
                        stack.pop();
                        value = cons(elems, value);
                        continue;
                    }
                    if let Some(k) = kw.take() {
                        value = Term::from(Tuple::from(vec![atom(k), value]));
                    } else if *seen_kw {
                        return Err(err(vcol, "keyword pairs must come last in a list"));
                    }
                    elems.push(value);
                    let (t, c) = lx.next()?;
                    match t {
                        Tok::Comma => continue 'value,
                        Tok::Bar => {
                            *in_tail = true;
                            continue 'value;
                        }
                        Tok::RBracket => {
                            let elems = std::mem::take(elems);
                            stack.pop();
                            value = Term::from(List::from(elems));
                        }
                        other => {
                            return Err(err(
                                c,
                                format!(
                                    "expected `,`, `|` or `]` in the list opened at column {col}, found {}",
                                    other.describe()
                                ),
                            ));
                        }
                    }
                }
                Frame::Map {
                    pairs,
                    key,
                    kw,
                    seen_kw,
                    col,
                } => {
                    if let Some(k) = kw.take() {
                        pairs.push((atom(k), value));
                    } else if let Some(k) = key.take() {
                        pairs.push((k, value));
                    } else {
                        // `value` was a key.
                        key_nesting -= 1;
                        if *seen_kw {
                            return Err(err(vcol, "keyword pairs must come last in a map"));
                        }
                        let (t, c) = lx.next()?;
                        if t != Tok::Arrow {
                            return Err(err(
                                c,
                                format!(
                                    "expected `=>` after the key in the map opened at column {col}, found {}",
                                    t.describe()
                                ),
                            ));
                        }
                        *key = Some(value);
                        continue 'value;
                    }
                    let (t, c) = lx.next()?;
                    match t {
                        Tok::Comma => {
                            enter_key(&mut key_nesting, c)?;
                            continue 'value;
                        }
                        Tok::RBrace => {
                            let pairs = std::mem::take(pairs);
                            stack.pop();
                            // Later keys win, as in Erlang and Elixir.
                            value =
                                Term::from(Map::from(pairs.into_iter().collect::<HashMap<_, _>>()));
                        }
                        other => {
                            return Err(err(
                                c,
                                format!(
                                    "expected `,` or `}}` in the map opened at column {col}, found {}",
                                    other.describe()
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn enter_key(key_nesting: &mut usize, col: usize) -> Result<(), SyntaxError> {
    if *key_nesting >= MAX_MAP_KEY_NESTING {
        return Err(err(
            col,
            format!("map keys nested more than {MAX_MAP_KEY_NESTING} deep are refused"),
        ));
    }
    *key_nesting += 1;
    Ok(())
}

/// After the term: an optional `.` (Erlang), then nothing.
fn finish(lx: &mut Lexer, erlang: bool, value: Term) -> Result<Term, SyntaxError> {
    let (mut t, mut c) = lx.next()?;
    if erlang && t == Tok::Dot {
        (t, c) = lx.next()?;
    }
    if t != Tok::Eof {
        return Err(err(
            c,
            format!(
                "expected the end of the text after the term, found {}",
                t.describe()
            ),
        ));
    }
    Ok(value)
}

/// Bits appended most significant first, as a bitstring holds them.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    len: usize,
}

impl Bits {
    fn push_byte(&mut self, b: u8) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(b);
            self.len += 8;
        } else {
            for i in (0..8).rev() {
                self.push_bit(b >> i & 1 == 1);
            }
        }
    }
    fn push_bit(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit && let Some(last) = self.bytes.last_mut() {
            *last |= 0x80 >> (self.len % 8);
        }
        self.len += 1;
    }
    fn into_term(mut self) -> Term {
        let tail = (self.len % 8) as u8;
        if tail == 0 {
            Term::from(Binary::from(self.bytes))
        } else {
            // eetf keeps the tail bits in the low end of the last byte.
            if let Some(last) = self.bytes.last_mut() {
                *last >>= 8 - tail;
            }
            Term::from(BitBinary::from((self.bytes, tail)))
        }
    }
}

/// The segment types this parser knows.
#[derive(PartialEq)]
enum SegType {
    Default,
    Utf8,
    Binary,
}

/// `<<...>>` after the `<<` at column `open`: integer and string segments with optional size
/// (`:N` / `::N` / `::size(N)`) and type (`/utf8`, `::utf8`, `/binary`, `::binary`).
fn binary(lx: &mut Lexer, syntax: Syntax, open: usize) -> Result<Term, SyntaxError> {
    let erlang = syntax == Syntax::Erlang;
    let mut bits = Bits::default();
    if lx.peek()?.0 == Tok::BinClose {
        lx.next()?;
        return Ok(bits.into_term());
    }
    loop {
        let (tok, col) = lx.next()?;
        let (mut size, mut ty) = (None::<(usize, usize)>, SegType::Default);
        if erlang {
            if lx.peek()?.0 == Tok::Colon {
                lx.next()?;
                size = Some(seg_size(lx)?);
            }
            if lx.peek()?.0 == Tok::Slash {
                lx.next()?;
                let (t, c) = lx.next()?;
                ty = seg_type(&t, c)?;
            }
        } else if lx.peek()?.0 == Tok::DoubleColon {
            lx.next()?;
            let (t, c) = lx.peek()?.clone();
            match t {
                Tok::Int(_) => size = Some(seg_size(lx)?),
                Tok::Ident(w) if w == "size" => {
                    lx.next()?;
                    expect(lx, Tok::LParen, "`(` after size")?;
                    size = Some(seg_size(lx)?);
                    expect(lx, Tok::RParen, "`)` after the size")?;
                }
                _ => {
                    lx.next()?;
                    ty = seg_type(&t, c)?;
                }
            }
        }
        match tok {
            Tok::Int(v) if ty == SegType::Utf8 => {
                if size.is_some() {
                    return Err(err(col, "a utf8 segment takes no size"));
                }
                let ch = v
                    .to_u32()
                    .and_then(char::from_u32)
                    .ok_or_else(|| err(col, "a utf8 segment needs a Unicode code point"))?;
                let mut buf = [0u8; 4];
                for &b in ch.encode_utf8(&mut buf).as_bytes() {
                    bits.push_byte(b);
                }
            }
            Tok::Int(v) if ty == SegType::Default => {
                let (n, _) = size.unwrap_or((8, col));
                int_segment(&mut bits, &v, n, col)?;
            }
            Tok::Str(s) => {
                if let Some((_, c)) = size {
                    return Err(err(c, "a string segment takes no size"));
                }
                if erlang && ty == SegType::Default {
                    for (i, ch) in s.chars().enumerate() {
                        let b = u8::try_from(u32::from(ch)).map_err(|_| {
                            err(
                                col + 1 + i,
                                "character beyond 255 in a latin-1 string segment (add /utf8)",
                            )
                        })?;
                        bits.push_byte(b);
                    }
                } else {
                    for &b in s.as_bytes() {
                        bits.push_byte(b);
                    }
                }
            }
            Tok::Int(_) => return Err(err(col, "an integer segment cannot have type binary")),
            other => {
                return Err(err(
                    col,
                    format!(
                        "expected an integer or a string in the binary opened at column {open}, found {}",
                        other.describe()
                    ),
                ));
            }
        }
        let (t, c) = lx.next()?;
        match t {
            Tok::Comma => {}
            Tok::BinClose => return Ok(bits.into_term()),
            other => {
                return Err(err(
                    c,
                    format!(
                        "expected `,` or `>>` in the binary opened at column {open}, found {}",
                        other.describe()
                    ),
                ));
            }
        }
    }
}

fn expect(lx: &mut Lexer, want: Tok, what: &str) -> Result<(), SyntaxError> {
    let (t, c) = lx.next()?;
    if t != want {
        return Err(err(c, format!("expected {what}, found {}", t.describe())));
    }
    Ok(())
}

/// A segment size in bits and its column.
fn seg_size(lx: &mut Lexer) -> Result<(usize, usize), SyntaxError> {
    let (t, c) = lx.next()?;
    match t {
        Tok::Int(v) => match v.to_usize() {
            Some(n) if n <= MAX_SEGMENT_BITS => Ok((n, c)),
            _ => Err(err(
                c,
                format!("a segment size is from 0 to {MAX_SEGMENT_BITS} bits"),
            )),
        },
        other => Err(err(
            c,
            format!(
                "expected a segment size in bits, found {}",
                other.describe()
            ),
        )),
    }
}

fn seg_type(t: &Tok, c: usize) -> Result<SegType, SyntaxError> {
    match t {
        Tok::Atom(w) | Tok::Ident(w) => match w.as_str() {
            "integer" => Ok(SegType::Default),
            "utf8" => Ok(SegType::Utf8),
            "binary" | "bytes" => Ok(SegType::Binary),
            _ => Err(err(
                c,
                format!(
                    "segment type `{}` is not supported (integer, utf8, binary)",
                    excerpt(w)
                ),
            )),
        },
        other => Err(err(
            c,
            format!("expected a segment type, found {}", other.describe()),
        )),
    }
}

/// `v` as `n` bits, two's complement when negative; values that do not fit are refused
/// (Erlang would silently keep the low bits).
fn int_segment(bits: &mut Bits, v: &BigInt, n: usize, col: usize) -> Result<(), SyntaxError> {
    let modulus = BigInt::from(1u8) << n;
    let half = if n == 0 {
        BigInt::zero()
    } else {
        BigInt::from(1u8) << (n - 1)
    };
    let fits = if v.sign() == num_bigint::Sign::Minus {
        -v <= half
    } else {
        *v < modulus
    };
    if !fits {
        return Err(err(
            col,
            format!("{} does not fit in {n} bits", excerpt(&v.to_string())),
        ));
    }
    let u = if v.sign() == num_bigint::Sign::Minus {
        v + &modulus
    } else {
        v.clone()
    };
    let (_, mag) = u.into_parts();
    if n.is_multiple_of(8) && bits.len.is_multiple_of(8) {
        let mut le = mag.to_bytes_le();
        le.resize(n / 8, 0);
        for &b in le.iter().rev() {
            bits.push_byte(b);
        }
    } else {
        for i in (0..n as u64).rev() {
            bits.push_bit(mag.bit(i));
        }
    }
    Ok(())
}
