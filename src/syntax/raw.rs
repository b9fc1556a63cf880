//! Printing straight from external term format: every term kvnode's validator accepts,
//! including those no `eetf::Term` can hold (OTP 29 native records, maps with both `0.0`
//! and `-0.0` as keys).
//!
//! The bytes are read (iteratively) into an arena: every subterm that eetf can hold and that
//! holds nothing eetf cannot is decoded whole and kept as one leaf, printed by the term
//! printers ([`super::print()`], [`super::to_json()`]); only the tuples, lists, maps and
//! records above a record or a merging map become arena nodes, printed here by the same
//! rules. A term eetf can hold is therefore one leaf and prints exactly as the decoded term
//! does. Map keys are sorted by Erlang's term order extended to records (after tuples,
//! before maps; by module, name, exported flag (not exported first), arity, field names,
//! then values, as OTP 29 compares them).
//!
//! Nothing here recurses with the depth of the term, except comparing map keys, as deep as
//! maps nest inside map keys (bounded by the validator).

use super::Syntax;
use super::json::{atom_key, json_str, to_json, utf8_key};
use super::order::{Sorter, rank2};
use super::print::{print, write_atom, write_kw};
use crate::etf::{self, Limits, TermError};
use eetf::Term;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

type Id = usize;

/// One node of the arena.
enum Node {
    /// A term eetf holds as it is.
    Leaf(Term),
    Tuple(Vec<Id>),
    /// Elements and the tail, unless `[]`.
    List(Vec<Id>, Option<Id>),
    /// Entries in the order of the bytes.
    Map(Vec<(Id, Id)>),
    Record {
        module: String,
        name: String,
        exported: bool,
        fields: Vec<(String, Id)>,
    },
}

/// A term read so far: bytes still to decode (nothing eetf cannot hold inside) or an arena
/// node. `risk`: it holds what can make map keys
/// merge in eetf (see `etf::Traits::key_may_merge`).
#[derive(Clone, Copy)]
enum Child {
    Plain {
        start: usize,
        end: usize,
        risk: bool,
    },
    Node(Id, bool),
}

enum Kind {
    Tuple,
    /// `tail`: the tail is being read (the elements are done).
    List {
        tail: bool,
    },
    Map,
    Record {
        module: String,
        name: String,
        exported: bool,
        arity: usize,
    },
    /// A fun's free variables; the bytes of the fun without them are `stripped`.
    Fun {
        stripped: Vec<u8>,
    },
}

struct Frame {
    kind: Kind,
    start: usize,
    left: u64,
    children: Vec<Child>,
}

/// What [`Reader::open`] found: a finished child and the position after it, or a frame
/// opened and the position of its first child.
type Opened = Result<(Child, usize), (Frame, usize)>;

/// A map's entries, keys in term order.
type Sorted = Rc<[(Id, Id)]>;

struct Arena {
    nodes: Vec<Node>,
    root: Id,
}

struct Reader<'b> {
    buf: &'b [u8],
    limits: Limits,
    nodes: Vec<Node>,
    /// Test hook: make every tuple, list, map node (to test the node printers on every term).
    #[cfg(test)]
    all_nodes: bool,
}

fn trunc(offset: usize) -> TermError {
    TermError::Truncated { offset, needed: 1 }
}

