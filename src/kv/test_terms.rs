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

/// Terms of every kind a key or value can be, with the pairs exact equality tells apart
/// (`1`/`1.0`, `0.0`/`-0.0`) and the ones it does not (a charlist as a string or a list):
/// maps small, over 32 keys, nested and as keys; bignums; bitstrings; pids, refs, ports, funs;
/// deep nesting.
pub fn zoo() -> Vec<Term> {
    use eetf::{BitBinary, ExternalFun, InternalFun, Pid, Port, Reference};
    let pid = || Pid::new("zoo@127.0.0.1", 42, 0, 3);
    let big_map = map((0..40).map(|i| (int(i), atom("v"))).collect());
    let small_map = map(vec![(atom("a"), int(1)), (bin("b"), float(2.5))]);
    let mut deep = atom("bottom");
    for _ in 0..200 {
        deep = list(vec![deep]);
    }
    vec![
        atom("k"),
        atom("nil"),
        atom("all"),
        atom("get"),
        atom("héllo_wörld"),
        atom(&"a".repeat(300)),
        int(0),
        int(1),
        int(-1),
        int(255),
        int(256),
        int(i32::MAX),
        big(i64::from(i32::MAX) + 1),
        big(i64::from(i32::MIN) - 1),
        big(num_bigint::BigInt::from(1u8) << 100),
        float(0.0),
        float(-0.0),
        float(1.0),
        float(1.5),
        bin(""),
        bin("k"),
        bin(&[7u8; 1000][..]),
        Term::from(BitBinary::from((vec![1, 2, 5], 3))),
        bytelist(b"abc"),
        list(vec![int(97), int(98), int(99)]),
        list(vec![]),
        list(vec![int(1), atom("a")]),
        improper(vec![int(1)], int(2)),
        tuple(vec![]),
        tuple(vec![atom("a"), int(1)]),
        tuple(vec![atom("get"), atom("k")]),
        small_map.clone(),
        big_map.clone(),
        map(vec![(atom("inner"), small_map.clone()), (int(1), big_map)]),
        map(vec![(small_map, int(2))]),
        Term::from(pid()),
        Term::from(Reference {
            node: eetf::Atom::from("zoo@127.0.0.1"),
            id: vec![1, 2, 3],
            creation: 3,
        }),
        Term::from(Port {
            node: eetf::Atom::from("zoo@127.0.0.1"),
            id: 9,
            creation: 3,
        }),
        Term::from(ExternalFun::from(("lists", "map", 2))),
        Term::from(InternalFun::New {
            module: eetf::Atom::from("erl_eval"),
            arity: 1,
            pid: pid(),
            free_vars: vec![int(5)],
            index: 42,
            uniq: [7; 16],
            old_index: 1,
            old_uniq: 123_456_789,
        }),
        deep,
    ]
}
