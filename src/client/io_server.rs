//! The client as a group leader: `kvnode rpc` spawns the function on the peer with the
//! client's process as its group leader, so the function's output (`io:format`,
//! `io:put_chars`, Elixir's `IO.puts` and `IO.inspect`) arrives here as io requests
//! (`{io_request, From, ReplyAs, Request}`, "The Erlang I/O protocol" in the OTP docs).
//!
//! Each request is answered with `{io_reply, ReplyAs, Reply}`, always, so the function never
//! waits on its output. What it prints is written before the reply is sent (and so before the
//! result, which comes after the function has returned), in order:
//!
//! - `{put_chars, Encoding, Chars}` (and the older `{put_chars, Chars}`, latin1): characters
//!   (a binary, or a deep list of character codes and binaries) printed as UTF-8;
//! - `{put_chars, Encoding, M, F, A}` (`io:format` sends `io_lib:format` and its arguments):
//!   `M:F(A)` is evaluated on the peer, as the BEAM's own group leader evaluates it on its
//!   node, and its characters printed, so the text is exactly the BEAM's;
//! - input (`get_line`, `get_chars`, `get_until`): the prompt is printed (formatted by the
//!   peer's `io_lib:format_prompt/2`) and the answer is `eof`, as `erl -noshell </dev/null`
//!   answers (the client reads no input);
//! - `getopts`, `setopts` (`binary`, `list`, `{binary, B}`, `{encoding, E}`), `requests`;
//!   `get_geometry` and `get_password` are `{error, enotsup}` (not a terminal); anything else
//!   `{error, request}`.
//!
//! A request that is not valid (characters that are not characters, a function that fails)
//! is answered with an error (the caller's `io` call raises `badarg`, as on the BEAM) and
//! said on stderr with an excerpt of the request.

use super::connect::Client;
use super::rpc::{self, Answer};
use crate::cli::ClientOpts;
use erl_dist::term::{Atom, FixInteger, List, Pid, Term, Tuple};
use std::io::Write;

/// Most bytes of text one io request (a `requests` list counts as one) makes the client hold
/// and print; the rest is dropped, with a note on stderr. The same bound as a term the
/// client receives: the function's output is bounded by what one message can carry anyway,
/// this bounds what one request can make it print (`io:format("~p", [Huge])` makes far more
/// text than its message holds).
pub const MAX_IO_OUTPUT: usize = 1 << 20;

/// Characters of a bad request shown in its note on stderr.
const EXCERPT_CHARS: usize = 80;

/// Where the function's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOutput {
    /// Printed on stdout, in order with the result (`kvnode rpc`).
    Stdout,
    /// Printed on stderr (`kvnode rpc --json`, whose stdout is one JSON document; `top`).
    Stderr,
    /// Every request answered `{error, enotsup}`, nothing printed: the functions the client
    /// evaluates for a request (`io_lib:format`) have no output to show, and so one request
    /// never leads to another evaluation.
    Refuse,
}

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn error(reason: &str) -> Term {
    tuple(vec![atom("error"), atom(reason)])
}

fn is_atom(term: &Term, name: &str) -> bool {
    matches!(term, Term::Atom(a) if a.name == name)
}

/// The encoding a request names: true for unicode, false for latin1.
fn encoding(term: &Term) -> Option<bool> {
    match term {
        Term::Atom(a) if a.name == "unicode" || a.name == "utf8" => Some(true),
        Term::Atom(a) if a.name == "latin1" => Some(false),
        _ => None,
    }
}

/// The elements of a proper list term (a string is a list of small integers too).
fn list_elements(term: &Term) -> Option<Vec<Term>> {
    match term {
        Term::List(l) => Some(l.elements.clone()),
        Term::ByteList(b) => Some(
            b.bytes
                .iter()
                .map(|&b| FixInteger::from(i32::from(b)).into())
                .collect(),
        ),
        _ => None,
    }
}

