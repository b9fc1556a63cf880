//! A total order on terms: Erlang's term order, made exact. Printing sorts map keys with it,
//! and two terms compare `Equal` exactly when Erlang's `=:=` (OTP 27+) holds between them.
//!
//! number < atom < reference < fun < port < pid < tuple < map < `[]` < non-empty list <
//! bitstring. Numbers compare by value; equal values put the integer first (`1` < `1.0`) and
//! `-0.0` before `0.0`. Tuples and maps compare by size first, maps then by their sorted keys,
//! then by the values in key order. Lists compare element by element, then by their tails, a
//! list written as a charlist (`ByteList`) or spliced (`[1 | [2]]`) exactly as the same list
//! written out. Bitstrings compare bit by bit, a prefix first. Pids, ports and references
//! compare by node name, then by their numbers, which is deterministic but not the BEAM's
//! (whose order depends on node-table state).
//!
//! Iterative: only comparing map keys recurses, as deep as maps nest inside map keys.

use eetf::{BitBinary, Map, Term};
use num_bigint::BigInt;
use num_traits::{FromPrimitive, ToPrimitive};
use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Clone, Copy)]
enum Seq<'a> {
    Terms(&'a [Term], Option<&'a Term>),
    Bytes(&'a [u8]),
}

impl Seq<'_> {
    fn len(&self) -> usize {
        match self {
            Seq::Terms(t, _) => t.len(),
            Seq::Bytes(b) => b.len(),
        }
    }
}

