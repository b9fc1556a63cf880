//! Encoding terms: eetf's encoder with its one wrong case corrected.
//!
//! eetf 0.11 writes a proper list whose elements are all integers below 256 as STRING_EXT
//! (one byte per element), and its test lets negative integers through: `[-1, 104]` goes out
//! as `[255, 104]`, silently. Such a list can reach kvnode's encoder whenever a peer's term
//! is decoded and written again (a stored value taken on the decoding path, a `cas`
//! mismatch reply, an event, an exit reason). [`encode`] and [`fix`] rewrite each such list
//! as an improper list with a `[]` tail, which eetf writes element by element (LIST_EXT ...
//! NIL_EXT): byte for byte how OTP writes that proper list. The rewrite is made just before
//! encoding and never kept, so nothing else sees an improper list.

use eetf::{FixInteger, ImproperList, List, Map, Term};

/// Whether eetf would write `list` as STRING_EXT and get it wrong (an element below 0).
fn miswritten(list: &List) -> bool {
    let byte = |t: &Term| matches!(t, Term::FixInteger(FixInteger { value }) if *value < 0x100);
    let negative = |t: &Term| matches!(t, Term::FixInteger(FixInteger { value }) if *value < 0);
    !list.elements.is_empty()
        && list.elements.len() <= usize::from(u16::MAX)
        && list.elements.iter().all(byte)
        && list.elements.iter().any(negative)
}