impl<'b> Reader<'b> {
    fn bytes(&self, at: usize, n: usize) -> Result<&'b [u8], TermError> {
        self.buf.get(at..at + n).ok_or(trunc(at))
    }

    fn u32(&self, at: usize) -> Result<u32, TermError> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Length and merge risk of the (validated) term at `at`, walked by the validator.
    fn measure(&self, at: usize) -> Result<(usize, bool), TermError> {
        let rest = self.buf.get(at..).ok_or(trunc(at))?;
        etf::measure_term(rest, &self.limits)
    }

    /// Decodes the term in `start..end` (no version byte) with the checked decoder.
    fn decode(&self, start: usize, end: usize) -> Result<Term, TermError> {
        let mut v = Vec::with_capacity(end - start + 1);
        v.push(etf::VERSION_MAGIC);
        v.extend_from_slice(self.buf.get(start..end).ok_or(trunc(start))?);
        etf::decode_exact(&v, &self.limits)
    }

    fn atom_name(&self, at: usize) -> Result<(String, usize), TermError> {
        let (len, _) = self.measure(at)?;
        match self.decode(at, at + len)? {
            Term::Atom(a) => Ok((a.name, at + len)),
            _ => Err(TermError::UnexpectedTag {
                expected: "atom",
                tag: self.buf.get(at).copied().unwrap_or(0),
                offset: at,
            }),
        }
    }

    fn push(&mut self, node: Node) -> Id {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node_of(&mut self, child: Child) -> Result<Id, TermError> {
        Ok(match child {
            Child::Node(id, _) => id,
            Child::Plain { start, end, .. } => {
                let t = self.decode(start, end)?;
                self.push(Node::Leaf(t))
            }
        })
    }

    /// Starts the term at `at`: a finished child and the position after it, or a frame.
    fn open(&mut self, at: usize) -> Result<Opened, TermError> {
        let tag = *self.buf.get(at).ok_or(trunc(at))?;
        let frame = |kind, left, next| {
            Ok(Err((
                Frame {
                    kind,
                    start: at,
                    left,
                    children: Vec::new(),
                },
                next,
            )))
        };
        match tag {
            etf::SMALL_TUPLE_EXT => {
                let n = *self.buf.get(at + 1).ok_or(trunc(at + 1))?;
                frame(Kind::Tuple, n.into(), at + 2)
            }
            etf::LARGE_TUPLE_EXT => frame(Kind::Tuple, self.u32(at + 1)?.into(), at + 5),
            etf::LIST_EXT => frame(Kind::List { tail: false }, self.u32(at + 1)?.into(), at + 5),
            etf::MAP_EXT => frame(Kind::Map, 2 * u64::from(self.u32(at + 1)?), at + 5),
            etf::RECORD_EXT => {
                let arity = self.u32(at + 1)?;
                let flags = *self.buf.get(at + 5).ok_or(trunc(at + 5))?;
                let (module, next) = self.atom_name(at + 6)?;
                let (name, next) = self.atom_name(next)?;
                let kind = Kind::Record {
                    module,
                    name,
                    exported: flags & 1 == 1,
                    arity: arity as usize,
                };
                frame(kind, 2 * u64::from(arity), next)
            }
            etf::NEW_FUN_EXT | etf::FUN_EXT => {
                // NEW_FUN_EXT: Size, Arity, Uniq, Index, NumFree, then Module, OldIndex,
                // OldUniq, Pid. FUN_EXT: NumFree, then Pid, Module, Index, Uniq.
                let (numfree_at, fixed) = if tag == etf::NEW_FUN_EXT {
                    (at + 1 + 4 + 1 + 16 + 4, 4 + 1 + 16 + 4 + 4)
                } else {
                    (at + 1, 4)
                };
                let free = self.u32(numfree_at)?;
                let mut next = at + 1 + fixed;
                for _ in 0..4 {
                    next += self.measure(next)?.0;
                }
                let mut stripped = Vec::with_capacity(next - at);
                stripped.push(tag);
                stripped.extend_from_slice(self.bytes(at + 1, next - at - 1)?);
                let free_at = numfree_at - at;
                stripped[free_at..free_at + 4].copy_from_slice(&[0; 4]);
                if tag == etf::NEW_FUN_EXT {
                    let size = (stripped.len() - 1) as u32;
                    stripped[1..5].copy_from_slice(&size.to_be_bytes());
                }
                frame(Kind::Fun { stripped }, free.into(), next)
            }
            _ => {
                let (len, risk) = self.measure(at)?;
                Ok(Ok((
                    Child::Plain {
                        start: at,
                        end: at + len,
                        risk,
                    },
                    at + len,
                )))
            }
        }
    }

    /// Closes `f`, which ends just before `end`.
    fn close(&mut self, f: Frame, end: usize) -> Result<Child, TermError> {
        let risk = f.children.iter().any(|c| match c {
            Child::Plain { risk, .. } | Child::Node(_, risk) => *risk,
        });
        let inner_node = f.children.iter().any(|c| matches!(c, Child::Node(..)));
        let keys_risk = matches!(f.kind, Kind::Map)
            && f.children.iter().step_by(2).any(|c| match c {
                Child::Plain { risk, .. } | Child::Node(_, risk) => *risk,
            });
        #[cfg(test)]
        let forced = self.all_nodes && !matches!(f.kind, Kind::Fun { .. });
        #[cfg(not(test))]
        let forced = false;
        let special = inner_node || keys_risk || forced || matches!(f.kind, Kind::Record { .. });
        if !special {
            return Ok(Child::Plain {
                start: f.start,
                end,
                risk,
            });
        }
        let mut ids = Vec::with_capacity(f.children.len());
        for &c in &f.children {
            ids.push(self.node_of(c)?);
        }
        let node = match f.kind {
            Kind::Tuple => Node::Tuple(ids),
            Kind::List { tail } => {
                let last = if tail { ids.pop() } else { None };
                Node::List(ids, last)
            }
            Kind::Map => Node::Map(ids.chunks(2).map(|p| (p[0], p[1])).collect()),
            Kind::Record {
                module,
                name,
                exported,
                arity,
            } => {
                let mut fields = Vec::with_capacity(arity);
                for (i, c) in f.children.iter().take(arity).enumerate() {
                    let name = match self.nodes.get(ids[i]) {
                        Some(Node::Leaf(Term::Atom(a))) => a.name.clone(),
                        _ => {
                            let at = match c {
                                Child::Plain { start, .. } => *start,
                                _ => f.start,
                            };
                            return Err(TermError::UnexpectedTag {
                                expected: "record field name",
                                tag: self.buf.get(at).copied().unwrap_or(0),
                                offset: at,
                            });
                        }
                    };
                    fields.push((name, ids.get(arity + i).copied().unwrap_or(0)));
                }
                Node::Record {
                    module,
                    name,
                    exported,
                    fields,
                }
            }
            Kind::Fun { stripped } => {
                // Funs print without their free variables: the fun without them is a leaf.
                let mut v = Vec::with_capacity(stripped.len() + 1);
                v.push(etf::VERSION_MAGIC);
                v.extend_from_slice(&stripped);
                Node::Leaf(etf::decode_exact(&v, &self.limits)?)
            }
        };
        Ok(Child::Node(self.push(node), risk))
    }

    /// Reads the validated, version-prefixed term filling `self.buf`.
    fn read(mut self) -> Result<Arena, TermError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut at = 1;
        let mut done: Option<Child> = None;
        loop {
            if let Some(child) = done.take() {
                match stack.last_mut() {
                    None => {
                        let root = self.node_of(child)?;
                        return Ok(Arena {
                            nodes: self.nodes,
                            root,
                        });
                    }
                    Some(f) => f.children.push(child),
                }
            }
            let Some(f) = stack.last_mut() else {
                match self.open(at)? {
                    Ok((child, next)) => {
                        done = Some(child);
                        at = next;
                    }
                    Err((frame, next)) => {
                        stack.push(frame);
                        at = next;
                    }
                }
                continue;
            };
            if f.left > 0 {
                f.left -= 1;
                match self.open(at)? {
                    Ok((child, next)) => {
                        done = Some(child);
                        at = next;
                    }
                    Err((frame, next)) => {
                        stack.push(frame);
                        at = next;
                    }
                }
                continue;
            }
            if let Kind::List { tail: false } = f.kind {
                // The elements are done: `[]` ends a proper list, anything else is the tail.
                if self.buf.get(at) == Some(&etf::NIL_EXT) {
                    at += 1;
                } else {
                    f.kind = Kind::List { tail: true };
                    f.left = 1;
                    continue;
                }
            }
            let Some(f) = stack.pop() else { continue };
            done = Some(self.close(f, at)?);
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_terms: usize::MAX,
        max_depth: etf::configured_depth(),
        ..Limits::default()
    }
}

