//! The tokenizer of both term syntaxes: characters in, tokens with their 1-based column out.

use super::{MAX_ATOM_CHARS, Syntax, SyntaxError};
use num_bigint::BigInt;

/// One token of term text.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// An atom: Erlang `abc`/`'Abc'`; Elixir `:abc`, `:"a b"`, `true`/`false`/`nil`, `Foo.Bar`.
    Atom(String),
    /// An integer literal, sign included (`-1`, `16#ff`, `$a`, `0xff`, `?a`).
    Int(BigInt),
    /// A float literal, sign included.
    Float(f64),
    /// A double-quoted string: a charlist in Erlang, a binary in Elixir.
    Str(String),
    /// An Elixir charlist: `'abc'` or `~c"abc"`.
    CharList(String),
    /// An Elixir keyword key, `key:` or `"quoted key":`.
    Kw(String),
    /// A bare word that is not a term: an Elixir identifier, an Erlang variable.
    Ident(String),
    /// A pid, `<A.B.C>` or `#PID<A.B.C>`: the B and C numbers (A is a node index local to the
    /// shell that printed it and is ignored).
    Pid(u32, u32),
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Bar,
    /// `#{` (Erlang) or `%{` (Elixir).
    MapOpen,
    Arrow,
    BinOpen,
    BinClose,
    Colon,
    DoubleColon,
    Slash,
    Dot,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("atom {}", excerpt(a)),
            Tok::Int(_) => "an integer".into(),
            Tok::Float(_) => "a float".into(),
            Tok::Str(_) => "a string".into(),
            Tok::CharList(_) => "a charlist".into(),
            Tok::Kw(k) => format!("keyword key `{}:`", excerpt(k)),
            Tok::Ident(w) => format!("`{}`", excerpt(w)),
            Tok::Pid(..) => "a pid".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Bar => "`|`".into(),
            Tok::MapOpen => "a map".into(),
            Tok::Arrow => "`=>`".into(),
            Tok::BinOpen => "`<<`".into(),
            Tok::BinClose => "`>>`".into(),
            Tok::Colon => "`:`".into(),
            Tok::DoubleColon => "`::`".into(),
            Tok::Slash => "`/`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Eof => "the end of the text".into(),
        }
    }
}

/// At most this many characters of user text are quoted back in an error message.
const EXCERPT_CHARS: usize = 32;

/// `text` cut to [`EXCERPT_CHARS`] characters, escaped, for error messages.
pub(super) fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Erlang's reserved words: bare, they are not atoms.
const ERLANG_RESERVED: &[&str] = &[
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
    "catch", "cond", "div", "else", "end", "fun", "if", "let", "maybe", "not", "of", "or",
    "orelse", "receive", "rem", "try", "when", "xor",
];

/// Whether `name` is an Erlang reserved word (such atoms print quoted).
pub(super) fn erlang_reserved(name: &str) -> bool {
    ERLANG_RESERVED.contains(&name)
}

/// Elixir's operator atoms, which IEx prints bare (`:+`, `[+: 1]`); longest first so that a
/// prefix never shadows a longer operator.
const ELIXIR_OPERATORS: &[&str] = &[
    "%{}", "<<>>", "...", "===", "!==", "&&&", "|||", "<<<", ">>>", "<<~", "~>>", "<~>", "<|>",
    "~~~", "+++", "---", "..//", "\\\\", "==", "!=", "<=", ">=", "=~", "&&", "||", "|>", "<>",
    "++", "--", "..", "<-", "->", "**", "::", "<~", "~>", "{}", "+", "-", "*", "/", "!", "^", "<",
    ">", "=", "|", "&", "@", ".", "%",
];

pub(super) struct Lexer {
    chars: Vec<char>,
    pos: usize,
    syntax: Syntax,
    peeked: Option<(Tok, usize)>,
}

fn err(column: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        column,
        message: message.into(),
    }
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '@'
}

