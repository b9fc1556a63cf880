//! Terms on the command line: parsed from Erlang (or, with `--elixir`, Elixir) syntax by
//! [`crate::syntax`], printed back in the same syntax or as JSON; registered names, module
//! names and pids (`<0.B.C>`) as a script writes them.

use super::{Failure, Status};
use crate::cli::ClientOpts;
use crate::syntax::{self, Syntax};
use erl_dist::term::{Pid, Term};

/// Characters of a bad term shown on each side of the error column.
const ERROR_WINDOW: usize = 40;

/// The syntax the flags ask for.
pub fn syntax_of(opts: &ClientOpts) -> Syntax {
    if opts.elixir {
        Syntax::Elixir
    } else {
        Syntax::Erlang
    }
}

/// Parses a term argument; a syntax error is a usage error (status 2) that shows the column
/// with a caret under the text.
pub fn parse(text: &str, syntax: Syntax) -> Result<Term, Failure> {
    syntax::parse(text, syntax).map_err(|error| {
        Failure::new(
            Status::Usage,
            format!(
                "bad term at column {}: {}\n{}",
                error.column,
                error.message,
                caret(text, error.column)
            ),
        )
    })
}

/// `text` (a window of it around `column` when long) with a caret under `column`
/// (1-based, in characters).
pub fn caret(text: &str, column: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(ERROR_WINDOW);
    let end = (at + ERROR_WINDOW).min(chars.len());
    let lead = if start > 0 { "..." } else { "" };
    let tail = if end < chars.len() { "..." } else { "" };
    let shown: String = chars[start..end]
        .iter()
        .map(|c| if c.is_control() { ' ' } else { *c })
        .collect();
    let pad = " ".repeat(lead.len() + (at - start));
    format!("  {lead}{shown}{tail}\n  {pad}^")
}

/// `term` as the command prints it: in the chosen syntax, or JSON with `--json`.
pub fn render(term: &Term, opts: &ClientOpts) -> String {
    if opts.json {
        syntax::to_json(term)
    } else {
        syntax::print(term, syntax_of(opts))
    }
}

/// A term given as external term format (version byte first), as [`render`] prints it:
/// also the terms no decoded term can hold (OTP 29 native records, maps with both `0.0` and
/// `-0.0` as keys), printed straight from the bytes ([`syntax::print_bytes`]).
/// Errors: why the bytes do not print.
pub fn render_bytes(etf: &[u8], opts: &ClientOpts) -> Result<String, String> {
    let (json, syntax) = (opts.json, syntax_of(opts));
    let printed = on_term_stack(move || {
        if json {
            syntax::json_bytes(etf)
        } else {
            syntax::print_bytes(etf, syntax)
        }
    });
    match printed {
        Some(result) => result.map_err(|e| e.to_string()),
        None => Err("the printer failed".to_owned()),
    }
}

/// Runs `f` on a thread with the stack a term `--max-term-depth` deep needs
/// (`etf::thread_stack_size`): the bytes printers decode the parts eetf can hold with eetf,
/// whose decoder and `Drop` recurse, and the client runs on the main thread (`ulimit -s`).
/// Inline if no thread can be started; `None` if it panicked.
fn on_term_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    let f = std::sync::Mutex::new(Some(f));
    let run = || f.lock().ok().and_then(|mut f| f.take()).map(|f| f());
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("kvnode-print".into())
            .stack_size(crate::etf::thread_stack_size())
            .spawn_scoped(s, run)
            .ok()
            .and_then(|t| t.join().ok())
            .flatten()
    })
    .or_else(run)
}

/// [`render_error`] for a term given as external term format; an excerpt of the bytes if
/// they are not one term.
pub fn render_error_bytes(etf: &[u8], opts: &ClientOpts) -> String {
    let syntax = syntax_of(opts);
    match on_term_stack(move || syntax::print_bytes(etf, syntax)) {
        Some(Ok(text)) => cut_error(text),
        None => format!(
            "(a term that does not print; in external format {})",
            crate::etf::excerpt(etf)
        ),
        Some(Err(error)) => format!(
            "(a term that does not print: {error}; in external format {})",
            crate::etf::excerpt(etf)
        ),
    }
}

/// A term in an error message: in the chosen syntax (JSON is for results only), at most
/// [`MAX_ERROR_TERM`] characters.
pub fn render_error(term: &Term, opts: &ClientOpts) -> String {
    cut_error(syntax::print(term, syntax_of(opts)))
}