fn arena(etf: &[u8], #[allow(unused)] all_nodes: bool) -> Result<Arena, TermError> {
    let limits = limits();
    let len = etf::validate_versioned(etf, &limits)?;
    if len != etf.len() {
        return Err(TermError::TrailingBytes {
            len,
            extra: etf.len() - len,
        });
    }
    Reader {
        buf: etf,
        limits,
        nodes: Vec::new(),
        #[cfg(test)]
        all_nodes,
    }
    .read()
}

/// Small integers, for the bytes of a `STRING_EXT` list compared with other lists.
static BYTES: LazyLock<Vec<Term>> = LazyLock::new(|| {
    (0..=255)
        .map(|b| Term::from(eetf::FixInteger::from(b)))
        .collect()
});

#[derive(Clone, Copy)]
enum Seq<'a> {
    Nodes(&'a [Id], Option<Id>),
    Terms(&'a [Term], Option<&'a Term>),
    Bytes(&'a [u8]),
}

/// A term (or the rest of a list) to compare.
#[derive(Clone, Copy)]
enum V<'a> {
    N(Id),
    T(&'a Term),
    Rest(Seq<'a>, usize),
}

enum Side<'a> {
    N(Id),
    T(&'a eetf::Map),
}

enum Elems<'a> {
    N(&'a [Id]),
    T(&'a [Term]),
}

enum Sh<'a> {
    Plain(&'a Term),
    Tuple(Elems<'a>),
    Record(Id),
    Map(Side<'a>),
    Nil,
    Cons(V<'a>, V<'a>),
}

impl Sh<'_> {
    fn rank(&self) -> u8 {
        match self {
            Sh::Plain(t) => rank2(t),
            Sh::Tuple(_) => 12,
            Sh::Record(_) => 13,
            Sh::Map(_) => 14,
            Sh::Nil => 16,
            Sh::Cons(..) => 18,
        }
    }
}

/// Sorts map keys of an arena (each map once, as [`Sorter`] does for terms).
struct Order<'a> {
    arena: &'a Arena,
    sorter: Sorter<'a>,
    sorted: RefCell<HashMap<Id, Sorted>>,
}

impl<'a> Order<'a> {
    fn new(arena: &'a Arena) -> Self {
        Order {
            arena,
            sorter: Sorter::new(),
            sorted: RefCell::new(HashMap::new()),
        }
    }

    fn entries(&self, id: Id) -> Sorted {
        if let Some(e) = self.sorted.borrow().get(&id) {
            return e.clone();
        }
        let mut v = match &self.arena.nodes[id] {
            Node::Map(e) => e.clone(),
            _ => Vec::new(),
        };
        v.sort_by(|a, b| self.compare(V::N(a.0), V::N(b.0)));
        let e: Sorted = v.into();
        self.sorted.borrow_mut().insert(id, e.clone());
        e
    }

    fn seq(&self, s: Seq<'a>, i: usize) -> Sh<'a> {
        let (len, head) = match s {
            Seq::Nodes(n, _) => (n.len(), n.get(i).map(|&id| V::N(id))),
            Seq::Terms(t, _) => (t.len(), t.get(i).map(V::T)),
            Seq::Bytes(b) => (b.len(), b.get(i).map(|&x| V::T(&BYTES[usize::from(x)]))),
        };
        match head {
            Some(h) if i < len => Sh::Cons(h, V::Rest(s, i + 1)),
            _ => match s {
                Seq::Nodes(_, Some(t)) => self.shape(V::N(t)),
                Seq::Terms(_, Some(t)) => Sh::Plain(t),
                _ => Sh::Nil,
            },
        }
    }

    fn shape(&self, v: V<'a>) -> Sh<'a> {
        match v {
            V::T(t) => Sh::Plain(t),
            V::Rest(s, i) => self.seq(s, i),
            V::N(id) => match &self.arena.nodes[id] {
                Node::Leaf(t) => Sh::Plain(t),
                Node::Tuple(e) => Sh::Tuple(Elems::N(e)),
                Node::Record { .. } => Sh::Record(id),
                Node::Map(_) => Sh::Map(Side::N(id)),
                Node::List(e, tail) => self.seq(Seq::Nodes(e, *tail), 0),
            },
        }
    }

    /// The structure of a plain term, to compare it with a node of its rank.
    fn open(&self, t: &'a Term) -> Sh<'a> {
        match t {
            Term::Tuple(x) => Sh::Tuple(Elems::T(&x.elements)),
            Term::Map(m) => Sh::Map(Side::T(m)),
            Term::List(l) => self.seq(Seq::Terms(&l.elements, None), 0),
            Term::ImproperList(l) => self.seq(Seq::Terms(&l.elements, Some(&l.last)), 0),
            Term::ByteList(b) => self.seq(Seq::Bytes(&b.bytes), 0),
            _ => Sh::Plain(t),
        }
    }

    fn map_entries(&self, side: &Side<'a>) -> Vec<(V<'a>, V<'a>)> {
        match side {
            Side::N(id) => self
                .entries(*id)
                .iter()
                .map(|&(k, v)| (V::N(k), V::N(v)))
                .collect(),
            Side::T(m) => self
                .sorter
                .entries(m)
                .iter()
                .map(|&(k, v)| (V::T(k), V::T(v)))
                .collect(),
        }
    }

    fn map_len(&self, side: &Side<'a>) -> usize {
        match side {
            Side::N(id) => match &self.arena.nodes[*id] {
                Node::Map(e) => e.len(),
                _ => 0,
            },
            Side::T(m) => m.map.len(),
        }
    }

    /// Erlang's term order (exact, as [`super::compare`]), native records included.
    fn compare(&self, a: V<'a>, b: V<'a>) -> Ordering {
        let mut stack = vec![(a, b)];
        while let Some((x, y)) = stack.pop() {
            let (mut sx, mut sy) = (self.shape(x), self.shape(y));
            if let (Sh::Plain(p), Sh::Plain(q)) = (&sx, &sy) {
                let o = self.sorter.compare(p, q);
                if o != Ordering::Equal {
                    return o;
                }
                continue;
            }
            let o = sx.rank().cmp(&sy.rank());
            if o != Ordering::Equal {
                return o;
            }
            if let Sh::Plain(p) = sx {
                sx = self.open(p);
            }
            if let Sh::Plain(q) = sy {
                sy = self.open(q);
            }
            let o = match (sx, sy) {
                (Sh::Tuple(p), Sh::Tuple(q)) => {
                    let p: Vec<V<'a>> = match p {
                        Elems::N(e) => e.iter().map(|&i| V::N(i)).collect(),
                        Elems::T(e) => e.iter().map(V::T).collect(),
                    };
                    let q: Vec<V<'a>> = match q {
                        Elems::N(e) => e.iter().map(|&i| V::N(i)).collect(),
                        Elems::T(e) => e.iter().map(V::T).collect(),
                    };
                    let o = p.len().cmp(&q.len());
                    if o == Ordering::Equal {
                        stack.extend(p.into_iter().zip(q).rev());
                    }
                    o
                }
                (Sh::Record(p), Sh::Record(q)) => {
                    let (
                        Node::Record {
                            module: pm,
                            name: pn,
                            exported: pe,
                            fields: pf,
                        },
                        Node::Record {
                            module: qm,
                            name: qn,
                            exported: qe,
                            fields: qf,
                        },
                    ) = (&self.arena.nodes[p], &self.arena.nodes[q])
                    else {
                        return Ordering::Equal;
                    };
                    let o = pm
                        .cmp(qm)
                        .then_with(|| pn.cmp(qn))
                        .then(pe.cmp(qe))
                        .then(pf.len().cmp(&qf.len()))
                        .then_with(|| pf.iter().map(|f| &f.0).cmp(qf.iter().map(|f| &f.0)));
                    if o == Ordering::Equal {
                        stack.extend(pf.iter().zip(qf).rev().map(|(a, b)| (V::N(a.1), V::N(b.1))));
                    }
                    o
                }
                (Sh::Map(p), Sh::Map(q)) => {
                    let o = self.map_len(&p).cmp(&self.map_len(&q));
                    if o != Ordering::Equal {
                        return o;
                    }
                    let (ep, eq) = (self.map_entries(&p), self.map_entries(&q));
                    for (kp, kq) in ep.iter().zip(&eq) {
                        let o = self.compare(kp.0, kq.0);
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    stack.extend(ep.iter().zip(&eq).rev().map(|(a, b)| (a.1, b.1)));
                    Ordering::Equal
                }
                (Sh::Nil, Sh::Nil) => Ordering::Equal,
                (Sh::Cons(hp, tp), Sh::Cons(hq, tq)) => {
                    stack.push((tp, tq));
                    stack.push((hp, hq));
                    Ordering::Equal
                }
                // Equal ranks make equal shapes; plain terms of one rank compare whole.
                (Sh::Plain(p), Sh::Plain(q)) => self.sorter.compare(p, q),
                _ => Ordering::Equal,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

enum Job<'a> {
    N(Id, Syntax),
    T(&'a Term, Syntax),
    S(&'static str),
    Kw(&'a str),
    /// A JSON object key and its colon.
    Key(&'a str),
}

/// A list element, or a tail, while printing: an arena node or a term inside a leaf.
#[derive(Clone, Copy)]
enum Item<'a> {
    N(Id),
    T(&'a Term),
}

/// The term an item is, if it is one (a leaf).
fn item_term<'a>(arena: &'a Arena, item: &Item<'a>) -> Option<&'a Term> {
    match *item {
        Item::N(i) => match &arena.nodes[i] {
            Node::Leaf(t) => Some(t),
            _ => None,
        },
        Item::T(t) => Some(t),
    }
}

/// The elements of a list with every tail that is a list spliced in (`parse::cons`), and
/// the tail that is not.
fn flatten<'a>(
    arena: &'a Arena,
    e: &'a [Id],
    tail: Option<Id>,
) -> (Vec<Item<'a>>, Option<Item<'a>>) {
    let mut items: Vec<Item<'a>> = e.iter().map(|&i| Item::N(i)).collect();
    let mut tail = tail.map(Item::N);
    while let Some(t) = tail {
        match t {
            Item::N(i) => match &arena.nodes[i] {
                Node::List(e, t) => {
                    items.extend(e.iter().map(|&i| Item::N(i)));
                    tail = t.map(Item::N);
                }
                Node::Leaf(l)
                    if matches!(l, Term::List(_) | Term::ByteList(_) | Term::ImproperList(_)) =>
                {
                    tail = Some(Item::T(l));
                }
                _ => break,
            },
            Item::T(Term::List(l)) => {
                items.extend(l.elements.iter().map(Item::T));
                tail = None;
            }
            Item::T(Term::ByteList(b)) => {
                items.extend(b.bytes.iter().map(|&x| Item::T(&BYTES[usize::from(x)])));
                tail = None;
            }
            Item::T(Term::ImproperList(l)) => {
                items.extend(l.elements.iter().map(Item::T));
                tail = Some(Item::T(&l.last));
            }
            Item::T(_) => break,
        }
    }
    (items, tail)
}

/// The key and value of a keyword-list element (`{atom, value}`).
fn keyword<'a>(arena: &'a Arena, item: &Item<'a>) -> Option<(&'a str, Job<'a>)> {
    let t = match *item {
        Item::N(id) => match &arena.nodes[id] {
            Node::Tuple(e) if e.len() == 2 => {
                return match &arena.nodes[e[0]] {
                    Node::Leaf(Term::Atom(a)) => Some((&a.name, Job::N(e[1], Syntax::Elixir))),
                    _ => None,
                };
            }
            Node::Leaf(t) => t,
            _ => return None,
        },
        Item::T(t) => t,
    };
    match t {
        Term::Tuple(t) => match &t.elements[..] {
            [Term::Atom(a), v] => Some((&a.name, Job::T(v, Syntax::Elixir))),
            _ => None,
        },
        _ => None,
    }
}

fn leaf_atom(arena: &Arena, id: Id) -> Option<&str> {
    match &arena.nodes[id] {
        Node::Leaf(Term::Atom(a)) => Some(&a.name),
        _ => None,
    }
}

/// Pushes `items` to be printed in order, separated by `sep`.
fn seq<'a>(
    jobs: &mut Vec<Job<'a>>,
    items: impl DoubleEndedIterator<Item = Job<'a>> + ExactSizeIterator,
    sep: &'static str,
) {
    let n = items.len();
    for (i, j) in items.rev().enumerate() {
        jobs.push(j);
        if i + 1 < n {
            jobs.push(Job::S(sep));
        }
    }
}

fn print_arena<'a>(arena: &'a Arena, syntax: Syntax) -> String {
    if let Node::Leaf(t) = &arena.nodes[arena.root] {
        return print(t, syntax);
    }
    let order = Order::new(arena);
    let mut out = String::new();
    let mut jobs: Vec<Job<'a>> = vec![Job::N(arena.root, syntax)];
    while let Some(job) = jobs.pop() {
        let (id, syntax) = match job {
            Job::S(s) => {
                out.push_str(s);
                continue;
            }
            Job::Kw(k) => {
                write_kw(&mut out, k);
                continue;
            }
            Job::Key(k) => {
                // A record's field name.
                write_atom(&mut out, k, Syntax::Erlang);
                continue;
            }
            Job::T(t, syntax) => {
                out.push_str(&print(t, syntax));
                continue;
            }
            Job::N(id, syntax) => (id, syntax),
        };
        let erlang = syntax == Syntax::Erlang;
        let sep = if erlang { "," } else { ", " };
        match &arena.nodes[id] {
            Node::Leaf(t) => out.push_str(&print(t, syntax)),
            Node::Tuple(e) => {
                out.push('{');
                jobs.push(Job::S("}"));
                seq(&mut jobs, e.iter().map(|&i| Job::N(i, syntax)), sep);
            }
            Node::List(e, tail) => {
                // A tail that is a list is spliced in, as the term printer does.
                let (items, tail) = flatten(arena, e, *tail);
                let job = |item: &Item<'a>| match *item {
                    Item::N(i) => Job::N(i, syntax),
                    Item::T(t) => Job::T(t, syntax),
                };
                match (&items[..], tail) {
                    ([], None) => out.push_str("[]"),
                    ([], Some(t)) => jobs.push(job(&t)),
                    // Only integers (a charlist, maybe): as the term printer prints them.
                    (_, None)
                        if items
                            .iter()
                            .all(|i| matches!(item_term(arena, i), Some(Term::FixInteger(_)))) =>
                    {
                        let ints: Vec<Term> = items
                            .iter()
                            .filter_map(|i| item_term(arena, i).cloned())
                            .collect();
                        out.push_str(&print(&Term::from(eetf::List::from(ints)), syntax));
                    }
                    (_, None) if !erlang && items.iter().all(|i| keyword(arena, i).is_some()) => {
                        out.push('[');
                        jobs.push(Job::S("]"));
                        for (n, i) in items.iter().enumerate().rev() {
                            if let Some((k, v)) = keyword(arena, i) {
                                jobs.push(v);
                                jobs.push(Job::Kw(k));
                            }
                            if n > 0 {
                                jobs.push(Job::S(sep));
                            }
                        }
                    }
                    (_, tail) => {
                        out.push('[');
                        jobs.push(Job::S("]"));
                        if let Some(t) = tail {
                            jobs.push(job(&t));
                            jobs.push(Job::S(if erlang { "|" } else { " | " }));
                        }
                        seq(&mut jobs, items.iter().map(job), sep);
                    }
                }
            }
            Node::Map(_) => {
                out.push_str(if erlang { "#{" } else { "%{" });
                jobs.push(Job::S("}"));
                let entries = order.entries(id);
                let kw = !erlang && entries.iter().all(|&(k, _)| leaf_atom(arena, k).is_some());
                for (n, &(k, v)) in entries.iter().enumerate().rev() {
                    jobs.push(Job::N(v, syntax));
                    match leaf_atom(arena, k) {
                        Some(name) if kw => jobs.push(Job::Kw(name)),
                        _ => {
                            jobs.push(Job::S(" => "));
                            jobs.push(Job::N(k, syntax));
                        }
                    }
                    if n > 0 {
                        jobs.push(Job::S(sep));
                    }
                }
            }
            Node::Record {
                module,
                name,
                fields,
                ..
            } => {
                // As OTP 29's io_lib prints it, `#geo:pt{x = 1,y = 2.5}`; Elixir 1.20's
                // `inspect` prints records the same way, fields in Erlang syntax too.
                out.push('#');
                write_atom(&mut out, module, Syntax::Erlang);
                out.push(':');
                write_atom(&mut out, name, Syntax::Erlang);
                out.push('{');
                jobs.push(Job::S("}"));
                for (n, (f, v)) in fields.iter().enumerate().rev() {
                    jobs.push(Job::N(*v, Syntax::Erlang));
                    jobs.push(Job::S(" = "));
                    jobs.push(Job::Key(f));
                    if n > 0 {
                        jobs.push(Job::S(","));
                    }
                }
            }
        }
    }
    out
}

fn json_arena(arena: &Arena) -> String {
    if let Node::Leaf(t) = &arena.nodes[arena.root] {
        return to_json(t);
    }
    let order = Order::new(arena);
    let mut out = String::new();
    let mut jobs = vec![Job::N(arena.root, Syntax::Erlang)];
    while let Some(job) = jobs.pop() {
        let id = match job {
            Job::S(s) => {
                out.push_str(s);
                continue;
            }
            Job::Key(k) | Job::Kw(k) => {
                json_str(&mut out, k);
                out.push(':');
                continue;
            }
            Job::T(t, _) => {
                out.push_str(&to_json(t));
                continue;
            }
            Job::N(id, _) => id,
        };
        let n = |i: &Id| Job::N(*i, Syntax::Erlang);
        match &arena.nodes[id] {
            Node::Leaf(t) => out.push_str(&to_json(t)),
            Node::Tuple(e) => {
                out.push_str("{\"$tuple\":[");
                jobs.push(Job::S("]}"));
                seq(&mut jobs, e.iter().map(n), ",");
            }
            Node::List(e, None) => {
                out.push('[');
                jobs.push(Job::S("]"));
                seq(&mut jobs, e.iter().map(n), ",");
            }
            Node::List(e, Some(t)) => {
                out.push_str("{\"$improper_list\":{\"elements\":[");
                jobs.push(Job::S("}}"));
                jobs.push(Job::N(*t, Syntax::Erlang));
                jobs.push(Job::S("],\"tail\":"));
                seq(&mut jobs, e.iter().map(n), ",");
            }
            Node::Map(_) => {
                let mut entries = order.entries(id).to_vec();
                let key = |k: Id, f: fn(&Term) -> Option<&str>| match &arena.nodes[k] {
                    Node::Leaf(t) => f(t),
                    _ => None,
                };
                let utf8 = |k: Id| key(k, utf8_key);
                let atom = |k: Id| key(k, atom_key);
                let named: Option<Vec<(&str, Id)>> =
                    if entries.iter().all(|&(k, _)| utf8(k).is_some()) {
                        entries.sort_by(|a, b| utf8(a.0).cmp(&utf8(b.0)));
                        out.push('{');
                        jobs.push(Job::S("}"));
                        Some(
                            entries
                                .iter()
                                .map(|&(k, v)| (utf8(k).unwrap_or_default(), v))
                                .collect(),
                        )
                    } else if entries.iter().all(|&(k, _)| atom(k).is_some()) {
                        out.push_str("{\"$atom_keys\":{");
                        jobs.push(Job::S("}}"));
                        Some(
                            entries
                                .iter()
                                .map(|&(k, v)| (atom(k).unwrap_or_default(), v))
                                .collect(),
                        )
                    } else {
                        None
                    };
                match named {
                    Some(pairs) => {
                        for (i, (k, v)) in pairs.into_iter().enumerate().rev() {
                            jobs.push(Job::N(v, Syntax::Erlang));
                            jobs.push(Job::Key(k));
                            if i > 0 {
                                jobs.push(Job::S(","));
                            }
                        }
                    }
                    None => {
                        out.push_str("{\"$map\":[");
                        jobs.push(Job::S("]}"));
                        for (i, &(k, v)) in entries.iter().enumerate().rev() {
                            jobs.push(Job::S("]"));
                            jobs.push(Job::N(v, Syntax::Erlang));
                            jobs.push(Job::S(","));
                            jobs.push(Job::N(k, Syntax::Erlang));
                            jobs.push(Job::S("["));
                            if i > 0 {
                                jobs.push(Job::S(","));
                            }
                        }
                    }
                }
            }
            Node::Record {
                module,
                name,
                exported,
                fields,
            } => {
                out.push_str("{\"$record\":{\"module\":");
                json_str(&mut out, module);
                out.push_str(",\"name\":");
                json_str(&mut out, name);
                out.push_str(if *exported {
                    ",\"exported\":true,\"fields\":{"
                } else {
                    ",\"exported\":false,\"fields\":{"
                });
                jobs.push(Job::S("}}}"));
                for (i, (f, v)) in fields.iter().enumerate().rev() {
                    jobs.push(Job::N(*v, Syntax::Erlang));
                    jobs.push(Job::Key(f));
                    if i > 0 {
                        jobs.push(Job::S(","));
                    }
                }
            }
        }
    }
    out
}

/// See [`super::print_bytes()`].
pub(super) fn print_bytes(etf: &[u8], syntax: Syntax) -> Result<String, TermError> {
    Ok(print_arena(&arena(etf, false)?, syntax))
}

/// See [`super::json_bytes()`].
pub(super) fn json_bytes(etf: &[u8]) -> Result<String, TermError> {
    Ok(json_arena(&arena(etf, false)?))
}

/// Test hook: every tuple, list and map an arena node, so that the node printers (not the
/// term printers of the leaves) print every container.
#[cfg(test)]
pub(super) fn print_all_nodes(etf: &[u8], syntax: Option<Syntax>) -> Result<String, TermError> {
    let a = arena(etf, true)?;
    Ok(match syntax {
        Some(s) => print_arena(&a, s),
        None => json_arena(&a),
    })
}