impl Lexer {
    pub(super) fn new(text: &str, syntax: Syntax) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            syntax,
            peeked: None,
        }
    }

    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn cur(&self) -> Option<char> {
        self.at(self.pos)
    }

    /// The column of the character at `pos`.
    fn col(&self) -> usize {
        self.pos + 1
    }

    pub(super) fn peek(&mut self) -> Result<&(Tok, usize), SyntaxError> {
        if self.peeked.is_none() {
            let t = self.scan()?;
            self.peeked = Some(t);
        }
        // Filled just above.
        Ok(self.peeked.as_ref().unwrap_or_else(|| unreachable!()))
    }

    pub(super) fn next(&mut self) -> Result<(Tok, usize), SyntaxError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.scan(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.cur() {
            if c.is_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The Elixir operator at `pos`, if any (longest match).
    fn operator_at(&self, pos: usize) -> Option<&'static str> {
        let rest = &self.chars[pos.min(self.chars.len())..];
        ELIXIR_OPERATORS.iter().copied().find(|op| {
            op.chars().count() <= rest.len() && op.chars().zip(rest).all(|(a, &b)| a == b)
        })
    }

    fn scan(&mut self) -> Result<(Tok, usize), SyntaxError> {
        self.skip_ws();
        let start = self.col();
        let Some(c) = self.cur() else {
            return Ok((Tok::Eof, start));
        };
        // An operator keyword key, as IEx prints it: `[+: 1]`.
        if self.syntax == Syntax::Elixir
            && !c.is_alphanumeric()
            && !matches!(c, '"' | '\'' | ':')
            && self.chars[self.pos..(self.pos + 6).min(self.chars.len())].contains(&':')
            && let Some(op) = self.operator_at(self.pos)
        {
            let after = self.pos + op.chars().count();
            if self.at(after) == Some(':') && self.at(after + 1).is_none_or(char::is_whitespace) {
                self.pos = after + 1;
                return Ok((Tok::Kw(op.to_string()), start));
            }
        }
        let next = self.at(self.pos + 1);
        let erlang = self.syntax == Syntax::Erlang;
        let tok = match c {
            '{' => self.punct(1, Tok::LBrace),
            '}' => self.punct(1, Tok::RBrace),
            '[' => self.punct(1, Tok::LBracket),
            ']' => self.punct(1, Tok::RBracket),
            '(' => self.punct(1, Tok::LParen),
            ')' => self.punct(1, Tok::RParen),
            ',' => self.punct(1, Tok::Comma),
            '|' => self.punct(1, Tok::Bar),
            '/' => self.punct(1, Tok::Slash),
            '.' => self.punct(1, Tok::Dot),
            '=' if next == Some('>') => self.punct(2, Tok::Arrow),
            '>' if next == Some('>') => self.punct(2, Tok::BinClose),
            '<' if next == Some('<') => self.punct(2, Tok::BinOpen),
            '<' if erlang => self.pid(start)?,
            '#' if erlang && next == Some('{') => self.punct(2, Tok::MapOpen),
            '%' if !erlang && next == Some('{') => self.punct(2, Tok::MapOpen),
            '#' if !erlang && self.chars[self.pos..].starts_with(&['#', 'P', 'I', 'D', '<']) => {
                self.pos += 4;
                self.pid(start)?
            }
            '#' if self.chars[self.pos..].starts_with(&['#', 'R', 'e', 'f'])
                || self.chars[self.pos..].starts_with(&['#', 'P', 'o', 'r', 't'])
                || self.chars[self.pos..].starts_with(&['#', 'F', 'u', 'n']) =>
            {
                return Err(err(
                    start,
                    "references, ports and funs print but cannot be written as terms",
                ));
            }
            ':' if erlang => self.punct(1, Tok::Colon),
            ':' if next == Some(':') => self.punct(2, Tok::DoubleColon),
            ':' => self.elixir_atom(start)?,
            '\'' if erlang => {
                self.pos += 1;
                let name = self.quoted('\'', start)?;
                atom_len_ok(&name, start)?;
                Tok::Atom(name)
            }
            '\'' => {
                self.pos += 1;
                Tok::CharList(self.quoted('\'', start)?)
            }
            '"' => {
                self.pos += 1;
                let s = self.quoted('"', start)?;
                if !erlang && self.cur() == Some(':') && self.at(self.pos + 1) != Some(':') {
                    self.pos += 1;
                    atom_len_ok(&s, start)?;
                    Tok::Kw(s)
                } else {
                    Tok::Str(s)
                }
            }
            '~' if !erlang
                && next == Some('c')
                && matches!(self.at(self.pos + 2), Some('"' | '\'')) =>
            {
                let q = self.at(self.pos + 2).unwrap_or('"');
                self.pos += 3;
                Tok::CharList(self.quoted(q, start)?)
            }
            '$' if erlang => {
                self.pos += 1;
                Tok::Int(BigInt::from(self.char_literal(start)?))
            }
            '?' if !erlang => {
                self.pos += 1;
                Tok::Int(BigInt::from(self.char_literal(start)?))
            }
            '-' | '+' => {
                self.pos += 1;
                self.skip_ws();
                let neg = c == '-';
                match self.cur() {
                    Some(d) if d.is_ascii_digit() => self.number(start, neg)?,
                    Some('$') if erlang => {
                        self.pos += 1;
                        let v = BigInt::from(self.char_literal(start)?);
                        Tok::Int(if neg { -v } else { v })
                    }
                    Some('?') if !erlang => {
                        self.pos += 1;
                        let v = BigInt::from(self.char_literal(start)?);
                        Tok::Int(if neg { -v } else { v })
                    }
                    _ => {
                        return Err(err(self.col(), format!("expected a number after `{c}`")));
                    }
                }
            }
            d if d.is_ascii_digit() => self.number(start, false)?,
            w if w.is_alphabetic() || w == '_' => self.word(start)?,
            other => {
                return Err(err(
                    start,
                    format!("unexpected character `{}`", other.escape_debug()),
                ));
            }
        };
        Ok((tok, start))
    }

    fn punct(&mut self, len: usize, tok: Tok) -> Tok {
        self.pos += len;
        tok
    }

    /// `<A.B.C>` with `pos` on the `<`.
    fn pid(&mut self, start: usize) -> Result<Tok, SyntaxError> {
        self.pos += 1;
        let mut nums = [0u32; 3];
        for (i, n) in nums.iter_mut().enumerate() {
            let col = self.col();
            let digits_start = self.pos;
            while self.cur().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            let digits: String = self.chars[digits_start..self.pos].iter().collect();
            *n = digits.parse().map_err(|_| {
                err(
                    col,
                    "expected a pid `<A.B.C>` of three numbers below 2^32".to_string(),
                )
            })?;
            let want = if i < 2 { '.' } else { '>' };
            if self.cur() != Some(want) {
                return Err(err(
                    self.col(),
                    format!("expected `{want}` in the pid that starts at column {start}"),
                ));
            }
            self.pos += 1;
        }
        Ok(Tok::Pid(nums[1], nums[2]))
    }

    /// After `:` in Elixir: `:name`, `:"quoted"`, `:'quoted'`.
    fn elixir_atom(&mut self, start: usize) -> Result<Tok, SyntaxError> {
        self.pos += 1;
        match self.cur() {
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let name = self.quoted(q, start)?;
                atom_len_ok(&name, start)?;
                Ok(Tok::Atom(name))
            }
            Some(c) if c.is_alphabetic() || c == '_' => {
                let s = self.pos;
                while self.cur().is_some_and(is_ident_continue) {
                    self.pos += 1;
                }
                if matches!(self.cur(), Some('?' | '!')) {
                    self.pos += 1;
                }
                let name: String = self.chars[s..self.pos].iter().collect();
                atom_len_ok(&name, start)?;
                Ok(Tok::Atom(name))
            }
            _ => match self.operator_at(self.pos) {
                Some(op) => {
                    self.pos += op.chars().count();
                    Ok(Tok::Atom(op.to_string()))
                }
                None => Err(err(
                    self.col(),
                    "expected an atom name or a quote after `:`",
                )),
            },
        }
    }

    /// A bare word: an Erlang atom or variable, an Elixir `true`/`false`/`nil`, alias,
    /// keyword key or stray identifier.
    fn word(&mut self, start: usize) -> Result<Tok, SyntaxError> {
        let s = self.pos;
        while self.cur().is_some_and(is_ident_continue) {
            self.pos += 1;
        }
        let erlang = self.syntax == Syntax::Erlang;
        if !erlang && matches!(self.cur(), Some('?' | '!')) {
            self.pos += 1;
        }
        let word: String = self.chars[s..self.pos].iter().collect();
        let first = word.chars().next().unwrap_or('_');
        if erlang {
            if first.is_uppercase() || first == '_' {
                return Ok(Tok::Ident(word));
            }
            if erlang_reserved(&word) {
                return Err(err(
                    start,
                    format!("`{word}` is a reserved word; quote it to mean the atom: '{word}'"),
                ));
            }
            atom_len_ok(&word, start)?;
            return Ok(Tok::Atom(word));
        }
        if self.cur() == Some(':') && self.at(self.pos + 1) != Some(':') {
            self.pos += 1;
            atom_len_ok(&word, start)?;
            return Ok(Tok::Kw(word));
        }
        if first.is_uppercase() {
            // An alias: Foo.Bar.Baz is the atom 'Elixir.Foo.Bar.Baz'.
            let mut name = format!("Elixir.{word}");
            while self.cur() == Some('.') && self.at(self.pos + 1).is_some_and(char::is_uppercase) {
                self.pos += 1;
                let s = self.pos;
                while self.cur().is_some_and(is_ident_continue) {
                    self.pos += 1;
                }
                name.push('.');
                name.extend(&self.chars[s..self.pos]);
            }
            if word == "Elixir" {
                name = name.split_off("Elixir.".len());
            }
            atom_len_ok(&name, start)?;
            return Ok(Tok::Atom(name));
        }
        match word.as_str() {
            "true" | "false" | "nil" => Ok(Tok::Atom(word)),
            _ => Ok(Tok::Ident(word)),
        }
    }

    /// An integer or float literal starting at `pos` (a digit), negated if `neg`.
    fn number(&mut self, start: usize, neg: bool) -> Result<Tok, SyntaxError> {
        let erlang = self.syntax == Syntax::Erlang;
        let c0 = self.col();
        if !erlang && self.cur() == Some('0') {
            let radix = match self.at(self.pos + 1) {
                Some('x') => 16,
                Some('o') => 8,
                Some('b') => 2,
                _ => 0,
            };
            if radix != 0 {
                self.pos += 2;
                let digits = self.digits(radix)?;
                return int_tok(&digits, radix, neg, c0);
            }
        }
        let int_part = self.digits(10)?;
        if erlang && self.cur() == Some('#') {
            let radix: u32 = int_part
                .parse()
                .ok()
                .filter(|r| (2..=36).contains(r))
                .ok_or_else(|| err(c0, "expected a base from 2 to 36 before `#`"))?;
            self.pos += 1;
            let digits = self.digits(radix)?;
            return int_tok(&digits, radix, neg, c0);
        }
        if self.cur() == Some('.') && self.at(self.pos + 1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            let frac = self.digits(10)?;
            let mut text = format!("{}{int_part}.{frac}", if neg { "-" } else { "" });
            if matches!(self.cur(), Some('e' | 'E')) {
                self.pos += 1;
                let mut exp = String::new();
                if let Some(s @ ('-' | '+')) = self.cur() {
                    exp.push(s);
                    self.pos += 1;
                }
                if !self.cur().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(err(self.col(), "expected the digits of the exponent"));
                }
                exp.push_str(&self.digits(10)?);
                text.push('e');
                text.push_str(&exp);
            }
            let v: f64 = text
                .parse()
                .map_err(|_| err(start, "not a float".to_string()))?;
            if !v.is_finite() {
                return Err(err(start, "float out of range (beyond ±1.8e308)"));
            }
            return Ok(Tok::Float(v));
        }
        if matches!(self.cur(), Some('e' | 'E')) {
            return Err(err(
                self.col(),
                "a float needs a fraction before its exponent (write 1.0e10, not 1e10)",
            ));
        }
        int_tok(&int_part, 10, neg, c0)
    }

    /// Digits of `radix` with single `_` between them; `pos` ends after them.
    fn digits(&mut self, radix: u32) -> Result<String, SyntaxError> {
        let mut out = String::new();
        let first = self.col();
        loop {
            match self.cur() {
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    self.pos += 1;
                }
                Some('_')
                    if !out.is_empty()
                        && self.at(self.pos + 1).is_some_and(|c| c.is_digit(radix)) =>
                {
                    self.pos += 1;
                }
                Some(c)
                    if (c.is_ascii_alphanumeric() || c == '_')
                        && !(radix == 10 && matches!(c, 'e' | 'E')) =>
                {
                    return Err(err(
                        self.col(),
                        format!("`{}` is not a digit in base {radix}", c.escape_debug()),
                    ));
                }
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(err(first, format!("expected digits in base {radix}")));
        }
        Ok(out)
    }

    /// The character after `$` (Erlang) or `?` (Elixir), escapes included.
    fn char_literal(&mut self, start: usize) -> Result<u32, SyntaxError> {
        match self.cur() {
            None => Err(err(self.col(), "expected a character")),
            Some('\\') => {
                self.pos += 1;
                self.escape(start)
            }
            Some(c) => {
                self.pos += 1;
                Ok(c as u32)
            }
        }
    }

    /// The body of a quoted atom/string after its opening quote `q`, to the closing one.
    fn quoted(&mut self, q: char, start: usize) -> Result<String, SyntaxError> {
        let mut out = String::new();
        loop {
            let col = self.col();
            match self.cur() {
                None => {
                    return Err(err(
                        col,
                        format!("expected the closing {q} of the text quoted at column {start}"),
                    ));
                }
                Some(c) if c == q => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    let v = self.escape(col)?;
                    out.push(char::from_u32(v).ok_or_else(|| {
                        err(col, format!("{v:#x} is not a Unicode scalar value"))
                    })?);
                }
                Some('#')
                    if self.syntax == Syntax::Elixir && self.at(self.pos + 1) == Some('{') =>
                {
                    return Err(err(
                        col,
                        "string interpolation `#{...}` is not a term (escape it: \\#{)",
                    ));
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// An escape sequence after its backslash; `col` is the backslash's column.
    fn escape(&mut self, col: usize) -> Result<u32, SyntaxError> {
        let Some(c) = self.cur() else {
            return Err(err(self.col(), "expected an escape after `\\`"));
        };
        self.pos += 1;
        let erlang = self.syntax == Syntax::Erlang;
        Ok(match c {
            'b' => 8,
            'd' => 127,
            'e' => 27,
            'f' => 12,
            'n' => 10,
            'r' => 13,
            's' => 32,
            't' => 9,
            'v' => 11,
            'a' if !erlang => 7,
            '0' if !erlang => 0,
            'x' => self.hex_escape(col, 2)?,
            'u' if !erlang => self.hex_escape(col, 4)?,
            '0'..='7' if erlang => {
                let mut v = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match self.cur() {
                        Some(d @ '0'..='7') => {
                            v = v * 8 + (d as u32 - '0' as u32);
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                v
            }
            '^' if erlang => match self.cur() {
                Some(ch) if ch.is_ascii_alphabetic() || "@[\\]^_?".contains(ch) => {
                    self.pos += 1;
                    if ch == '?' { 127 } else { ch as u32 & 31 }
                }
                _ => return Err(err(col, "expected a control character after `\\^`")),
            },
            other => other as u32,
        })
    }

    /// `\xHH` (`fixed` = 2) or `\uHHHH` (4), or either with braces: `\x{H...}`.
    fn hex_escape(&mut self, col: usize, fixed: usize) -> Result<u32, SyntaxError> {
        let mut digits = String::new();
        if self.cur() == Some('{') {
            self.pos += 1;
            while let Some(c) = self.cur().filter(char::is_ascii_hexdigit) {
                digits.push(c);
                self.pos += 1;
            }
            if self.cur() != Some('}') || digits.is_empty() || digits.len() > 6 {
                return Err(err(
                    col,
                    "expected hex digits and `}` in the escape `\\x{...}`",
                ));
            }
            self.pos += 1;
        } else {
            for _ in 0..fixed {
                match self.cur().filter(char::is_ascii_hexdigit) {
                    Some(c) => {
                        digits.push(c);
                        self.pos += 1;
                    }
                    None => {
                        return Err(err(
                            col,
                            format!("expected {fixed} hex digits in the escape"),
                        ));
                    }
                }
            }
        }
        let v = u32::from_str_radix(&digits, 16).map_err(|_| err(col, "bad hex escape"))?;
        if v > 0x10FFFF {
            return Err(err(col, "escape beyond U+10FFFF"));
        }
        Ok(v)
    }
}

fn int_tok(digits: &str, radix: u32, neg: bool, col: usize) -> Result<Tok, SyntaxError> {
    let v = BigInt::parse_bytes(digits.as_bytes(), radix)
        .ok_or_else(|| err(col, format!("not an integer in base {radix}")))?;
    Ok(Tok::Int(if neg { -v } else { v }))
}

fn atom_len_ok(name: &str, col: usize) -> Result<(), SyntaxError> {
    if name.chars().count() > MAX_ATOM_CHARS {
        return Err(err(
            col,
            format!("atom longer than {MAX_ATOM_CHARS} characters (the BEAM's limit)"),
        ));
    }
    Ok(())
}
