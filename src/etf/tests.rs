//! Tests for the ETF validator: round trips, hostile inputs, mutation fuzzing, a corpus from
//! a real Erlang VM, and the stack budget behind [`Limits::default`].
//!
//! Test-only code: the parent declares this module under `#[cfg(test)]`.

use super::*;
use eetf::{
    Atom, BigInteger, Binary, BitBinary, ByteList, ExternalFun, FixInteger, Float, ImproperList,
    InternalFun, List, Map, Pid, Port, Reference, Term, Tuple,
};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::{Duration, Instant};

fn encode(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    term.encode(&mut out).expect("eetf encodes sample terms");
    out
}

fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

fn int(v: i32) -> Term {
    Term::from(FixInteger::from(v))
}

fn pid() -> Pid {
    Pid::new("kv@host", 42, 7, 3)
}

/// Sample terms covering every kind eetf encodes. Lists of small integers are avoided
/// because eetf encodes them as `STRING_EXT`, which decodes as a `ByteList`.
fn samples() -> Vec<Term> {
    let mut map = HashMap::new();
    map.insert(atom("key"), Term::from(Binary::from(&b"value"[..])));
    map.insert(
        int(-5),
        Term::from(Tuple::from(vec![atom("a"), int(100_000)])),
    );
    map.insert(
        Term::from(Map::from(HashMap::<Term, Term>::new())),
        Term::from(List::nil()),
    );
    let fun = InternalFun::New {
        module: Atom::from("erl_eval"),
        arity: 1,
        pid: pid(),
        free_vars: vec![int(5), Term::from(Map::from(map.clone()))],
        index: 42,
        uniq: [7; 16],
        old_index: 1,
        old_uniq: 123_456_789,
    };
    let old_fun = InternalFun::Old {
        module: Atom::from("m"),
        pid: pid(),
        free_vars: vec![atom("x")],
        index: 1,
        uniq: -2,
    };
    vec![
        atom("ok"),
        atom("héllo_wörld_😀"),
        atom(&"a".repeat(300)),
        int(0),
        int(255),
        int(256),
        int(-1),
        int(i32::MIN),
        Term::from(BigInteger::from(i64::MAX)),
        Term::from(BigInteger {
            value: -(num_bigint::BigInt::from(1) << 3000usize),
        }),
        Term::from(Float::try_from(3.25).unwrap()),
        Term::from(Float::try_from(-0.0).unwrap()),
        Term::from(pid()),
        Term::from(Port {
            node: Atom::from("kv@host"),
            id: 9,
            creation: 1,
        }),
        Term::from(Port {
            node: Atom::from("kv@host"),
            id: 1 << 40,
            creation: 1,
        }),
        Term::from(Reference::from(("kv@host", vec![1, 2, 3]))),
        Term::from(Reference::from(("kv@host", vec![1, 2, 3, 4, 5]))),
        Term::from(ExternalFun::from(("lists", "map", 2))),
        Term::from(fun),
        Term::from(old_fun),
        Term::from(Binary::from(&b""[..])),
        Term::from(Binary::from(&b"\x00\xff binary"[..])),
        Term::from(BitBinary::from((vec![1, 2, 5], 3))),
        Term::from(BitBinary::from((vec![1], 8))),
        Term::from(ByteList::from("a string")),
        Term::from(List::nil()),
        Term::from(List::from(vec![
            atom("a"),
            int(1000),
            Term::from(List::nil()),
        ])),
        Term::from(ImproperList::from((
            vec![int(1000), atom("b")],
            atom("tail"),
        ))),
        Term::from(ImproperList::from((
            vec![int(1000)],
            Term::from(ImproperList::from((vec![int(2000)], int(3)))),
        ))),
        Term::from(Tuple::from(vec![])),
        Term::from(Tuple::from(
            (0..300).map(|i| int(i * 1000)).collect::<Vec<_>>(),
        )),
        Term::from(Map::from(map)),
        Term::from(Tuple::from(vec![
            atom("$gen_call"),
            Term::from(Tuple::from(vec![
                Term::from(pid()),
                Term::from(List::from(vec![
                    atom("alias"),
                    Term::from(Reference::from(("kv@host", vec![1, 2, 3]))),
                ])),
            ])),
            Term::from(Tuple::from(vec![
                atom("put"),
                Term::from(Binary::from(&b"k"[..])),
                Term::from(ByteList::from("v")),
            ])),
        ])),
    ]
}

#[test]
fn eetf_round_trip() {
    let limits = Limits::default();
    for term in samples() {
        let bytes = encode(&term);
        assert_eq!(validate_versioned(&bytes, &limits).unwrap(), bytes.len());
        assert_eq!(
            validate_term(&bytes[1..], &limits).unwrap(),
            bytes.len() - 1
        );
        let (decoded, used) = decode(&bytes, &limits).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decoded, term);

        // Trailing bytes are neither consumed nor rejected, except by decode_exact.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[131, 97, 1, 0xff]);
        assert_eq!(validate_versioned(&longer, &limits).unwrap(), bytes.len());
        let (again, used) = decode(&longer, &limits).unwrap();
        assert_eq!((again, used), (term.clone(), bytes.len()));
        assert!(matches!(
            decode_exact(&longer, &limits),
            Err(TermError::TrailingBytes { extra: 4, .. })
        ));
        assert_eq!(decode_exact(&bytes, &limits).unwrap(), term);
    }
}