/// Whether `term` holds a list eetf would write wrong (see the module docs). Walks the term
/// without recursion.
pub fn needs_fix(term: &Term) -> bool {
    let container = |t: &Term| {
        matches!(
            t,
            Term::List(_)
                | Term::ImproperList(_)
                | Term::Tuple(_)
                | Term::Map(_)
                | Term::InternalFun(_)
        )
    };
    // Most replies are a leaf or a tuple of leaves (`{:ok, "v"}`): answered without the
    // walk's allocation.
    match term {
        t if !container(t) => return false,
        Term::Tuple(t) if !t.elements.iter().any(container) => return false,
        _ => {}
    }
    let mut stack = vec![term];
    while let Some(t) = stack.pop() {
        match t {
            Term::List(l) => {
                if miswritten(l) {
                    return true;
                }
                stack.extend(l.elements.iter());
            }
            Term::ImproperList(l) => {
                stack.extend(l.elements.iter());
                stack.push(&l.last);
            }
            Term::Tuple(x) => stack.extend(x.elements.iter()),
            Term::Map(m) => {
                for (k, v) in &m.map {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Term::InternalFun(f) => {
                let (eetf::InternalFun::New { free_vars, .. }
                | eetf::InternalFun::Old { free_vars, .. }) = f.as_ref();
                stack.extend(free_vars.iter());
            }
            _ => {}
        }
    }
    false
}

/// Rewrites, in place, every list in `term` that eetf would write wrong as the improper list
/// with a `[]` tail that it writes right. Only for a term about to be encoded. Walks without
/// recursion.
pub fn fix(term: &mut Term) {
    if !needs_fix(term) {
        return;
    }
    let mut stack = vec![term];
    while let Some(t) = stack.pop() {
        if let Term::List(l) = t
            && miswritten(l)
        {
            let elements = std::mem::take(&mut l.elements);
            *t = Term::ImproperList(ImproperList {
                elements,
                last: Box::new(Term::List(List::nil())),
            });
        }
        match t {
            Term::List(l) => stack.extend(l.elements.iter_mut()),
            Term::ImproperList(l) => {
                stack.extend(l.elements.iter_mut());
                stack.push(&mut l.last);
            }
            Term::Tuple(x) => stack.extend(x.elements.iter_mut()),
            Term::Map(m) => {
                // Keys cannot change in place inside the map: a map whose keys need it is
                // rebuilt (keys only compare by value, and this one is about to be encoded).
                if m.map.keys().any(needs_fix) {
                    let pairs = std::mem::take(&mut m.map);
                    let mut rebuilt = std::collections::HashMap::with_capacity(pairs.len());
                    for (mut k, mut v) in pairs {
                        fix(&mut k);
                        fix(&mut v);
                        rebuilt.insert(k, v);
                    }
                    *m = Map::from(rebuilt);
                } else {
                    stack.extend(m.map.values_mut());
                }
            }
            Term::InternalFun(f) => {
                let (eetf::InternalFun::New { free_vars, .. }
                | eetf::InternalFun::Old { free_vars, .. }) = f.as_mut();
                stack.extend(free_vars.iter_mut());
            }
            _ => {}
        }
    }
}

/// Writes `term` in external format (version byte first) to `out`, correctly for every
/// term: as eetf's `Term::encode`, on a corrected copy when the term holds a list eetf would
/// write wrong.
pub fn encode<W: std::io::Write>(term: &Term, out: W) -> Result<(), eetf::EncodeError> {
    if needs_fix(term) {
        let mut fixed = term.clone();
        fix(&mut fixed);
        fixed.encode(out)
    } else {
        term.encode(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eetf::{Atom, Tuple};

    fn int(v: i32) -> Term {
        FixInteger::from(v).into()
    }

    fn list(v: Vec<Term>) -> Term {
        List::from(v).into()
    }

    fn roundtrip(t: &Term) -> Term {
        let mut bytes = Vec::new();
        encode(t, &mut bytes).expect("encode");
        Term::decode(bytes.as_slice()).expect("decode")
    }

    #[test]
    fn eetf_alone_truncates_negative_small_integer_lists() {
        // The defect this module exists for; if eetf fixes it, this fails and the module can go.
        let t = list(vec![int(-1), int(104)]);
        let mut bytes = Vec::new();
        t.encode(&mut bytes).expect("encode");
        let back = Term::decode(bytes.as_slice()).expect("decode");
        assert_ne!(back, t);
    }

    #[test]
    fn lists_with_negative_small_integers_survive_anywhere_in_a_term() {
        let bad = list(vec![int(-1), int(104)]);
        let cases = vec![
            bad.clone(),
            list(vec![int(-128), int(0), int(255)]),
            Tuple::from(vec![Atom::from("ok").into(), bad.clone()]).into(),
            list(vec![bad.clone(), list(vec![int(-5)])]),
            ImproperList::from((vec![bad.clone()], int(-1))).into(),
            Map::from([
                (bad.clone(), bad.clone()),
                (int(1), list(vec![int(-3), int(4)])),
            ])
            .into(),
            Map::from([(
                Tuple::from(vec![bad.clone()]).into(),
                Map::from([(bad.clone(), int(2))]).into(),
            )])
            .into(),
        ];
        for t in cases {
            assert!(needs_fix(&t), "{t}");
            assert_eq!(roundtrip(&t), t, "{t}");
        }
    }

    #[test]
    fn the_fixed_bytes_are_the_ones_otp_writes() {
        // OTP writes [-1, 104] as LIST_EXT, 2 elements: INTEGER_EXT -1, SMALL_INTEGER_EXT 104, NIL_EXT.
        let mut bytes = Vec::new();
        encode(&list(vec![int(-1), int(104)]), &mut bytes).expect("encode");
        assert_eq!(
            bytes,
            [131, 108, 0, 0, 0, 2, 98, 255, 255, 255, 255, 97, 104, 106]
        );
    }

    #[test]
    fn other_terms_encode_as_eetf_does() {
        for t in [
            list(vec![int(1), int(104)]),
            list(vec![int(-1), int(300)]),
            list(vec![]),
            int(-1),
            Tuple::from(vec![list(vec![int(0)])]).into(),
        ] {
            assert!(!needs_fix(&t), "{t}");
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            encode(&t, &mut ours).expect("encode");
            t.encode(&mut theirs).expect("encode");
            assert_eq!(ours, theirs, "{t}");
        }
    }
}