/// `term` in Erlang syntax, cut at [`EXCERPT_CHARS`] characters.
fn excerpt(term: &Term) -> String {
    let text = crate::syntax::print(term, crate::syntax::Syntax::Erlang);
    if text.chars().count() > EXCERPT_CHARS {
        let cut: String = text.chars().take(EXCERPT_CHARS).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// Appends the characters of `chars` (chardata: a binary, or a possibly deep list of
/// character codes and binaries, a binary as its tail allowed) to `out` as UTF-8, at most
/// [`MAX_IO_OUTPUT`] bytes of it (`cut` says some was dropped). Binaries are UTF-8 with
/// `unicode`, Latin-1 bytes without; codes must be Unicode scalar values (at most 255
/// without `unicode`). Walked with a stack of its own, not recursion: the term comes from
/// the peer.
fn chardata(chars: &Term, unicode: bool, out: &mut Vec<u8>, cut: &mut bool) -> Result<(), String> {
    let mut push = |s: &str, out: &mut Vec<u8>| {
        let room = MAX_IO_OUTPUT.saturating_sub(out.len());
        if s.len() <= room {
            out.extend_from_slice(s.as_bytes());
        } else {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&s.as_bytes()[..end]);
            *cut = true;
        }
    };
    let latin1 = |bytes: &[u8]| -> String { bytes.iter().map(|&b| char::from(b)).collect() };
    let mut stack: Vec<&Term> = vec![chars];
    while let Some(term) = stack.pop() {
        match term {
            Term::Binary(b) if unicode => match std::str::from_utf8(&b.bytes) {
                Ok(s) => push(s, out),
                Err(e) => {
                    return Err(format!(
                        "a binary that is not UTF-8 (at byte {})",
                        e.valid_up_to()
                    ));
                }
            },
            Term::Binary(b) => push(&latin1(&b.bytes), out),
            Term::ByteList(l) => push(&latin1(&l.bytes), out),
            Term::List(l) => stack.extend(l.elements.iter().rev()),
            Term::ImproperList(l) if matches!(*l.last, Term::Binary(_)) => {
                stack.push(&l.last);
                stack.extend(l.elements.iter().rev());
            }
            Term::FixInteger(i) => {
                let c = u32::try_from(i.value)
                    .ok()
                    .filter(|&c| unicode || c <= 255)
                    .and_then(char::from_u32);
                match c {
                    Some(c) => push(c.encode_utf8(&mut [0u8; 4]), out),
                    None => {
                        return Err(format!(
                            "{} is not a {} character",
                            i.value,
                            if unicode { "Unicode" } else { "Latin-1" }
                        ));
                    }
                }
            }
            other => return Err(format!("{} is not a character", excerpt(other))),
        }
    }
    Ok(())
}

/// The io server of one rpc: where output goes, and the options `setopts` set.
pub(crate) struct IoServer<'a> {
    client: &'a Client,
    opts: &'a ClientOpts,
    output: IoOutput,
    binary: bool,
    unicode: bool,
}

impl<'a> IoServer<'a> {
    pub(crate) fn new(client: &'a Client, opts: &'a ClientOpts, output: IoOutput) -> Self {
        IoServer {
            client,
            opts,
            output,
            binary: false,
            unicode: true,
        }
    }

    /// Handles a message to the group leader: an io request is served and answered; other
    /// messages are ignored.
    pub(crate) async fn message(&mut self, me: &crate::Process, message: Term) {
        let Term::Tuple(t) = message else { return };
        let [tag, Term::Pid(from), reply_as, request] = t.elements.as_slice() else {
            return;
        };
        if !is_atom(tag, "io_request") {
            return;
        }
        let mut out = Vec::new();
        let mut cut = false;
        let reply = if self.output == IoOutput::Refuse {
            error("enotsup")
        } else if let Some(requests) = self.requests(request) {
            let mut reply = atom("ok");
            for r in &requests {
                reply = self.serve(from, r, &mut out, &mut cut).await;
                if matches!(&reply, Term::Tuple(t) if t.elements.first().is_some_and(|e| is_atom(e, "error")))
                {
                    break;
                }
            }
            reply
        } else {
            self.serve(from, request, &mut out, &mut cut).await
        };
        self.write(&out, cut);
        me.send(
            from.clone(),
            tuple(vec![atom("io_reply"), reply_as.clone(), reply]),
        );
    }

    /// The requests of `{requests, Requests}`.
    fn requests(&self, request: &Term) -> Option<Vec<Term>> {
        match request {
            Term::Tuple(t) => match t.elements.as_slice() {
                [kind, list] if is_atom(kind, "requests") => list_elements(list),
                _ => None,
            },
            _ => None,
        }
    }