/// `text` cut at [`MAX_ERROR_TERM`] characters.
fn cut_error(text: String) -> String {
    if text.chars().count() > MAX_ERROR_TERM {
        let cut: String = text.chars().take(MAX_ERROR_TERM).collect();
        format!("{cut}... (cut at {MAX_ERROR_TERM} characters)")
    } else {
        text
    }
}

/// Most characters of a remote error term printed on stderr (a reason can hold a whole
/// state; stdout carries successful replies in full).
pub const MAX_ERROR_TERM: usize = 4096;

/// The atom a name argument means: `name` as given (single quotes around it removed); with
/// Elixir syntax `:name` is `name` and an alias `Foo.Bar` is `Elixir.Foo.Bar`, as Elixir
/// reads it.
pub fn atom_name(text: &str, syntax: Syntax) -> String {
    if let Some(inner) = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .filter(|_| text.len() >= 2)
    {
        return inner.to_owned();
    }
    if syntax == Syntax::Elixir {
        if let Some(rest) = text.strip_prefix(':') {
            return rest.trim_matches('"').to_owned();
        }
        if text.starts_with(|c: char| c.is_ascii_uppercase()) && !text.starts_with("Elixir.") {
            return format!("Elixir.{text}");
        }
    }
    text.to_owned()
}

/// A pid typed as `<0.B.C>` (as NODE itself prints its own pids): id B, serial C. None when
/// `text` is not written like a pid; a usage error when it is but cannot be one of NODE's.
pub fn pid_text(text: &str) -> Option<Result<(u32, u32), Failure>> {
    let inner = text.strip_prefix('<')?.strip_suffix('>')?;
    let bad = |why: &str| {
        Some(Err(Failure::new(
            Status::Usage,
            format!("bad pid {text:?}: {why}"),
        )))
    };
    let parts: Vec<&str> = inner.split('.').collect();
    let [a, b, c] = parts.as_slice() else {
        return bad("a pid is written <0.B.C>");
    };
    let (Ok(a), Ok(b), Ok(c)) = (a.parse::<u32>(), b.parse::<u32>(), c.parse::<u32>()) else {
        return bad("a pid is written <0.B.C> with decimal numbers");
    };
    if a != 0 {
        return bad("only pids as NODE prints its own (<0.B.C>) can be given");
    }
    Some(Ok((b, c)))
}

/// Where a call, cast or send goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A registered name on the node.
    Name(String),
    /// A pid on the node: id and serial (the node and its creation are filled in once
    /// connected).
    Pid(u32, u32),
}

impl Target {
    /// Reads the NAME argument.
    pub fn parse(text: &str, syntax: Syntax) -> Result<Target, Failure> {
        match pid_text(text) {
            Some(pid) => pid.map(|(id, serial)| Target::Pid(id, serial)),
            None if text.is_empty() => Err(Failure::new(Status::Usage, "empty process name")),
            None => Ok(Target::Name(atom_name(text, syntax))),
        }
    }

    /// The destination on `node`, whose creation is `creation`.
    pub fn dest(&self, node: &str, creation: u32) -> crate::Dest {
        match self {
            Target::Name(name) => crate::Dest::Remote {
                name: name.clone(),
                node: node.to_owned(),
            },
            Target::Pid(id, serial) => crate::Dest::Pid(Pid::new(node, *id, *serial, creation)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pids_and_carets() {
        assert_eq!(atom_name("Elixir.A", Syntax::Erlang), "Elixir.A");
        assert_eq!(atom_name("'A b'", Syntax::Erlang), "A b");
        assert_eq!(atom_name("A.B", Syntax::Elixir), "Elixir.A.B");
        assert_eq!(atom_name(":rex", Syntax::Elixir), "rex");
        assert_eq!(atom_name("Elixir.A", Syntax::Elixir), "Elixir.A");
        assert_eq!(atom_name("rex", Syntax::Elixir), "rex");
        assert_eq!(pid_text("<0.95.2>").map(|r| r.ok()), Some(Some((95, 2))));
        assert!(matches!(pid_text("<1.95.0>"), Some(Err(_))));
        assert!(matches!(pid_text("<0.x.0>"), Some(Err(_))));
        assert!(pid_text("rex").is_none());
        assert_eq!(caret("{a,", 4), "  {a,\n     ^");
        let long = "x".repeat(200);
        let shown = caret(&long, 150);
        assert!(
            shown.starts_with("  ...") && shown.ends_with('^'),
            "{shown}"
        );
        let lines: Vec<&str> = shown.lines().collect();
        // The caret sits under the 150th character: after the indent, "..." and the window.
        assert_eq!(lines[1].len(), 2 + 3 + ERROR_WINDOW + 1);
    }
}
