//! Short constructors for `eetf` terms, shared by the KV unit tests.

use eetf::{
    Atom, BigInteger, Binary, ByteList, FixInteger, Float, ImproperList, List, Map, Term, Tuple,
};
use num_bigint::BigInt;

pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}
pub fn int(v: i32) -> Term {
    Term::from(FixInteger::from(v))
}
pub fn big(v: impl Into<BigInt>) -> Term {
    Term::from(BigInteger { value: v.into() })
}
pub fn float(v: f64) -> Term {
    Term::from(Float { value: v })
}
pub fn bin<B: AsRef<[u8]> + ?Sized>(b: &B) -> Term {
    Term::from(Binary::from(b.as_ref()))
}
pub fn list(v: Vec<Term>) -> Term {
    Term::from(List::from(v))
}
pub fn bytelist(b: &[u8]) -> Term {
    Term::from(ByteList::from(b.to_vec()))
}
pub fn improper(v: Vec<Term>, last: Term) -> Term {
    Term::from(ImproperList::from((v, last)))
}
pub fn tuple(v: Vec<Term>) -> Term {
    Term::from(Tuple::from(v))
}
pub fn map(entries: Vec<(Term, Term)>) -> Term {
    Term::from(Map {
        map: entries.into_iter().collect(),
    })
}