    fn write(&self, out: &[u8], cut: bool) {
        if !out.is_empty() {
            let _ = match self.output {
                IoOutput::Stdout => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(out).and_then(|()| o.flush())
                }
                IoOutput::Stderr | IoOutput::Refuse => {
                    let mut o = std::io::stderr().lock();
                    o.write_all(out).and_then(|()| o.flush())
                }
            };
        }
        if cut {
            eprintln!(
                "kvnode: the remote function's output of one io request was cut at {MAX_IO_OUTPUT} bytes"
            );
        }
    }

    /// Says on stderr that a request from `from` was not valid, and answers it `{error, why}`.
    fn bad(&self, from: &Pid, request: &Term, what: &str, reply: &str) -> Term {
        eprintln!(
            "kvnode: a bad io request from {}: {what}: {}",
            excerpt(&Term::Pid(from.clone())),
            excerpt(request)
        );
        error(reply)
    }

    /// Serves one request (not a `requests` list); output is appended to `out`.
    async fn serve(
        &mut self,
        from: &Pid,
        request: &Term,
        out: &mut Vec<u8>,
        cut: &mut bool,
    ) -> Term {
        let Term::Tuple(t) = request else {
            return match request {
                Term::Atom(a) if a.name == "getopts" => self.getopts(),
                _ => self.bad(from, request, "not an io request", "request"),
            };
        };
        let elements = t.elements.as_slice();
        let Some(Term::Atom(kind)) = elements.first() else {
            return self.bad(from, request, "not an io request", "request");
        };
        // The forms without an encoding are what a peer's io.erl sends to a group leader on
        // a node without DFLAG_UNICODE_IO (kvnode does not set it): the encoding is dropped,
        // the characters kept, except that a list that fits Latin-1 is sent as a Latin-1
        // binary. So a binary there is Latin-1, anything else Unicode characters.
        let unicode = atom("unicode");
        let old = |chars: &Term| match chars {
            Term::Binary(_) => atom("latin1"),
            _ => atom("unicode"),
        };
        match (kind.name.as_str(), &elements[1..]) {
            ("put_chars", [enc, chars]) => self.put_chars(from, request, enc, chars, out, cut),
            ("put_chars", [chars]) => self.put_chars(from, request, &old(chars), chars, out, cut),
            ("put_chars", [enc, m, f, a]) => {
                self.put_chars_mfa(from, request, enc, m, f, a, out, cut)
                    .await
            }
            ("put_chars", [m, f, a]) => {
                self.put_chars_mfa(from, request, &unicode, m, f, a, out, cut)
                    .await
            }
            ("get_line", [enc, prompt])
            | ("get_chars", [enc, prompt, _])
            | ("get_until", [enc, prompt, _, _, _]) => {
                self.input(from, request, enc, prompt, out, cut).await
            }
            ("get_line", [prompt])
            | ("get_chars", [prompt, _])
            | ("get_until", [prompt, _, _, _]) => {
                self.input(from, request, &unicode, prompt, out, cut).await
            }
            ("get_password", _) | ("get_geometry", [_]) => error("enotsup"),
            ("setopts", [options]) => self.setopts(options),
            _ => self.bad(from, request, "not an io request kvnode knows", "request"),
        }
    }

    fn put_chars(
        &self,
        from: &Pid,
        request: &Term,
        enc: &Term,
        chars: &Term,
        out: &mut Vec<u8>,
        cut: &mut bool,
    ) -> Term {
        let Some(unicode) = encoding(enc) else {
            return self.bad(from, request, "an unknown encoding", "request");
        };
        let mark = out.len();
        match chardata(chars, unicode, out, cut) {
            Ok(()) => atom("ok"),
            Err(why) => {
                out.truncate(mark);
                self.bad(from, request, &format!("put_chars of {why}"), "put_chars")
            }
        }
    }

    /// `{put_chars, Enc, M, F, A}`: `M:F(A)` evaluated on the peer, its characters printed.
    #[allow(clippy::too_many_arguments)]
    async fn put_chars_mfa(
        &self,
        from: &Pid,
        request: &Term,
        enc: &Term,
        m: &Term,
        f: &Term,
        a: &Term,
        out: &mut Vec<u8>,
        cut: &mut bool,
    ) -> Term {
        let Some(unicode) = encoding(enc) else {
            return self.bad(from, request, "an unknown encoding", "request");
        };
        let (Term::Atom(m), Term::Atom(f), Some(args)) = (m, f, list_elements(a)) else {
            return self.bad(
                from,
                request,
                "put_chars of a function that is not Module, Function, [Args]",
                "put_chars",
            );
        };
        if from.node.name != self.client.peer {
            // Only the peer's own processes have their functions evaluated (on the peer).
            return self.bad(
                from,
                request,
                "put_chars of a function from a node other than the one called",
                "put_chars",
            );
        }
        let chars = match self.eval(&m.name, &f.name, args).await {
            Ok(chars) => chars,
            Err(why) => {
                return self.bad(
                    from,
                    request,
                    &format!("put_chars of {}:{}/N failed: {why}", m.name, f.name),
                    &f.name,
                );
            }
        };
        let mark = out.len();
        match chardata(&chars, unicode, out, cut) {
            Ok(()) => atom("ok"),
            Err(why) => {
                out.truncate(mark);
                self.bad(
                    from,
                    request,
                    &format!("{}:{} made {why}", m.name, f.name),
                    &f.name,
                )
            }
        }
    }

    /// An input request: the prompt printed, `eof` answered (the client reads no input).
    async fn input(
        &self,
        from: &Pid,
        request: &Term,
        enc: &Term,
        prompt: &Term,
        out: &mut Vec<u8>,
        cut: &mut bool,
    ) -> Term {
        let Some(unicode) = encoding(enc) else {
            return self.bad(from, request, "an unknown encoding", "request");
        };
        if from.node.name == self.client.peer {
            let args = vec![prompt.clone(), enc.clone()];
            // A prompt that does not format prints nothing; the answer is eof all the same.
            if let Ok(chars) = self.eval("io_lib", "format_prompt", args).await {
                let mark = out.len();
                if chardata(&chars, unicode, out, cut).is_err() {
                    out.truncate(mark);
                }
            }
        }
        atom("eof")
    }

    fn getopts(&self) -> Term {
        List::from(vec![
            tuple(vec![atom("binary"), atom(&self.binary.to_string())]),
            tuple(vec![
                atom("encoding"),
                atom(if self.unicode { "unicode" } else { "latin1" }),
            ]),
        ])
        .into()
    }

    /// `{setopts, Options}`: `binary`, `list`, `{binary, B}` and `{encoding, E}` are taken
    /// (all or none); anything else is `{error, enotsup}`, as the BEAM's non-terminal
    /// group leader answers.
    fn setopts(&mut self, options: &Term) -> Term {
        let Some(options) = list_elements(options) else {
            return error("enotsup");
        };
        let (mut binary, mut unicode) = (self.binary, self.unicode);
        for option in &options {
            match option {
                Term::Atom(a) if a.name == "binary" => binary = true,
                Term::Atom(a) if a.name == "list" => binary = false,
                Term::Tuple(t) => match t.elements.as_slice() {
                    [k, Term::Atom(v)] if is_atom(k, "binary") && v.name == "true" => binary = true,
                    [k, Term::Atom(v)] if is_atom(k, "binary") && v.name == "false" => {
                        binary = false
                    }
                    [k, e] if is_atom(k, "encoding") && encoding(e).is_some() => {
                        unicode = encoding(e) == Some(true)
                    }
                    _ => return error("enotsup"),
                },
                _ => return error("enotsup"),
            }
        }
        (self.binary, self.unicode) = (binary, unicode);
        atom("ok")
    }

    /// `module:function(args)` evaluated on the peer (an rpc whose own io requests are
    /// refused); its value, or why not.
    async fn eval(&self, module: &str, function: &str, args: Vec<Term>) -> Result<Term, String> {
        let answer = Box::pin(rpc::call_answer(
            self.client,
            module,
            function,
            args,
            self.opts,
            false,
            IoOutput::Refuse,
        ))
        .await;
        match answer {
            Ok(Answer::Term(value)) => Ok(value),
            Ok(Answer::Bytes(_)) => Err("it returned a term that is not characters".to_owned()),
            Err(failure) => Err(failure.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eetf::ByteList;
    use erl_dist::term::{Binary, ImproperList};

    fn text(t: &Term, unicode: bool) -> Result<String, String> {
        let (mut out, mut cut) = (Vec::new(), false);
        chardata(t, unicode, &mut out, &mut cut)?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn chardata_is_read_as_the_encoding_says() {
        let e_acute = Term::from(Binary::from("é".as_bytes().to_vec()));
        assert_eq!(text(&e_acute, true).as_deref(), Ok("é"));
        // The same two bytes as Latin-1 are two characters.
        assert_eq!(text(&e_acute, false).as_deref(), Ok("Ã©"));
        let deep = Term::from(List::from(vec![
            Term::from(ByteList::from(b"ab".to_vec())),
            Term::from(List::from(vec![FixInteger::from(0x3bb).into()])),
            Term::from(ImproperList::from((
                vec![FixInteger::from(233).into()],
                Term::from(Binary::from(b"!".to_vec())),
            ))),
        ]));
        assert_eq!(text(&deep, true).as_deref(), Ok("abλé!"));
        assert!(text(&deep, false).is_err(), "λ is not Latin-1");
        assert!(text(&atom("x"), true).is_err());
        assert!(text(&Term::from(Binary::from(vec![0xff])), true).is_err());
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        let big = Term::from(Binary::from("λ".repeat(MAX_IO_OUTPUT).into_bytes()));
        let (mut out, mut cut) = (Vec::new(), false);
        assert!(chardata(&big, true, &mut out, &mut cut).is_ok());
        assert!(cut);
        assert!(out.len() <= MAX_IO_OUTPUT && std::str::from_utf8(&out).is_ok());
    }
}