#[derive(Clone, Copy)]
enum V<'a> {
    T(&'a Term),
    Byte(u8),
    /// The list from element `usize` of the sequence on.
    Rest(Seq<'a>, usize),
}

enum Num<'a> {
    I(i64),
    B(&'a BigInt),
    F(f64),
}

enum Shape<'a> {
    Num(Num<'a>),
    Atom(&'a str),
    Ref(&'a eetf::Reference),
    Fun(&'a Term),
    Port(&'a eetf::Port),
    Pid(&'a eetf::Pid),
    Tuple(&'a [Term]),
    Map(&'a Map),
    Nil,
    Cons(V<'a>, V<'a>),
    Bits(Cow<'a, [u8]>, usize),
}

impl Shape<'_> {
    fn rank(&self) -> u8 {
        match self {
            Shape::Num(_) => 0,
            Shape::Atom(_) => 1,
            Shape::Ref(_) => 2,
            Shape::Fun(_) => 3,
            Shape::Port(_) => 4,
            Shape::Pid(_) => 5,
            Shape::Tuple(_) => 6,
            Shape::Map(_) => 7,
            Shape::Nil => 8,
            Shape::Cons(..) => 9,
            Shape::Bits(..) => 10,
        }
    }
}

/// The number of meaningful bits in a bitstring (a tail of 0 or 8 bits means whole bytes).
pub(super) fn bit_len(b: &BitBinary) -> usize {
    match b.tail_bits_size {
        1..=7 if !b.bytes.is_empty() => (b.bytes.len() - 1) * 8 + usize::from(b.tail_bits_size),
        _ => b.bytes.len() * 8,
    }
}

/// A bitstring's bytes as they go on the wire: eetf keeps the tail bits in the low end of the
/// last byte; here they are moved to its high end and the unused bits cleared.
pub(super) fn wire_bits(b: &BitBinary) -> (Cow<'_, [u8]>, usize) {
    let bits = bit_len(b);
    if bits.is_multiple_of(8) {
        return (Cow::Borrowed(&b.bytes[..bits / 8]), bits);
    }
    let mut bytes = b.bytes.clone();
    let tail = bits % 8;
    if let Some(last) = bytes.last_mut() {
        *last = (*last & ((1u8 << tail) - 1)) << (8 - tail);
    }
    (Cow::Owned(bytes), bits)
}

fn shape(v: V<'_>) -> Shape<'_> {
    match v {
        V::Byte(b) => Shape::Num(Num::I(i64::from(b))),
        V::Rest(s, i) => seq_shape(s, i),
        V::T(t) => match t {
            Term::FixInteger(i) => Shape::Num(Num::I(i64::from(i.value))),
            Term::BigInteger(b) => match b.value.to_i64() {
                Some(i) => Shape::Num(Num::I(i)),
                None => Shape::Num(Num::B(&b.value)),
            },
            Term::Float(f) => Shape::Num(Num::F(f.value)),
            Term::Atom(a) => Shape::Atom(&a.name),
            Term::Reference(r) => Shape::Ref(r),
            Term::ExternalFun(_) | Term::InternalFun(_) => Shape::Fun(t),
            Term::Port(p) => Shape::Port(p),
            Term::Pid(p) => Shape::Pid(p),
            Term::Tuple(t) => Shape::Tuple(&t.elements),
            Term::Map(m) => Shape::Map(m),
            Term::List(l) => seq_shape(Seq::Terms(&l.elements, None), 0),
            Term::ByteList(b) => seq_shape(Seq::Bytes(&b.bytes), 0),
            Term::ImproperList(l) => seq_shape(Seq::Terms(&l.elements, Some(&l.last)), 0),
            Term::Binary(b) => Shape::Bits(Cow::Borrowed(&b.bytes), b.bytes.len() * 8),
            Term::BitBinary(b) => {
                let (bytes, bits) = wire_bits(b);
                Shape::Bits(bytes, bits)
            }
        },
    }
}

fn seq_shape(s: Seq<'_>, i: usize) -> Shape<'_> {
    if i < s.len() {
        let head = match s {
            Seq::Terms(t, _) => V::T(&t[i]),
            Seq::Bytes(b) => V::Byte(b[i]),
        };
        return Shape::Cons(head, V::Rest(s, i + 1));
    }
    match s {
        Seq::Terms(_, Some(tail)) => shape(V::T(tail)),
        _ => Shape::Nil,
    }
}

fn cmp_num(a: &Num<'_>, b: &Num<'_>) -> Ordering {
    match (a, b) {
        (Num::I(x), Num::I(y)) => x.cmp(y),
        (Num::B(x), Num::B(y)) => x.cmp(y),
        (Num::I(x), Num::B(y)) => BigInt::from(*x).cmp(y),
        (Num::B(x), Num::I(y)) => (*x).cmp(&BigInt::from(*y)),
        (Num::F(x), Num::F(y)) => x.total_cmp(y),
        (Num::F(_), _) => cmp_num(b, a).reverse(),
        (int, Num::F(f)) => {
            let big = match int {
                Num::I(i) => BigInt::from(*i),
                Num::B(b) => (*b).clone(),
                Num::F(_) => unreachable!("matched above"),
            };
            let approx = big.to_f64().unwrap_or(f64::NAN);
            match approx.partial_cmp(f) {
                Some(Ordering::Equal) => {
                    // The float is integral here (equal to an integer, or beyond 2^53 where
                    // every float is), so it converts exactly; ties go to the integer.
                    match BigInt::from_f64(*f) {
                        Some(fb) => big.cmp(&fb).then(Ordering::Less),
                        None => Ordering::Less,
                    }
                }
                Some(o) => o,
                None => Ordering::Less,
            }
        }
    }
}

fn cmp_bits(a: &[u8], alen: usize, b: &[u8], blen: usize) -> Ordering {
    let common = alen.min(blen);
    let whole = common / 8;
    let o = a[..whole].cmp(&b[..whole]);
    if o != Ordering::Equal {
        return o;
    }
    for i in whole * 8..common {
        let x = a[i / 8] >> (7 - i % 8) & 1;
        let y = b[i / 8] >> (7 - i % 8) & 1;
        if x != y {
            return x.cmp(&y);
        }
    }
    alen.cmp(&blen)
}

fn fun_key(t: &Term) -> (u8, &str, String) {
    match t {
        Term::ExternalFun(f) => (
            1,
            &f.module.name,
            format!("{}/{}", f.function.name, f.arity),
        ),
        Term::InternalFun(f) => match f.as_ref() {
            eetf::InternalFun::Old {
                module,
                index,
                uniq,
                ..
            } => (0, &module.name, format!("{index:010}.{uniq:010}")),
            eetf::InternalFun::New {
                module,
                index,
                uniq,
                ..
            } => (0, &module.name, format!("{index:010}.{uniq:?}")),
        },
        _ => (2, "", String::new()),
    }
}

#[cfg(test)]
thread_local! {
    /// Pairs of terms compared on this thread (tests bound the work printing does).
    pub(super) static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Sorted map entries, each map sorted once. Comparing two maps compares their sorted keys,
/// which may be maps whose keys must be sorted in turn: without the cache, printing a map
/// whose keys nest maps `d` deep sorts the inner ones again at every comparison, 4^d steps
/// (a 0.5 MB reply at the decoder's nesting limit of 16 took minutes). One cache serves a
/// whole print, keyed by the map's address (every map in it is borrowed for `'a`, so no
/// address is reused while it lives).
pub(super) struct Sorter<'a> {
    sorted: RefCell<HashMap<*const Map, Entries<'a>>>,
}

/// A map's entries, keys in term order.
pub(super) type Entries<'a> = Rc<[(&'a Term, &'a Term)]>;

impl<'a> Sorter<'a> {
    /// An empty cache.
    pub(super) fn new() -> Self {
        Sorter {
            sorted: RefCell::new(HashMap::new()),
        }
    }

    /// The entries of `m`, keys sorted by [`compare`].
    pub(super) fn entries(&self, m: &'a Map) -> Entries<'a> {
        let key: *const Map = m;
        let cached = self.sorted.borrow().get(&key).cloned();
        if let Some(entries) = cached {
            return entries;
        }
        let mut v: Vec<(&'a Term, &'a Term)> = m.map.iter().collect();
        v.sort_by(|a, b| self.compare(a.0, b.0));
        let entries: Entries<'a> = v.into();
        self.sorted.borrow_mut().insert(key, entries.clone());
        entries
    }

    /// [`compare`], with the map entries sorted so far.
    pub(super) fn compare(&self, a: &'a Term, b: &'a Term) -> Ordering {
        let mut stack: Vec<(V<'a>, V<'a>)> = vec![(V::T(a), V::T(b))];
        while let Some((x, y)) = stack.pop() {
            #[cfg(test)]
            STEPS.with(|s| s.set(s.get() + 1));
            let (sx, sy) = (shape(x), shape(y));
            let o = sx.rank().cmp(&sy.rank());
            if o != Ordering::Equal {
                return o;
            }
            let o = match (sx, sy) {
                (Shape::Num(p), Shape::Num(q)) => cmp_num(&p, &q),
                (Shape::Atom(p), Shape::Atom(q)) => p.cmp(q),
                (Shape::Ref(p), Shape::Ref(q)) => p
                    .node
                    .name
                    .cmp(&q.node.name)
                    .then(p.creation.cmp(&q.creation))
                    .then_with(|| p.id.iter().rev().cmp(q.id.iter().rev())),
                (Shape::Fun(p), Shape::Fun(q)) => fun_key(p).cmp(&fun_key(q)),
                (Shape::Port(p), Shape::Port(q)) => p
                    .node
                    .name
                    .cmp(&q.node.name)
                    .then(p.creation.cmp(&q.creation))
                    .then(p.id.cmp(&q.id)),
                (Shape::Pid(p), Shape::Pid(q)) => p
                    .node
                    .name
                    .cmp(&q.node.name)
                    .then(p.creation.cmp(&q.creation))
                    .then(p.serial.cmp(&q.serial))
                    .then(p.id.cmp(&q.id)),
                (Shape::Tuple(p), Shape::Tuple(q)) => {
                    let o = p.len().cmp(&q.len());
                    if o == Ordering::Equal {
                        stack.extend(p.iter().zip(q).rev().map(|(i, j)| (V::T(i), V::T(j))));
                    }
                    o
                }
                (Shape::Map(p), Shape::Map(q)) => {
                    let o = p.map.len().cmp(&q.map.len());
                    if o != Ordering::Equal {
                        return o;
                    }
                    let (ep, eq) = (self.entries(p), self.entries(q));
                    for ((kp, _), (kq, _)) in ep.iter().zip(eq.iter()) {
                        let o = self.compare(kp, kq);
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    stack.extend(
                        ep.iter()
                            .zip(eq.iter())
                            .rev()
                            .map(|(&(_, vp), &(_, vq))| (V::T(vp), V::T(vq))),
                    );
                    Ordering::Equal
                }
                (Shape::Nil, Shape::Nil) => Ordering::Equal,
                (Shape::Cons(hp, tp), Shape::Cons(hq, tq)) => {
                    stack.push((tp, tq));
                    stack.push((hp, hq));
                    Ordering::Equal
                }
                (Shape::Bits(p, pl), Shape::Bits(q, ql)) => cmp_bits(&p, pl, &q, ql),
                _ => unreachable!("ranks are equal"),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

/// Compares two terms in the exact term order described in the module docs.
pub fn compare(a: &Term, b: &Term) -> Ordering {
    Sorter::new().compare(a, b)
}

/// Whether two terms are exactly equal (Erlang's `=:=`, OTP 27+: `0.0` and `-0.0` differ).
pub fn exact_eq(a: &Term, b: &Term) -> bool {
    compare(a, b) == Ordering::Equal
}

/// The place of `t`'s kind in the term order, doubled, so that an OTP 29 native record
/// (which sorts after every tuple and before every map) fits in between at 13: numbers 0,
/// atoms 2, ..., tuples 12, maps 14, `[]` 16, non-empty lists 18, bitstrings 20.
pub(super) fn rank2(t: &Term) -> u8 {
    shape(V::T(t)).rank() * 2
}