/// A complex term: every proper prefix of it must be rejected, never panic.
#[test]
fn every_truncation_is_an_error() {
    let limits = Limits::default();
    let term = Term::from(Tuple::from(samples()));
    let bytes = encode(&term);
    assert_eq!(validate_versioned(&bytes, &limits).unwrap(), bytes.len());
    for cut in 0..bytes.len() {
        let prefix = &bytes[..cut];
        match validate_versioned(prefix, &limits) {
            Err(TermError::Truncated { offset, needed }) => {
                assert!(offset <= cut && needed > 0, "cut {cut}");
            }
            // A count that the bytes left cannot hold is caught before the elements.
            Err(TermError::BadLength { remaining, .. }) => assert!(remaining < cut),
            other => panic!("prefix of {cut} bytes: {other:?}"),
        }
        assert!(decode(prefix, &limits).is_err());
    }
}

#[test]
fn hostile_inputs_are_rejected() {
    let limits = Limits::default();
    let check = |bytes: &[u8]| validate_versioned(bytes, &limits).unwrap_err();

    assert!(matches!(
        check(&[131, 82, 0]),
        TermError::AtomCacheRef { offset: 1 }
    ));
    // An atom cache ref where a pid's node atom belongs.
    assert!(matches!(
        check(&[131, 88, 82, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        TermError::AtomCacheRef { offset: 2 }
    ));
    assert!(matches!(
        check(&[131, 108, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        TermError::BadLength {
            what: "list",
            count: 0x1_0000_0000,
            remaining: 3,
            ..
        }
    ));
    assert!(matches!(
        check(&[131, 105, 0xff, 0xff, 0xff, 0xff, 106]),
        TermError::BadLength { what: "tuple", .. }
    ));
    assert!(matches!(
        check(&[131, 116, 0, 0, 0, 2, 106, 106, 106]),
        TermError::BadLength {
            what: "map",
            count: 4,
            ..
        }
    ));
    assert!(matches!(
        check(&[131, 109, 0xff, 0xff, 0xff, 0xff, 1]),
        TermError::Truncated { offset: 6, .. }
    ));
    assert!(matches!(
        check(&[131, 80, 0, 0, 0, 10, 0x78, 0x9c]),
        TermError::Compressed { offset: 1 }
    ));
    for tag in [0, 68, 69, 75, 81, 83, 121, 122, 130, 131, 255] {
        assert!(
            matches!(check(&[131, tag, 0, 0, 0, 0]), TermError::UnknownTag { tag: t, offset: 1 } if t == tag),
            "tag {tag}"
        );
    }
    assert!(matches!(
        check(&[131, 119, 2, 0xc3, 0x28]),
        TermError::InvalidUtf8Atom { offset: 1 }
    ));
    assert!(matches!(
        check(&[131, 118, 0, 1, 0xff]),
        TermError::InvalidUtf8Atom { offset: 1 }
    ));
    // Latin-1 'é' is valid (eetf alone would read it as invalid UTF-8): decoded as 'é'.
    for latin1 in [&[131, 100, 0, 1, 0xe9][..], &[131, 115, 1, 0xe9]] {
        assert_eq!(validate_versioned(latin1, &limits).ok(), Some(latin1.len()));
        let (term, _) = decode(latin1, &limits).expect("a Latin-1 atom decodes");
        assert_eq!(term, eetf::Term::from(eetf::Atom::from("\u{e9}")));
    }
    assert!(matches!(
        check(&[131, 110, 1, 2, 7]),
        TermError::BadSign { sign: 2, .. }
    ));
    // Tail bits must be 1..=8 for a non-empty bitstring (eetf shifts by 8 - bits).
    for bits in [0, 9, 255] {
        assert!(matches!(
            check(&[131, 77, 0, 0, 0, 1, bits, 0xff]),
            TermError::BadBitBinary { .. }
        ));
    }
    assert!(matches!(
        check(&[131, 77, 0, 0, 0, 0, 3]),
        TermError::BadBitBinary { .. }
    ));
    assert!(matches!(
        check(&[131, 70, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]),
        TermError::BadFloat { .. }
    ));
    let mut float_ext = vec![131, 99];
    float_ext.extend_from_slice(&[b'x'; 31]);
    assert!(matches!(check(&float_ext), TermError::BadFloat { .. }));
    // A pid whose node is not an atom.
    assert!(matches!(
        check(&[131, 88, 97, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        TermError::UnexpectedTag {
            expected: "atom",
            ..
        }
    ));
    assert!(matches!(
        check(&[131, 7]),
        TermError::UnknownTag { tag: 7, .. }
    ));
    assert!(matches!(
        check(&[130, 106]),
        TermError::BadVersion { found: 130 }
    ));
    assert!(matches!(check(&[]), TermError::Truncated { offset: 0, .. }));
    assert!(matches!(
        validate_term(&[], &limits),
        Err(TermError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn new_fun_size_must_match() {
    let limits = Limits::default();
    let fun = samples()
        .into_iter()
        .find(|t| matches!(t, Term::InternalFun(f) if matches!(**f, InternalFun::New { .. })))
        .unwrap();
    let mut bytes = encode(&fun);
    assert_eq!(bytes[1], NEW_FUN_EXT);
    validate_versioned(&bytes, &limits).unwrap();
    bytes[5] ^= 1;
    assert!(matches!(
        validate_versioned(&bytes, &limits),
        Err(TermError::FunSizeMismatch { offset: 1, .. })
    ));
}

#[test]
fn atom_limit() {
    let term = Term::from(List::from(vec![atom("a"); 10]));
    let bytes = encode(&term);
    let limits = |max_atoms| Limits {
        max_atoms,
        ..Limits::default()
    };
    validate_versioned(&bytes, &limits(10)).unwrap();
    assert!(matches!(
        validate_versioned(&bytes, &limits(9)),
        Err(TermError::TooManyAtoms { max: 9 })
    ));
    // A pid's node name counts too.
    let bytes = encode(&Term::from(pid()));
    assert!(matches!(
        validate_versioned(&bytes, &limits(0)),
        Err(TermError::TooManyAtoms { max: 0 })
    ));
}

#[test]
fn term_limit_counts_every_decoded_term() {
    let limits = |max_terms| Limits {
        max_terms,
        ..Limits::default()
    };
    // A proper list of 10 integers: the list, 10 elements and the `[]` tail. (Integers above
    // 255, or eetf would encode a `STRING_EXT`, which is one term.)
    let bytes = encode(&Term::from(List::from(vec![int(1000); 10])));
    assert_eq!(
        validate_versioned(&bytes, &limits(12)).unwrap(),
        bytes.len()
    );
    assert!(matches!(
        validate_versioned(&bytes, &limits(11)),
        Err(TermError::TooManyTerms { max: 11 })
    ));
    // A pid is two: itself and its node atom. A tuple of two pids is five.
    let bytes = encode(&Term::from(Tuple::from(vec![pid().into(), pid().into()])));
    validate_versioned(&bytes, &limits(5)).unwrap();
    assert!(matches!(
        validate_versioned(&bytes, &limits(4)),
        Err(TermError::TooManyTerms { max: 4 })
    ));
    // A binary or string is one term whatever its length.
    let bytes = encode(&Term::from(Binary::from(vec![7u8; 100_000])));
    validate_versioned(&bytes, &limits(1)).unwrap();
    let bytes = encode(&Term::from(List::from(vec![int(1); 1000])));
    validate_versioned(&bytes, &limits(1)).unwrap();
    // Two terms of one message share the budget when counted together.
    let one = encode(&Term::from(List::from(vec![int(1000); 3])));
    let both = [one.clone(), one].concat();
    let first = validate_versioned(&both, &limits(5)).unwrap();
    validate_versioned(&both[first..], &limits(5)).unwrap();
    let mut terms = 0;
    validate_versioned_counted(&both, &limits(10), &mut terms).unwrap();
    assert_eq!(terms, 5);
    validate_versioned_counted(&both[first..], &limits(10), &mut terms).unwrap();
    assert_eq!(terms, 10);
    let mut terms = 0;
    validate_versioned_counted(&both, &limits(9), &mut terms).unwrap();
    assert!(matches!(
        validate_versioned_counted(&both[first..], &limits(9), &mut terms),
        Err(TermError::TooManyTerms { max: 9 })
    ));
}

#[test]
fn a_max_size_frame_of_nils_is_refused_at_the_default_limit_without_allocating() {
    // The amplification worst case: `[[], [], ...]`, one byte per element. One past the
    // default is refused before anything is decoded.
    let n = DEFAULT_MAX_TERMS;
    let mut bytes = vec![VERSION_MAGIC, LIST_EXT];
    bytes.extend_from_slice(&(n as u32).to_be_bytes());
    bytes.resize(bytes.len() + n, NIL_EXT);
    bytes.push(NIL_EXT);
    // n elements + tail + the list itself = n + 2 terms.
    assert!(matches!(
        validate_versioned(&bytes, &Limits::default()),
        Err(TermError::TooManyTerms { max }) if max == DEFAULT_MAX_TERMS
    ));
    let fits = Limits {
        max_terms: n + 2,
        ..Limits::default()
    };
    assert_eq!(validate_versioned(&bytes, &fits).unwrap(), bytes.len());
}

#[test]
fn term_size_behind_the_default_term_limit() {
    // DEFAULT_MAX_TERMS's justification assumes 56-byte terms (x86_64).
    if cfg!(target_pointer_width = "64") {
        assert_eq!(std::mem::size_of::<Term>(), 56);
    }
}

/// Nesting shapes that make eetf recurse, one `decode_term` level per step.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `[[[...]]]`
    List,
    /// `[1|[2|[3|...]]]` nesting through improper tails.
    Tail,
    /// `{{{...}}}`
    Tuple,
    /// `#{0 => #{0 => ...}}`
    MapValue,
    /// `#{#{... => []} => []}`: eetf hashes each key recursively on insert.
    MapKey,
    /// A `NEW_FUN_EXT` whose free variable is the next fun.
    Fun,
}

const SHAPES: [Shape; 6] = [
    Shape::List,
    Shape::Tail,
    Shape::Tuple,
    Shape::MapValue,
    Shape::MapKey,
    Shape::Fun,
];

impl Shape {
    fn parse(name: &str) -> Option<Shape> {
        SHAPES.into_iter().find(|s| format!("{s:?}") == name)
    }

    /// How much deeper than `levels` the validator counts (the innermost `[]`, and for funs
    /// the node atom of the innermost fun's pid).
    fn extra_depth(self) -> usize {
        match self {
            Shape::Fun => 2,
            _ => 1,
        }
    }

    /// A versioned term with `levels` nested levels, built without recursion.
    fn build(self, levels: usize) -> Vec<u8> {
        let (prefix, suffix): (Vec<u8>, &[u8]) = match self {
            Shape::List => (vec![LIST_EXT, 0, 0, 0, 1], &[NIL_EXT]),
            Shape::Tail => (vec![LIST_EXT, 0, 0, 0, 1, SMALL_INTEGER_EXT, 1], &[]),
            Shape::Tuple => (vec![SMALL_TUPLE_EXT, 1], &[]),
            Shape::MapValue => (vec![MAP_EXT, 0, 0, 0, 1, SMALL_INTEGER_EXT, 0], &[]),
            Shape::MapKey => (vec![MAP_EXT, 0, 0, 0, 1], &[NIL_EXT]),
            Shape::Fun => (fun_prefix(), &[]),
        };
        let mut out = Vec::with_capacity(1 + levels * (prefix.len() + suffix.len()) + 1);
        out.push(VERSION_MAGIC);
        for level in 0..levels {
            let at = out.len();
            out.extend_from_slice(&prefix);
            if let Shape::Fun = self {
                // Size = everything after the tag: the rest of this prefix, the deeper
                // levels' prefixes and the innermost `[]`.
                let size = (levels - level) * prefix.len();
                out[at + 1..at + 5].copy_from_slice(&(size as u32).to_be_bytes());
            }
        }
        out.push(NIL_EXT);
        for _ in 0..levels {
            out.extend_from_slice(suffix);
        }
        out
    }
}

/// Everything of a one-free-variable `NEW_FUN_EXT` before its free variable (size left 0).
fn fun_prefix() -> Vec<u8> {
    let mut p = vec![NEW_FUN_EXT, 0, 0, 0, 0, 1];
    p.extend_from_slice(&[9; 16]);
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    p.extend_from_slice(&[SMALL_ATOM_UTF8_EXT, 1, b'm']);
    p.extend_from_slice(&[SMALL_INTEGER_EXT, 0, SMALL_INTEGER_EXT, 0]);
    p.extend_from_slice(&[NEW_PID_EXT, SMALL_ATOM_UTF8_EXT, 1, b'n']);
    p.extend_from_slice(&[0; 12]);
    p
}

/// Everything kvnode may do to a decoded term: decode, compare, display, encode and drop it.
fn exercise_eetf(bytes: &[u8]) {
    let term = Term::decode(bytes).expect("eetf decodes the nested term");
    let copy = term.clone();
    assert!(term == copy);
    let shown = term.to_string();
    assert!(!shown.is_empty());
    let debugged = format!("{term:?}");
    assert!(!debugged.is_empty());
    let mut out = Vec::with_capacity(bytes.len());
    term.encode(&mut out).expect("eetf encodes the nested term");
    drop(copy);
    drop(term);
}

fn on_thread_with_stack<F: FnOnce() + Send + 'static>(stack: usize, f: F) {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .expect("spawn test thread")
        .join()
        .expect("test thread succeeded");
}

#[test]
fn depth_limit_is_exact_and_the_default_fits_the_stack_kvnode_threads_get() {
    let limits = Limits::default();
    assert_eq!(limits.max_depth, DEFAULT_MAX_DEPTH);
    for shape in SHAPES {
        if let Shape::MapKey = shape {
            continue; // nesting through map keys has its own, lower limit (below)
        }
        let levels = limits.max_depth - shape.extra_depth();
        let ok = shape.build(levels);
        assert_eq!(
            validate_versioned(&ok, &limits).unwrap(),
            ok.len(),
            "{shape:?}"
        );
        let deep = shape.build(levels + 1);
        assert!(
            matches!(
                validate_versioned(&deep, &limits),
                Err(TermError::TooDeep {
                    max: DEFAULT_MAX_DEPTH
                })
            ),
            "{shape:?}"
        );
        // What every kvnode thread gets for the default --max-term-depth.
        on_thread_with_stack(stack_size_for_depth(limits.max_depth), move || {
            let (_, used) = decode(&ok, &Limits::default()).unwrap();
            assert_eq!(used, ok.len());
            exercise_eetf(&ok);
        });
    }
    // A map whose key is a list nested to the limit: eetf hashes the key when it inserts it.
    let list = Shape::List.build(limits.max_depth - 2);
    let mut map = vec![VERSION_MAGIC, MAP_EXT, 0, 0, 0, 1];
    map.extend_from_slice(&list[1..]);
    map.push(NIL_EXT);
    assert_eq!(validate_versioned(&map, &limits).unwrap(), map.len());
    on_thread_with_stack(stack_size_for_depth(limits.max_depth), move || {
        exercise_eetf(&map);
    });
}

#[test]
fn nesting_through_map_keys_is_limited_apart() {
    let limits = Limits::default();
    let max = DEFAULT_MAX_MAP_KEY_NESTING;
    // `#{#{... => []} => []}`: the innermost `[]` sits inside `levels` map keys.
    let ok = Shape::MapKey.build(max);
    assert_eq!(validate_versioned(&ok, &limits).unwrap(), ok.len());
    assert!(matches!(
        validate_versioned(&Shape::MapKey.build(max + 1), &limits),
        Err(TermError::MapKeysTooDeep { max: m }) if m == max
    ));
    // Map values nest freely.
    let values = Shape::MapValue.build(10_000);
    assert_eq!(validate_versioned(&values, &limits).unwrap(), values.len());
    // A map inside a tuple inside a map key still counts the key position.
    let mut bytes = vec![VERSION_MAGIC];
    for _ in 0..=max {
        bytes.extend_from_slice(&[MAP_EXT, 0, 0, 0, 1, SMALL_TUPLE_EXT, 1]);
    }
    bytes.push(NIL_EXT);
    bytes.resize(bytes.len() + max + 1, NIL_EXT);
    assert!(matches!(
        validate_versioned(&bytes, &limits),
        Err(TermError::MapKeysTooDeep { .. })
    ));
}

#[test]
fn stack_sizes_follow_the_depth_limit() {
    assert_eq!(stack_size_for_depth(0), BASE_STACK_BYTES);
    assert_eq!(
        stack_size_for_depth(DEFAULT_MAX_DEPTH),
        BASE_STACK_BYTES + DEFAULT_MAX_DEPTH * STACK_BYTES_PER_LEVEL
    );
    // Capped: a huge value cannot ask for more address space than the largest flag value.
    assert_eq!(
        stack_size_for_depth(usize::MAX),
        stack_size_for_depth(MAX_MAX_DEPTH)
    );
}

#[test]
fn validator_is_iterative() {
    // Far deeper than any stack could take recursively, with a generous limit.
    let limits = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    for shape in [Shape::List, Shape::Tail, Shape::Fun] {
        let bytes = shape.build(200_000);
        on_thread_with_stack(64 << 10, move || {
            assert_eq!(validate_versioned(&bytes, &limits).unwrap(), bytes.len());
        });
    }
}

/// Subprocess body for [`measure_stack_depth`]: runs eetf on a nested term on a thread
/// with a given stack, configured by `KVNODE_STACK_PROBE=<shape>:<levels>:<stack bytes>`
/// (append `:decode` to only decode and drop).
#[test]
#[ignore = "subprocess helper for measure_stack_depth"]
fn stack_probe() {
    let Ok(spec) = std::env::var("KVNODE_STACK_PROBE") else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let shape = Shape::parse(parts[0]).expect("shape name");
    let levels: usize = parts[1].parse().expect("levels");
    let stack: usize = parts[2].parse().expect("stack size");
    let bytes = shape.build(levels);
    if parts.get(3) == Some(&"decode") {
        on_thread_with_stack(stack, move || {
            drop(Term::decode(&bytes[..]).expect("decodes"))
        });
    } else {
        on_thread_with_stack(stack, move || exercise_eetf(&bytes));
    }
}

/// Measures how deep eetf can go on an 8 MiB stack, per shape (see the module docs). A
/// stack overflow aborts the process, so every attempt runs in a subprocess.
#[test]
#[ignore = "slow measurement; run with --ignored --nocapture"]
fn measure_stack_depth() {
    let exe = std::env::current_exe().expect("test binary path");
    let stack = 8 << 20;
    let survives = |shape: Shape, levels: usize, ops: &str| {
        Command::new(&exe)
            .args(["--exact", "etf::tests::stack_probe", "--ignored"])
            .env(
                "KVNODE_STACK_PROBE",
                format!("{shape:?}:{levels}:{stack}:{ops}"),
            )
            .output()
            .expect("run probe")
            .status
            .success()
    };
    for ops in ["decode", "all"] {
        for shape in SHAPES {
            let (mut good, mut bad) = (64, 128);
            while survives(shape, bad, ops) {
                (good, bad) = (bad, bad * 2);
            }
            while bad - good > good / 100 {
                let mid = (good + bad) / 2;
                if survives(shape, mid, ops) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            println!("{shape:?} ({ops}): eetf survives ~{good} levels on an 8 MiB stack");
        }
    }
}

/// xorshift64: deterministic, dependency-free randomness for mutation tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Encodings captured from OTP 25 (`term_to_binary(T, [{minor_version, 2}])` unless noted).
const OTP_SAMPLES: &[&[u8]] = &[
    // self()
    &[
        131, 88, 119, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116, 0, 0, 0,
        9, 0, 0, 0, 0, 0, 0, 0, 0,
    ],
    // make_ref()
    &[
        131, 90, 0, 3, 119, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116, 0,
        0, 0, 0, 0, 3, 86, 199, 35, 8, 0, 2, 124, 17, 5, 187,
    ],
    // fun lists:map/2
    &[
        131, 113, 119, 5, 108, 105, 115, 116, 115, 119, 3, 109, 97, 112, 97, 2,
    ],
    // <<1:3>>
    &[131, 77, 0, 0, 0, 1, 3, 32],
    // a port
    &[
        131, 89, 119, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116, 0, 0, 0,
        0, 0, 0, 0, 0,
    ],
    // [1|2]
    &[131, 108, 0, 0, 0, 1, 97, 1, 97, 2],
    // 3.5 with minor_version 0 (FLOAT_EXT)
    &[
        131, 99, 51, 46, 53, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48,
        48, 48, 101, 43, 48, 48, 0, 0, 0, 0, 0,
    ],
];

#[test]
fn mutated_inputs_never_panic() {
    let limits = Limits::default();
    let mut corpus: Vec<Vec<u8>> = samples().iter().map(encode).collect();
    corpus.extend(OTP_SAMPLES.iter().map(|s| s.to_vec()));
    corpus.push(Shape::Fun.build(3));
    corpus.push(Shape::MapKey.build(4));
    corpus.push(encode(&Term::from(Tuple::from(samples()))));
    // Bytes that steer decoding into interesting places.
    const SPICY: &[u8] = &[
        0, 1, 2, 8, 9, 0x7f, 0x80, 0xff, 70, 77, 80, 82, 88, 89, 90, 97, 98, 99, 100, 101, 103,
        104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 116, 117, 118, 119, 120, 121,
    ];

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for case in 0..20_000 {
        let mut bytes = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes[at] = SPICY[rng.below(SPICY.len())],
                2 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at.max(1), SPICY[rng.below(SPICY.len())]),
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| match decode(&bytes, &limits) {
            Ok((term, used)) => {
                assert!(used <= bytes.len());
                let _ = term.to_string();
                let mut out = Vec::new();
                let _ = term.encode(&mut out);
                true
            }
            // The validator mirrors eetf: eetf must never reject what it accepted.
            Err(TermError::Decode(e)) => panic!("eetf rejected a validated term: {e}"),
            Err(_) => false,
        }));
        match outcome {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panic!("case {case} panicked on input {bytes:?}"),
        }
    }
    // Sanity: the mutations are not all trivially fatal.
    assert!(accepted > 1000, "only {accepted} mutants decoded");
}

/// Erlang expression producing `[{Expect, Label, Binary}]`, printed one per line as
/// `expect label hex`.
const ERL_CORPUS: &str = r#"
V2 = fun(T) -> term_to_binary(T, [{minor_version, 2}]) end,
X = erlang:unique_integer([positive]),
Closure = fun(Y) -> X + Y end,
Deep = lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, 200)),
DeepMap = lists:foldl(fun(I, A) -> #{I => [A], {t, I} => I} end, #{}, lists:seq(1, 100)),
Cases = [
    {ok, pid, V2(self())},
    {ok, ref, V2(make_ref())},
    {ok, export, V2(fun lists:map/2)},
    {ok, closure, V2(Closure)},
    {ok, closure_in_tuple, V2({Closure, fun() -> Closure end})},
    {ok, port, V2(hd(erlang:ports()))},
    {ok, map, V2(#{a => 1, <<"k">> => [1, 2, 3], {t} => #{}, 1.5 => self()})},
    {ok, big_ints, V2([1 bsl 64, -(1 bsl 100), 1 bsl 3000, -(1 bsl 3000), -1, 2147483648, -2147483649])},
    {ok, floats, V2([3.14, -0.0, 1.0e300, -2.5e-300])},
    {ok, float_ext, term_to_binary([3.5, -1.25], [{minor_version, 0}])},
    {ok, unicode_atoms, V2(['h\x{e9}llo', '\x{65E5}\x{672C}', '\x{1F600}', ''])},
    {ok, long_atom, V2(list_to_atom(lists:duplicate(255, $x)))},
    {ok, bitstrings, V2([<<1:3>>, <<1, 2, 3, 4:4>>, <<255:8>>, <<>>, <<"bin">>])},
    {ok, improper, V2([[1, 2 | 3], [a | b], [[] | []]])},
    {ok, strings, V2(["string", "", lists:seq(1, 300), lists:duplicate(70000, $a)])},
    {ok, large_tuple, V2(list_to_tuple(lists:seq(1, 300)))},
    {ok, empty, V2({[], {}, #{}, <<>>})},
    {ok, deep_list, V2(Deep)},
    {ok, deep_map, V2(DeepMap)},
    {ok, gen_call, V2({'$gen_call', {self(), [alias | make_ref()]}, {put, <<"k">>, "v"}})},
    {ok, ascii_latin1_atoms, term_to_binary({foo, bar, self(), make_ref()})},
    {latin1, latin1_atom, term_to_binary('\x{e9}')},
    {compressed, compressed, term_to_binary(lists:duplicate(1000, foo), [compressed])}
],
lists:foreach(fun({E, L, B}) -> io:format("~s ~s ~s~n", [E, L, binary:encode_hex(B)]) end, Cases),
halt().
"#;

/// Runs `erl -noshell -eval <expr>` and returns its standard output, failing loudly if `erl`
/// is missing, fails, or does not finish within `timeout`.
fn run_erl(expr: &str, timeout: Duration) -> String {
    let out_path = std::env::temp_dir().join(format!("kvnode-term-erl-{}.out", std::process::id()));
    let out_file = std::fs::File::create(&out_path).expect("create temp file for erl output");
    let mut child = Command::new("erl")
        .args(["-noshell", "-eval", expr])
        .stdout(out_file)
        .spawn()
        .expect("`erl` (Erlang/OTP) must be on PATH to run this test");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for erl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("erl did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).expect("read erl output");
    let _ = std::fs::remove_file(&out_path);
    assert!(status.success(), "erl failed ({status}): {stdout}");
    stdout
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex from erl"))
        .collect()
}

#[test]
fn real_erlang_terms_validate_and_decode() {
    let stdout = run_erl(ERL_CORPUS, Duration::from_secs(60));
    let limits = Limits::default();
    let mut seen = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [expect, label, hex] = fields[..] else {
            panic!("unexpected erl output line: {line}");
        };
        let bytes = unhex(hex);
        let result = decode(&bytes, &limits);
        match expect {
            "ok" => {
                let (term, used) = result.unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(used, bytes.len(), "{label}");
                // eetf's own encoding of the decoded term validates too.
                let again = encode(&term);
                assert_eq!(
                    validate_versioned(&again, &limits).unwrap(),
                    again.len(),
                    "{label}"
                );
            }
            // OTP 25's term_to_binary writes 'é' as a Latin-1 ATOM_EXT: the same atom.
            "latin1" => assert_eq!(
                result.map(|(t, _)| t).ok(),
                Some(eetf::Term::from(eetf::Atom::from("\u{e9}"))),
                "{label}"
            ),
            "compressed" => assert!(
                matches!(result, Err(TermError::Compressed { offset: 1 })),
                "{label}: {result:?}"
            ),
            other => panic!("unknown expectation {other}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 23, "erl printed: {stdout}");
}

/// A map with both `0.0` and `-0.0` keys (two keys since OTP 27) validates, but decoding it
/// with eetf would merge them: refused. A native record validates and is refused too.
#[test]
fn terms_eetf_cannot_hold_are_refused_not_changed() {
    let limits = Limits::default();
    let mut map = vec![131, 116, 0, 0, 0, 2, 70, 0, 0, 0, 0, 0, 0, 0, 0, 97, 1];
    map.extend_from_slice(&[70, 128, 0, 0, 0, 0, 0, 0, 0, 97, 2]);
    assert_eq!(validate_versioned(&map, &limits).ok(), Some(map.len()));
    assert!(matches!(
        decode(&map, &limits),
        Err(TermError::MapKeysMerged)
    ));
    let mut nested = vec![131, 104, 1];
    nested.extend_from_slice(&map[1..]);
    assert!(matches!(
        decode(&nested, &limits),
        Err(TermError::MapKeysMerged)
    ));
    // One signed zero alone is fine.
    let one = [131, 116, 0, 0, 0, 1, 70, 128, 0, 0, 0, 0, 0, 0, 0, 97, 2];
    assert!(decode(&one, &limits).is_ok());
    // #m:n{a = 1}, as OTP 29 writes it.
    let record = [
        131, 67, 0, 0, 0, 1, 0, 119, 1, b'm', 119, 1, b'n', 119, 1, b'a', 97, 1,
    ];
    assert_eq!(
        validate_versioned(&record, &limits).ok(),
        Some(record.len())
    );
    assert!(matches!(
        decode(&record, &limits),
        Err(TermError::NativeRecord { offset: 1 })
    ));
    assert!(validate_versioned(&record[..record.len() - 1], &limits).is_err());
    assert!(matches!(
        checked_for_eetf(&record, &limits),
        Err(TermError::NativeRecord { .. })
    ));
    // Two terms back to back (a frame): a Latin-1 atom in the second is rewritten.
    let frame = [131, 97, 1, 131, 100, 0, 1, 0xe9];
    let checked = checked_for_eetf(&frame, &limits).expect("valid");
    assert_eq!(&checked[..], &[131, 97, 1, 131, 118, 0, 2, 0xc3, 0xa9]);
}

/// `needs_bytes` (the KV server's `may_be_raw`) flags exactly the terms eetf cannot hold:
/// ordinary values, maps with floats among their keys included, are not flagged (the old
/// byte scan for tags 67 and 116 flagged every one of them); every term with a native
/// record or a map whose keys eetf merges is, with or without its version byte.
#[test]
fn needs_bytes_flags_exactly_what_eetf_cannot_hold() {
    let float = |v: f64| Term::from(Float { value: v });
    let map = |entries: Vec<(Term, Term)>| {
        Term::from(Map {
            map: entries.into_iter().collect(),
        })
    };
    let map_bytes = |entries: &[(Vec<u8>, Vec<u8>)]| {
        let mut b = vec![VERSION_MAGIC, MAP_EXT];
        b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (k, v) in entries {
            b.extend_from_slice(&k[1..]);
            b.extend_from_slice(&v[1..]);
        }
        b
    };
    let old_scan = |b: &[u8]| b.iter().any(|&x| x == RECORD_EXT || x == MAP_EXT);
    let limits = Limits::default();
    let check = |what: &str, bytes: &[u8], want: bool| {
        assert_eq!(needs_bytes(bytes, &limits).unwrap(), want, "{what}");
        assert_eq!(
            term_needs_bytes(&bytes[1..], &limits).unwrap(),
            want,
            "{what}, no version byte"
        );
    };
    let ordinary = vec![
        (
            "floats in a list",
            Term::from(List::from(vec![float(0.0), float(-0.0), float(1.5)])),
        ),
        ("a map with one float key", map(vec![(float(2.5), int(1))])),
        (
            "a map with 0.0 as a key",
            map(vec![(float(0.0), int(1)), (int(0), int(2))]),
        ),
        (
            "a map with -0.0 as a key",
            map(vec![(float(-0.0), int(1)), (int(0), int(2))]),
        ),
        (
            "a map with {-0.0} as a key",
            map(vec![(Term::from(Tuple::from(vec![float(-0.0)])), int(1))]),
        ),
        (
            "-0.0 as a value",
            map(vec![(float(0.0), float(-0.0)), (atom("a"), float(0.0))]),
        ),
        (
            "a binary with bytes 67 and 116",
            Term::from(Binary::from(vec![67, 116, 0])),
        ),
        ("an atom with C and t", atom("Ct")),
        (
            "nested maps",
            map(vec![(atom("m"), map(vec![(int(116), map(vec![]))]))]),
        ),
        (
            "a map as a key",
            map(vec![(map(vec![(int(67), int(1))]), int(2))]),
        ),
    ];
    for (what, t) in ordinary
        .iter()
        .cloned()
        .chain(samples().into_iter().map(|t| ("sample", t)))
    {
        let bytes = encode(&t);
        check(what, &bytes, false);
    }
    let flagged_by_old = ordinary
        .iter()
        .filter(|(_, t)| old_scan(&encode(t)))
        .count();
    assert!(flagged_by_old >= 8, "the old scan flagged {flagged_by_old}");

    let e = |t: Term| encode(&t);
    let zeros = map_bytes(&[(e(float(0.0)), e(int(1))), (e(float(-0.0)), e(int(2)))]);
    let tuple_zeros = map_bytes(&[
        (e(Term::from(Tuple::from(vec![float(0.0)]))), e(int(1))),
        (e(Term::from(Tuple::from(vec![float(-0.0)]))), e(int(2))),
    ]);
    // FLOAT_EXT keys that eetf's f32 parse makes one.
    let float_ext = |text: &str| {
        let mut b = vec![VERSION_MAGIC, FLOAT_EXT];
        let mut digits = text.as_bytes().to_vec();
        digits.resize(FLOAT_EXT_LEN, 0);
        b.extend_from_slice(&digits);
        b
    };
    let old_floats = map_bytes(&[
        (float_ext("1.00000000000000000000e-01"), e(int(1))),
        (float_ext("1.00000000100000000000e-01"), e(int(2))),
    ]);
    // records:create(geo, pt, [{x, 1}], #{is_exported => true}), as OTP 29 encodes it.
    let record = vec![
        VERSION_MAGIC,
        RECORD_EXT,
        0,
        0,
        0,
        1,
        1,
        119,
        3,
        b'g',
        b'e',
        b'o',
        119,
        2,
        b'p',
        b't',
        119,
        1,
        b'x',
        97,
        1,
    ];
    let in_list = |inner: &[u8]| {
        let mut b = vec![VERSION_MAGIC, LIST_EXT, 0, 0, 0, 2, SMALL_INTEGER_EXT, 1];
        b.extend_from_slice(&inner[1..]);
        b.push(NIL_EXT);
        b
    };
    let as_key = |inner: &[u8]| map_bytes(&[(inner.to_vec(), e(atom("v")))]);
    let needs = vec![
        ("0.0 and -0.0 keys", zeros.clone()),
        ("{0.0} and {-0.0} keys", tuple_zeros.clone()),
        ("old floats eetf makes one", old_floats),
        ("a record", record.clone()),
        ("a record in a list", in_list(&record)),
        ("a record as a map key", as_key(&record)),
        ("merging keys in a list", in_list(&zeros)),
        ("merging keys in a map key", as_key(&tuple_zeros)),
    ];
    for (what, bytes) in &needs {
        check(what, bytes, true);
        assert!(decode(bytes, &limits).is_err(), "{what}: decode refuses it");
    }
}
