//! Terms as text: Erlang and Elixir term syntax, parsed into terms and printed back, and a
//! JSON rendering. Used by the command-line client (`kvnode call` and friends).
//!
//! This file holds the agreed interface; the implementation lands with issue 13.

use erl_dist::term::Term;
use std::fmt;

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
    let _ = (text, syntax);
    Err(SyntaxError {
        column: 1,
        message: "term syntax not implemented yet".into(),
    })
}

/// Prints `term` in `syntax`, such that [`parse`] reads it back to an equal term (pids, refs,
/// ports and funs print in their `<...>`/`#Ref<...>`/`#Fun<...>` forms, which only pids parse).
pub fn print(term: &Term, syntax: Syntax) -> String {
    let _ = syntax;
    format!("{term}")
}

/// `term` as one JSON document, by the mapping documented in the README.
pub fn to_json(term: &Term) -> String {
    format!("{:?}", format!("{term}"))
}
