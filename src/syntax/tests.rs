//! Unit tests of the term syntaxes: every form both ways, error columns, limits, and seeded
//! property tests (print → parse, and parse → encode → decode → print → parse).

use super::{
    MAX_DEPTH, MAX_MAP_KEY_NESTING, Syntax, exact_eq, from_json, parse, parse_pid, print, to_json,
};
use eetf::{Atom, BitBinary, ExternalFun, InternalFun, Pid, Port, Reference, Term};
use num_bigint::BigInt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// The KV tests' term constructors and zoo (private to `kv`, so included here again).
#[path = "../kv/test_terms.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod test_terms;
use test_terms::{atom, big, bin, bytelist, float, improper, int, list, map, tuple, zoo};

use Syntax::{Elixir, Erlang};

fn p(text: &str, syntax: Syntax) -> Term {
    parse(text, syntax).unwrap_or_else(|e| panic!("{text:?} ({syntax:?}): {e}"))
}

#[track_caller]
fn parses(text: &str, syntax: Syntax, want: Term) {
    let got = p(text, syntax);
    assert!(
        exact_eq(&got, &want),
        "{text:?} ({syntax:?}) parsed to {got:?}, want {want:?}"
    );
}

#[track_caller]
fn prints(term: &Term, erlang: &str, elixir: &str) {
    assert_eq!(print(term, Erlang), erlang, "Erlang print of {term:?}");
    assert_eq!(print(term, Elixir), elixir, "Elixir print of {term:?}");
    for s in [Erlang, Elixir] {
        let back = p(&print(term, s), s);
        assert!(
            exact_eq(&back, term),
            "{s:?} round trip of {term:?}: {back:?}"
        );
    }
}

#[track_caller]
fn fails(text: &str, syntax: Syntax, column: usize, needle: &str) {
    match parse(text, syntax) {
        Ok(t) => panic!("{text:?} ({syntax:?}) parsed to {t:?}, want an error"),
        Err(e) => {
            assert_eq!(e.column, column, "{text:?} ({syntax:?}): {e}");
            assert!(
                e.message.contains(needle),
                "{text:?} ({syntax:?}): {e} lacks {needle:?}"
            );
        }
    }
}

fn chars(s: &str) -> Term {
    list(s.chars().map(|c| int(c as i32)).collect())
}

fn pid(id: u32, serial: u32) -> Term {
    Term::from(Pid::new("", id, serial, 0))
}

fn bits(bytes: &[u8], tail: u8) -> Term {
    Term::from(BitBinary::from((bytes.to_vec(), tail)))
}

#[test]
fn erlang_forms_parse() {
    parses("ok", Erlang, atom("ok"));
    parses("  node@host.  ", Erlang, atom("node@host"));
    parses("'Hello World'", Erlang, atom("Hello World"));
    parses(
        r"'it\'s \\ \n\x41\x{1F600}\101\^A'",
        Erlang,
        atom("it's \\ \nA😀A\u{1}"),
    );
    parses("''", Erlang, atom(""));
    parses("'héllo_wörld'", Erlang, atom("héllo_wörld"));
    parses("42", Erlang, int(42));
    parses("-7", Erlang, int(-7));
    parses("1_000_000", Erlang, int(1_000_000));
    parses("16#ff", Erlang, int(255));
    parses("-2#1010", Erlang, int(-10));
    parses("36#Zz", Erlang, int(35 * 36 + 35));
    parses("$a", Erlang, int(97));
    parses(r"$\n", Erlang, int(10));
    parses("$ ", Erlang, int(32));
    parses("-$a", Erlang, int(-97));
    parses("2147483648", Erlang, big(2_147_483_648i64));
    parses(
        "-123456789012345678901234567890",
        Erlang,
        big("-123456789012345678901234567890".parse::<BigInt>().unwrap()),
    );
    parses("1.0", Erlang, float(1.0));
    parses("-0.0", Erlang, float(-0.0));
    parses("1.0e10", Erlang, float(1.0e10));
    parses("1.5E-7", Erlang, float(1.5e-7));
    parses("1_000.5", Erlang, float(1000.5));
    parses(r#""abc""#, Erlang, chars("abc"));
    parses(r#""""#, Erlang, list(vec![]));
    parses(r#""ab" "cd""#, Erlang, chars("abcd"));
    parses(r#""é\t😀""#, Erlang, chars("é\t😀"));
    parses(r#"<<"bin">>"#, Erlang, bin("bin"));
    parses("<<>>", Erlang, bin(""));
    parses("<<1,2,3>>", Erlang, bin(&[1u8, 2, 3]));
    parses(r#"<<"a", 1, $b>>"#, Erlang, bin("a\u{1}b"));
    parses(r#"<<"é">>"#, Erlang, bin(&[0xE9u8]));
    parses(r#"<<"é"/utf8>>"#, Erlang, bin("é"));
    parses("<<233/utf8>>", Erlang, bin("é"));
    parses("<<-1:16, 256:16>>", Erlang, bin(&[0xFFu8, 0xFF, 1, 0]));
    parses("<<1:3>>", Erlang, bits(&[1], 3));
    parses("<<1, 5:3>>", Erlang, bits(&[1, 5], 3));
    parses("<<1:4, 2:4>>", Erlang, bin(&[0x12u8]));
    parses("{}", Erlang, tuple(vec![]));
    parses(
        "{a, 1, {b}}",
        Erlang,
        tuple(vec![atom("a"), int(1), tuple(vec![atom("b")])]),
    );
    parses("[]", Erlang, list(vec![]));
    parses("[1, 2]", Erlang, list(vec![int(1), int(2)]));
    parses("[1|2]", Erlang, improper(vec![int(1)], int(2)));
    parses("[1, 2 | [3]]", Erlang, list(vec![int(1), int(2), int(3)]));
    parses("[1 | []]", Erlang, list(vec![int(1)]));
    parses("#{}", Erlang, map(vec![]));
    parses(
        "#{a => 1, <<\"b\">> => [2], #{k => v} => {}}",
        Erlang,
        map(vec![
            (atom("a"), int(1)),
            (bin("b"), list(vec![int(2)])),
            (map(vec![(atom("k"), atom("v"))]), tuple(vec![])),
        ]),
    );
    parses("#{a => 1, a => 2}", Erlang, map(vec![(atom("a"), int(2))]));
    parses("<0.85.0>", Erlang, pid(85, 0));
    parses("<12345.1.2>", Erlang, pid(1, 2));
    parses(
        "\n\t{ a ,\n b } .\n",
        Erlang,
        tuple(vec![atom("a"), atom("b")]),
    );
}

#[test]
fn elixir_forms_parse() {
    parses(":ok", Elixir, atom("ok"));
    parses(":ok?", Elixir, atom("ok?"));
    parses(":Hello", Elixir, atom("Hello"));
    parses(":node@host", Elixir, atom("node@host"));
    parses(r#":"hello world""#, Elixir, atom("hello world"));
    parses(":'q'", Elixir, atom("q"));
    parses(":+", Elixir, atom("+"));
    parses(":<<>>", Elixir, atom("<<>>"));
    parses(":日本", Elixir, atom("日本"));
    parses(
        "[+: 1, ===: 2]",
        Elixir,
        list(vec![
            tuple(vec![atom("+"), int(1)]),
            tuple(vec![atom("==="), int(2)]),
        ]),
    );
    parses("true", Elixir, atom("true"));
    parses("false", Elixir, atom("false"));
    parses("nil", Elixir, atom("nil"));
    parses("Foo.Bar", Elixir, atom("Elixir.Foo.Bar"));
    parses(
        "DistributedExample.KVStore",
        Elixir,
        atom("Elixir.DistributedExample.KVStore"),
    );
    parses("42", Elixir, int(42));
    parses("-1_000", Elixir, int(-1000));
    parses("0xff", Elixir, int(255));
    parses("0o17", Elixir, int(15));
    parses("0b1010", Elixir, int(10));
    parses("?a", Elixir, int(97));
    parses(r"?\n", Elixir, int(10));
    parses(
        "99999999999999999999",
        Elixir,
        big("99999999999999999999".parse::<BigInt>().unwrap()),
    );
    parses("-0.0", Elixir, float(-0.0));
    parses("1.0e300", Elixir, float(1.0e300));
    parses(r#""hello""#, Elixir, bin("hello"));
    parses(r#""""#, Elixir, bin(""));
    parses(
        r#""a\n\t\"\\\u{1F600}\u00e9\#{x}""#,
        Elixir,
        bin("a\n\t\"\\😀é#{x}"),
    );
    parses("'abc'", Elixir, chars("abc"));
    parses(r#"~c"abc""#, Elixir, chars("abc"));
    parses("''", Elixir, list(vec![]));
    parses("<<1, 2>>", Elixir, bin(&[1u8, 2]));
    parses(r#"<<"a", 1>>"#, Elixir, bin("a\u{1}"));
    parses(r#"<<"é">>"#, Elixir, bin("é"));
    parses("<<1::3>>", Elixir, bits(&[1], 3));
    parses("<<1, 5::size(3)>>", Elixir, bits(&[1, 5], 3));
    parses("<<233::utf8>>", Elixir, bin("é"));
    parses(r#"<<"ab"::binary>>"#, Elixir, bin("ab"));
    parses("{:a, 1}", Elixir, tuple(vec![atom("a"), int(1)]));
    parses("[1, 2 | 3]", Elixir, improper(vec![int(1), int(2)], int(3)));
    parses(
        r#"[a: 1, "b c": 2]"#,
        Elixir,
        list(vec![
            tuple(vec![atom("a"), int(1)]),
            tuple(vec![atom("b c"), int(2)]),
        ]),
    );
    parses(
        "[1, a: 2]",
        Elixir,
        list(vec![int(1), tuple(vec![atom("a"), int(2)])]),
    );
    parses("%{}", Elixir, map(vec![]));
    parses("%{a: 1}", Elixir, map(vec![(atom("a"), int(1))]));
    parses(
        r#"%{"k" => 1, a: 2}"#,
        Elixir,
        map(vec![(bin("k"), int(1)), (atom("a"), int(2))]),
    );
    parses(
        "%{%{a: 1} => [b: nil]}",
        Elixir,
        map(vec![(
            map(vec![(atom("a"), int(1))]),
            list(vec![tuple(vec![atom("b"), atom("nil")])]),
        )]),
    );
    parses("#PID<0.85.0>", Elixir, pid(85, 0));
}

#[test]
fn printing_follows_the_shells() {
    prints(&atom("ok"), "ok", ":ok");
    prints(&atom("node@host"), "node@host", ":node@host");
    prints(&atom("Hello"), "'Hello'", ":Hello");
    prints(&atom("hello world"), "'hello world'", r#":"hello world""#);
    prints(&atom("it's"), r"'it\'s'", r#":"it's""#);
    prints(&atom("case"), "'case'", ":case");
    prints(&atom(""), "''", r#":"""#);
    prints(&atom("true"), "true", "true");
    prints(&atom("nil"), "nil", "nil");
    prints(&atom("ok?"), "'ok?'", ":ok?");
    prints(&atom("Elixir.Foo.Bar"), "'Elixir.Foo.Bar'", "Foo.Bar");
    prints(&atom("Elixir.foo"), "'Elixir.foo'", r#":"Elixir.foo""#);
    prints(&atom("héllo"), "'héllo'", r#":"héllo""#);
    prints(&atom("a\nb"), r"'a\nb'", r#":"a\nb""#);
    prints(&int(-42), "-42", "-42");
    prints(
        &big(BigInt::from(1u8) << 100),
        "1267650600228229401496703205376",
        "1267650600228229401496703205376",
    );
    for (f, erlang, elixir) in [
        (1.0, "1.0", "1.0"),
        (-0.0, "-0.0", "-0.0"),
        (0.0, "0.0", "0.0"),
        (0.1, "0.1", "0.1"),
        (100.0, "100.0", "100.0"),
        (1000.0, "1.0e3", "1000.0"),
        (-1.0e15, "-1.0e15", "-1000000000000000.0"),
        (1.0e16, "1.0e16", "1.0e16"),
        (123.456, "123.456", "123.456"),
        (0.001, "0.001", "0.001"),
        (0.0001, "0.0001", "0.0001"),
        (0.00001, "1.0e-5", "1.0e-5"),
        (1.0e300, "1.0e300", "1.0e300"),
        (1.5e-7, "1.5e-7", "1.5e-7"),
        (5e-324, "5.0e-324", "5.0e-324"),
        (f64::MAX, "1.7976931348623157e308", "1.7976931348623157e308"),
        (-2.5, "-2.5", "-2.5"),
    ] {
        prints(&float(f), erlang, elixir);
    }
    prints(&chars("hi"), r#""hi""#, r#"~c"hi""#);
    prints(&bytelist(b"hi\n"), r#""hi\n""#, r#"~c"hi\n""#);
    prints(&chars("hé"), r#""hé""#, "[104, 233]");
    prints(&list(vec![]), "[]", "[]");
    prints(&list(vec![int(1), int(2)]), "[1,2]", "[1, 2]");
    prints(&bytelist(&[1, 2]), "[1,2]", "[1, 2]");
    prints(&chars("a\"b#{c}"), r#""a\"b#{c}""#, r##"~c"a\"b\#{c}""##);
    prints(&bin("hi"), r#"<<"hi">>"#, r#""hi""#);
    prints(&bin(""), "<<>>", r#""""#);
    prints(&bin("é"), r#"<<"é"/utf8>>"#, r#""é""#);
    prints(&bin(&[1u8, 2, 255]), "<<1,2,255>>", "<<1, 2, 255>>");
    prints(&bin("a#{b}"), r#"<<"a#{b}">>"#, r#""a\#{b}""#);
    prints(&bits(&[1, 5], 3), "<<1,5:3>>", "<<1, 5::size(3)>>");
    prints(&tuple(vec![]), "{}", "{}");
    prints(&tuple(vec![atom("a"), int(1)]), "{a,1}", "{:a, 1}");
    prints(&improper(vec![int(1)], int(2)), "[1|2]", "[1 | 2]");
    prints(
        &list(vec![
            tuple(vec![atom("a"), int(1)]),
            tuple(vec![atom("b c"), int(2)]),
        ]),
        "[{a,1},{'b c',2}]",
        r#"[a: 1, "b c": 2]"#,
    );
    prints(&map(vec![]), "#{}", "%{}");
    prints(
        &map(vec![(atom("b"), int(2)), (atom("a"), int(1))]),
        "#{a => 1,b => 2}",
        "%{a: 1, b: 2}",
    );
    prints(
        &map(vec![
            (atom("a"), int(3)),
            (bin("k"), int(1)),
            (int(1), int(2)),
        ]),
        r#"#{1 => 2,a => 3,<<"k">> => 1}"#,
        r#"%{1 => 2, :a => 3, "k" => 1}"#,
    );
    // Numerically equal keys: the integer first. (eetf's map cannot hold both 0.0 and -0.0
    // as keys: its float equality makes them one key.)
    prints(
        &map(vec![(float(-0.0), int(2)), (int(0), int(1))]),
        "#{0 => 1,-0.0 => 2}",
        "%{0 => 1, -0.0 => 2}",
    );
    assert_eq!(
        super::compare(&float(-0.0), &float(0.0)),
        std::cmp::Ordering::Less
    );
    prints(&pid(85, 0), "<0.85.0>", "#PID<0.85.0>");
    let r = Term::from(Reference {
        node: Atom::from("a@h"),
        id: vec![1, 2, 3],
        creation: 1,
    });
    assert_eq!(print(&r, Erlang), "#Ref<0.3.2.1>");
    assert_eq!(print(&r, Elixir), "#Reference<0.3.2.1>");
    let port = Term::from(Port {
        node: Atom::from("a@h"),
        id: 9,
        creation: 1,
    });
    assert_eq!(print(&port, Erlang), "#Port<0.9>");
    assert_eq!(print(&port, Elixir), "#Port<0.9>");
    let f = Term::from(ExternalFun::from(("lists", "map", 2)));
    assert_eq!(print(&f, Erlang), "fun lists:map/2");
    assert_eq!(print(&f, Elixir), "&:lists.map/2");
    let f = Term::from(InternalFun::New {
        module: Atom::from("erl_eval"),
        arity: 1,
        pid: Pid::new("a@h", 1, 2, 3),
        free_vars: vec![],
        index: 42,
        uniq: [7; 16],
        old_index: 5,
        old_uniq: 123,
    });
    assert_eq!(print(&f, Erlang), "#Fun<erl_eval.5.123>");
    assert_eq!(print(&f, Elixir), "#Function<5.123/1 in :erl_eval>");
    for s in [Erlang, Elixir] {
        assert!(parse(&print(&r, s), s).is_err());
        assert!(parse(&print(&f, s), s).is_err());
    }
}

#[test]
fn errors_name_the_column_and_what_was_expected() {
    fails(
        "{a, b",
        Erlang,
        6,
        "expected `,` or `}` in the tuple opened at column 1",
    );
    fails("[1, 2,]", Erlang, 7, "expected a term, found `]`");
    fails("{a b}", Erlang, 4, "expected `,` or `}`");
    fails("foo bar", Erlang, 5, "expected the end of the text");
    fails("ok. x", Erlang, 5, "expected the end of the text");
    fails("Foo", Erlang, 1, "variable");
    fails("case", Erlang, 1, "reserved word");
    fails(
        r#"{"abc"#,
        Erlang,
        6,
        "closing \" of the text quoted at column 2",
    );
    fails("#{a => }", Erlang, 8, "expected a term");
    fails("#{a, b}", Erlang, 4, "expected `=>`");
    fails("1e10", Erlang, 2, "fraction before its exponent");
    fails("16#fg", Erlang, 5, "not a digit in base 16");
    fails("1__0", Erlang, 2, "not a digit");
    fails("1.0e999", Erlang, 1, "out of range");
    fails("<<256>>", Erlang, 3, "does not fit in 8 bits");
    fails(r#"<<"ā">>"#, Erlang, 4, "beyond 255");
    fails("<0.1>", Erlang, 5, "expected `.`");
    fails("#Ref<0.1.2.3>", Erlang, 1, "cannot be written");
    // Columns count characters, not bytes.
    fails("{'héllo', ?}", Erlang, 11, "unexpected character `?`");
    fails(
        &format!("'{}'", "a".repeat(256)),
        Erlang,
        1,
        "longer than 255",
    );
    fails("", Erlang, 1, "expected a term, found the end of the text");
    fails("foo", Elixir, 1, ":foo");
    fails(
        "%{a: 1, :b => 2}",
        Elixir,
        9,
        "keyword pairs must come last",
    );
    fails("[a: 1, 2]", Elixir, 8, "keyword pairs must come last");
    fails(r#""a#{b}""#, Elixir, 3, "interpolation");
    fails("{a: 1}", Elixir, 2, "keyword key");
    fails(":#", Elixir, 2, "expected an atom name");
    fails("%{a => 1}", Elixir, 3, "not a term");
    fails("<<1::size(3>>", Elixir, 12, "expected `)`");
}

/// Runs `f` on a thread with the stack kvnode gives threads that hold terms this deep (the
/// terms' own Drop and encoder recurse).
fn on_deep_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(crate::etf::stack_size_for_depth(MAX_DEPTH + 10))
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic");
}

#[test]
fn nesting_is_limited_not_a_stack_overflow() {
    on_deep_stack(|| {
        for (open, close, s) in [
            ("[", "]", Erlang),
            ("{", "}", Erlang),
            ("#{1 => ", "}", Erlang),
            ("%{a: ", "}", Elixir),
        ] {
            let ok = format!("{}1{}", open.repeat(MAX_DEPTH), close.repeat(MAX_DEPTH));
            let t = parse(&ok, s).unwrap_or_else(|e| panic!("{open}: {e}"));
            // Printing is iterative: the text comes back.
            assert_eq!(
                print(&t, s).replace([' ', ','], ""),
                ok.replace([' ', ','], "")
            );
            let json = to_json(&t);
            assert!(exact_eq(&from_json(&json).expect("json reads back"), &t));
            let deep = format!(
                "{}1{}",
                open.repeat(MAX_DEPTH + 1),
                close.repeat(MAX_DEPTH + 1)
            );
            let Err(e) = parse(&deep, s) else {
                panic!("{open}: {} levels parsed", MAX_DEPTH + 1)
            };
            assert!(e.message.contains("nested deeper than 10000"), "{e}");
            assert_eq!(e.column, MAX_DEPTH * open.chars().count() + 1);
        }
        let e = from_json(&format!(
            "{}1{}",
            "[".repeat(3 * MAX_DEPTH + 1),
            "]".repeat(3 * MAX_DEPTH + 1)
        ))
        .expect_err("JSON too deep");
        assert!(e.message.contains("nested deeper"), "{e}");
        // A million unclosed brackets: an error, quickly, with no deep recursion anywhere.
        let e = parse(&"[".repeat(1_000_000), Erlang).expect_err("1M deep");
        assert_eq!(e.column, MAX_DEPTH + 1);
    });
}

#[test]
fn map_keys_nest_only_so_deep() {
    let nested = |n: usize| format!("{}1{}", "#{".repeat(n), " => 1}".repeat(n));
    let t = p(&nested(MAX_MAP_KEY_NESTING), Erlang);
    assert!(exact_eq(&p(&print(&t, Erlang), Erlang), &t));
    let e = parse(&nested(MAX_MAP_KEY_NESTING + 1), Erlang).expect_err("too deep in keys");
    assert!(e.message.contains("map keys nested"), "{e}");
    assert_eq!(e.column, 2 * MAX_MAP_KEY_NESTING + 1);
}

#[test]
fn parse_pid_reads_both_forms() {
    assert_eq!(parse_pid(" <0.85.3> ").unwrap(), Pid::new("", 85, 3, 0));
    assert_eq!(parse_pid("#PID<1.2.3>").unwrap(), Pid::new("", 2, 3, 0));
    assert_eq!(parse_pid("ok").unwrap_err().column, 1);
    assert_eq!(parse_pid("\u{3000} ok").unwrap_err().column, 3);
    assert!(parse_pid("<0.1.99999999999>").is_err());
}

#[test]
fn json_mapping() {
    let cases: Vec<(Term, &str)> = vec![
        (int(42), "42"),
        (big(1i64 << 53), r#"{"$int":"9007199254740992"}"#),
        (big((1i64 << 53) - 1), "9007199254740991"),
        (float(1.0), "1.0"),
        (float(-0.0), "-0.0"),
        (float(1e300), "1.0e300"),
        (atom("true"), "true"),
        (atom("nil"), "null"),
        (atom("ok"), r#"{"$atom":"ok"}"#),
        (bin("tëxt\n\"\u{1}"), "\"tëxt\\n\\\"\\u0001\""),
        (bin(&[1u8, 2, 255]), r#"{"$binary":"AQL/"}"#),
        (
            bits(&[1, 2], 3),
            r#"{"$bitstring":{"base64":"AUA=","bits":11}}"#,
        ),
        (list(vec![int(1), atom("a")]), r#"[1,{"$atom":"a"}]"#),
        (chars("hi"), "[104,105]"),
        (
            improper(vec![int(1)], int(2)),
            r#"{"$improper_list":{"elements":[1],"tail":2}}"#,
        ),
        (tuple(vec![]), r#"{"$tuple":[]}"#),
        (
            map(vec![(bin("b"), int(2)), (bin("a"), int(1))]),
            r#"{"a":1,"b":2}"#,
        ),
        (
            map(vec![(atom("name"), bin("x"))]),
            r#"{"$atom_keys":{"name":"x"}}"#,
        ),
        (
            map(vec![(bin("$atom"), bin("x"))]),
            r#"{"$map":[["$atom","x"]]}"#,
        ),
        (
            map(vec![(atom("a"), int(1)), (bin("a"), int(2))]),
            r#"{"$map":[[{"$atom":"a"},1],["a",2]]}"#,
        ),
        (map(vec![]), "{}"),
        (
            Term::from(Pid::new("a@h", 85, 0, 3)),
            r#"{"$pid":{"node":"a@h","id":85,"serial":0,"creation":3}}"#,
        ),
        (
            Term::from(Port {
                node: Atom::from("a@h"),
                id: 9,
                creation: 3,
            }),
            r#"{"$port":{"node":"a@h","id":9,"creation":3}}"#,
        ),
        (
            Term::from(Reference {
                node: Atom::from("a@h"),
                id: vec![1, 2, 3],
                creation: 3,
            }),
            r#"{"$ref":{"node":"a@h","id":[1,2,3],"creation":3}}"#,
        ),
        (
            Term::from(ExternalFun::from(("lists", "map", 2))),
            r#"{"$fun":{"module":"lists","function":"map","arity":2}}"#,
        ),
    ];
    for (t, want) in cases {
        assert_eq!(to_json(&t), want, "{t:?}");
        let back = from_json(want).unwrap_or_else(|e| panic!("{want}: {e}"));
        assert!(exact_eq(&back, &t), "{want} read back as {back:?}");
    }
    // Hand-written: whitespace, big plain integers, escapes, duplicate keys keep the last.
    let t = from_json(
        " { \"k\" : [ 123456789012345678901234567890 , \"\\ud83d\\ude00\" ], \"k\": 1 } ",
    )
    .unwrap();
    assert!(exact_eq(&t, &map(vec![(bin("k"), int(1))])));
    for (bad, col) in [
        ("[1,]", 4),
        ("{\"$nope\":1}", 1),
        ("{\"a\":1,\"$atom\":\"x\"}", 1),
        ("1 2", 3),
        ("\"\\x\"", 2),
        ("1e999", 1),
        ("[", 2),
    ] {
        let e = from_json(bad).expect_err(bad);
        assert_eq!(e.column, col, "{bad}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// The zoo terms that parse back: no refs, ports or funs (they only print), pids on node
/// `''` with creation 0 (a printed pid does not carry its node), atoms the BEAM accepts.
fn printable_zoo() -> Vec<Term> {
    zoo()
        .into_iter()
        .filter_map(|t| match t {
            Term::Reference(_) | Term::Port(_) | Term::ExternalFun(_) | Term::InternalFun(_) => {
                None
            }
            Term::Pid(p) => Some(pid(p.id, p.serial)),
            Term::Atom(a) if a.name.chars().count() > 255 => None,
            t => Some(t),
        })
        .collect()
}

const ATOMS: &[&str] = &[
    "ok",
    "a",
    "nil",
    "true",
    "false",
    "undefined",
    "Hello",
    "hello world",
    "it's",
    "back\\slash",
    "case",
    "ok?",
    "x!",
    "Elixir.Foo.Bar",
    "Elixir",
    "Elixir.foo",
    "héllo",
    "日本",
    "",
    "a\nb",
    "$atom",
    "node@host",
    "#{x}",
    "\"",
    "_",
    "a.b",
    "+",
    "😀",
];

fn random_string(rng: &mut StdRng) -> String {
    let pool = [
        'a', 'Z', ' ', '"', '\'', '\\', '#', '{', '\n', '\t', '\u{1}', '\u{7f}', 'é', 'ÿ', '日',
        '😀', '\u{a0}', '\u{2028}', '0',
    ];
    let n = rng.random_range(0..8);
    (0..n)
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

fn random_float(rng: &mut StdRng) -> f64 {
    match rng.random_range(0..6) {
        0 => [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e300,
            5e-324,
            f64::MAX,
            1e21,
            1e-5,
        ][rng.random_range(0..10)],
        1 => rng.random_range(-1000..1000) as f64,
        2 => rng.random::<f64>() * 10f64.powi(rng.random_range(-30..30)),
        _ => loop {
            let f = f64::from_bits(rng.random::<u64>());
            if f.is_finite() {
                break f;
            }
        },
    }
}

fn random_term(rng: &mut StdRng, zoo: &[Term], depth: u32) -> Term {
    let leaf = depth == 0 || rng.random_range(0..3) == 0;
    if leaf {
        return match rng.random_range(0..12) {
            0 => zoo[rng.random_range(0..zoo.len())].clone(),
            1 => atom(ATOMS[rng.random_range(0..ATOMS.len())]),
            2 => int(rng.random()),
            3 => {
                let b = BigInt::from(rng.random::<i64>()) * BigInt::from(rng.random::<u64>())
                    + BigInt::from(i64::from(i32::MAX) + 1);
                super::parse::int_term(b)
            }
            4 => float(random_float(rng)),
            5 => bin(random_string(rng).as_bytes()),
            6 => bin(&(0..rng.random_range(0..6))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<_>>()),
            7 => chars(&random_string(rng)),
            8 => {
                let n = rng.random_range(1..4);
                let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                let tail = rng.random_range(1..8u8);
                if let Some(last) = bytes.last_mut() {
                    *last &= (1u8 << tail) - 1;
                }
                bits(&bytes, tail)
            }
            9 => pid(rng.random(), rng.random_range(0..8192)),
            10 => bytelist(
                &(0..rng.random_range(1..5))
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<_>>(),
            ),
            _ => list(vec![]),
        };
    }
    let n = rng.random_range(0..5);
    let kids = |rng: &mut StdRng| {
        (0..n)
            .map(|_| random_term(rng, zoo, depth - 1))
            .collect::<Vec<_>>()
    };
    match rng.random_range(0..6) {
        0 => tuple(kids(rng)),
        1 => list(kids(rng)),
        2 => {
            // At least one element: `[|t]` is not a term (eetf can hold it; Erlang cannot).
            let mut k = kids(rng);
            if k.is_empty() {
                k.push(random_term(rng, zoo, 0));
            }
            improper(k, random_term(rng, zoo, 0))
        }
        3 => list(
            (0..n)
                .map(|_| {
                    tuple(vec![
                        atom(ATOMS[rng.random_range(0..ATOMS.len())]),
                        random_term(rng, zoo, depth - 1),
                    ])
                })
                .collect(),
        ),
        4 => map((0..n)
            .map(|_| {
                (
                    random_term(rng, zoo, depth - 1),
                    random_term(rng, zoo, depth - 1),
                )
            })
            .collect()),
        _ => map((0..n)
            .map(|_| {
                (
                    atom(ATOMS[rng.random_range(0..ATOMS.len())]),
                    random_term(rng, zoo, depth - 1),
                )
            })
            .collect()),
    }
}

/// print → parse gives back an exactly equal term, in both syntaxes, for 2000 random terms
/// (seeded) and every printable zoo term; so does to_json → from_json.
#[test]
fn print_then_parse_is_identity() {
    let zoo = printable_zoo();
    let mut rng = StdRng::seed_from_u64(13);
    let terms = zoo
        .iter()
        .cloned()
        .chain((0..2000).map(|_| random_term(&mut rng, &zoo, 4)));
    for (i, t) in terms.enumerate() {
        for s in [Erlang, Elixir] {
            let text = print(&t, s);
            let back = parse(&text, s).unwrap_or_else(|e| panic!("case {i} {s:?}: {text}: {e}"));
            assert!(
                exact_eq(&back, &t),
                "case {i} {s:?}: {text} read back as {}",
                print(&back, s)
            );
            assert_eq!(print(&back, s), text, "case {i} {s:?}: printing is stable");
        }
        let json = to_json(&t);
        let back = from_json(&json).unwrap_or_else(|e| panic!("case {i}: {json}: {e}"));
        assert!(
            exact_eq(&back, &t),
            "case {i}: {json} read back as {}",
            to_json(&back)
        );
    }
}

/// Issue 13's round trip: parse → encode (kvnode's encoder, [`crate::etf::encode`], which
/// corrects eetf's lists of small negative integers) → decode (kvnode's validating decoder)
/// → print → parse gives back an exactly equal term, in both syntaxes, every case.
#[test]
fn parse_encode_decode_print_parse() {
    let zoo = printable_zoo();
    let mut rng = StdRng::seed_from_u64(14);
    for i in 0..2000 {
        let t = random_term(&mut rng, &zoo, 4);
        for s in [Erlang, Elixir] {
            let text = print(&t, s);
            let parsed = p(&text, s);
            let mut bytes = Vec::new();
            crate::etf::encode::encode(&parsed, &mut bytes).expect("encodes");
            let decoded = crate::etf::decode_exact(&bytes, &crate::etf::Limits::default())
                .unwrap_or_else(|e| panic!("case {i} {s:?}: {text}: {e:?}"));
            let again = p(&print(&decoded, s), s);
            assert!(
                exact_eq(&again, &parsed),
                "case {i} {s:?}: {text} came back as {}",
                print(&again, s)
            );
        }
    }
}

/// The exact order tells apart what `=:=` does and nothing else.
#[test]
fn exact_equality_is_erlangs() {
    assert!(!exact_eq(&int(1), &float(1.0)));
    assert!(!exact_eq(&float(0.0), &float(-0.0)));
    assert!(exact_eq(&bytelist(b"abc"), &chars("abc")));
    assert!(exact_eq(&big(5), &int(5)));
    assert!(exact_eq(
        &improper(vec![int(1)], list(vec![int(2)])),
        &list(vec![int(1), int(2)])
    ));
    assert!(exact_eq(&bits(&[1, 0xE5], 3), &bits(&[1, 0x05], 3)));
    assert!(!exact_eq(&bin(""), &list(vec![])));
    assert!(!exact_eq(&atom("a"), &bin("a")));
    use std::cmp::Ordering::Less;
    let order = [
        int(-5),
        float(-0.0),
        float(0.0),
        int(1),
        float(1.0),
        big(BigInt::from(1u8) << 80),
        float(1e30),
        atom("a"),
        atom("b"),
        pid(1, 0),
        tuple(vec![]),
        tuple(vec![int(1)]),
        map(vec![]),
        list(vec![]),
        improper(vec![int(1)], int(2)),
        list(vec![int(1)]),
        list(vec![int(1), int(2)]),
        bits(&[0], 1),
        bin("a"),
    ];
    for w in order.windows(2) {
        assert_eq!(
            super::compare(&w[0], &w[1]),
            Less,
            "{:?} < {:?}",
            w[0],
            w[1]
        );
        assert_eq!(super::compare(&w[1], &w[0]), Less.reverse());
    }
}

fn has_pid(t: &Term) -> bool {
    let mut stack = vec![t];
    while let Some(x) = stack.pop() {
        match x {
            Term::Pid(_) => return true,
            Term::List(l) => stack.extend(&l.elements),
            Term::ImproperList(l) => {
                stack.extend(&l.elements);
                stack.push(&l.last);
            }
            Term::Tuple(tu) => stack.extend(&tu.elements),
            Term::Map(m) => stack.extend(m.map.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
    }
    false
}

/// Reads each line of the file named by `KVNODE_SYNTAX_IN` as a term, prints the hex of its
/// `term_to_binary` (UTF-8 atoms, as the distribution sends them: kvnode refuses latin-1 ones) and the shell's own printing of it, one line each.
const ERLANG_READER: &str = r#"
io:setopts(standard_io, [{encoding, unicode}]),
{ok, B} = file:read_file(os:getenv("KVNODE_SYNTAX_IN")),
[try
   {ok, Ts, _} = erl_scan:string(unicode:characters_to_list(<<L/binary, ". ">>)),
   {ok, [E]} = erl_parse:parse_exprs(Ts),
   {value, V, _} = erl_eval:expr(E, []),
   io:put_chars([binary:encode_hex(term_to_binary(V, [{minor_version, 2}])), $\n,
                 io_lib_pretty:print(V, [{line_length, 100000000}, {encoding, unicode}]), $\n])
 catch C:R -> io:format("ERR ~p:~p~nERR~n", [C, R])
 end || L <- binary:split(B, <<"\n">>, [global, trim_all])],
halt()."#;

const ELIXIR_READER: &str = r#"
System.fetch_env!("KVNODE_SYNTAX_IN") |> File.read!() |> String.split("\n", trim: true)
|> Enum.each(fn l ->
  try do
    {v, _} = Code.eval_string(l)
    IO.puts(Base.encode16(:erlang.term_to_binary(v, minor_version: 2)))
    IO.puts(inspect(v, limit: :infinity, printable_limit: :infinity))
  rescue
    e -> IO.puts("ERR " <> Exception.message(e)); IO.puts("ERR")
  end
end)"#;

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The real shells (the host's `erl` and `elixir`) read what we print to exactly the terms we
/// printed (compared through their `term_to_binary`, decoded by kvnode's decoder), and we read
/// what they print (`io_lib_pretty`, IEx's `inspect`) back to the same terms. Pids are left
/// out: their text does not parse in a shell.
#[test]
fn real_shells_agree_with_our_syntax() {
    let zoo = printable_zoo();
    let mut rng = StdRng::seed_from_u64(15);
    let terms: Vec<Term> = (0..300)
        .map(|_| random_term(&mut rng, &zoo, 3))
        .filter(|t| !has_pid(t))
        .collect();
    for (syntax, cmd, args) in [
        (Erlang, "erl", vec!["-noshell", "-eval", ERLANG_READER]),
        (Elixir, "elixir", vec!["-e", ELIXIR_READER]),
    ] {
        let input = std::env::temp_dir().join(format!(
            "kvnode-syntax-{}-{syntax:?}.txt",
            std::process::id()
        ));
        let texts: Vec<String> = terms.iter().map(|t| print(t, syntax)).collect();
        std::fs::write(&input, texts.join("\n") + "\n").expect("write input");
        let out = std::process::Command::new(cmd)
            .args(&args)
            .env("KVNODE_SYNTAX_IN", &input)
            .output()
            .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
        let _ = std::fs::remove_file(&input);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            2 * terms.len(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, (t, text)) in terms.iter().zip(&texts).enumerate() {
            let (hex, shown) = (lines[2 * i], lines[2 * i + 1]);
            let bytes = unhex(hex).unwrap_or_else(|| panic!("{cmd} could not read {text}: {hex}"));
            let theirs = crate::etf::decode_exact(&bytes, &crate::etf::Limits::default())
                .unwrap_or_else(|e| panic!("{cmd}: {text}: {e:?}"));
            assert!(
                exact_eq(&theirs, t),
                "{cmd} read {text} as {}",
                print(&theirs, syntax)
            );
            let ours =
                parse(shown, syntax).unwrap_or_else(|e| panic!("{cmd} printed {shown}: {e}"));
            assert!(exact_eq(&ours, t), "{cmd} printed {text} as {shown}");
        }
    }
}

/// Throughput figures for the report (debug build unless run with --release):
/// `cargo test --lib measure_syntax_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_syntax_throughput() {
    let zoo = printable_zoo();
    let mut rng = StdRng::seed_from_u64(16);
    let big = list(
        (0..20_000)
            .map(|_| random_term(&mut rng, &zoo, 2))
            .collect(),
    );
    for s in [Erlang, Elixir] {
        let t0 = std::time::Instant::now();
        let text = print(&big, s);
        let printed = t0.elapsed();
        let t0 = std::time::Instant::now();
        let back = parse(&text, s).expect("parses");
        let parsed = t0.elapsed();
        assert!(exact_eq(&back, &big));
        eprintln!(
            "{s:?}: {} bytes printed in {printed:?} ({:.1} MB/s), parsed in {parsed:?} ({:.1} MB/s)",
            text.len(),
            text.len() as f64 / printed.as_secs_f64() / 1e6,
            text.len() as f64 / parsed.as_secs_f64() / 1e6
        );
    }
    let t0 = std::time::Instant::now();
    let json = to_json(&big);
    let written = t0.elapsed();
    let t0 = std::time::Instant::now();
    let back = from_json(&json).expect("reads");
    let read = t0.elapsed();
    assert!(exact_eq(&back, &big));
    eprintln!(
        "JSON: {} bytes written in {written:?}, read in {read:?}",
        json.len()
    );
}

/// Two maps of depth `d` whose keys are maps of depth `d - 1`, differing only in the value of
/// their last key: sorting a map's keys must look deep into them, and every level doubles
/// the term.
fn nested_key_maps(d: u32) -> (Term, Term) {
    if d == 0 {
        return (int(0), int(1));
    }
    let (a, b) = nested_key_maps(d - 1);
    (
        map(vec![(a.clone(), int(0)), (b.clone(), int(0))]),
        map(vec![(a, int(0)), (b, int(1))]),
    )
}

#[test]
fn map_keys_nested_in_map_keys_print_in_near_linear_work() {
    // A peer's reply of this shape at the decoder's key nesting limit (16) is about 0.5 MB;
    // each map sorted once, printing it is a few million steps. Sorting every map again at
    // each comparison (4^depth steps) took 72 s for depth 13 in `kvnode rpc` (debug build).
    let depth = 12;
    let (term, _) = nested_key_maps(depth);
    let terms = 1u64 << (depth + 2);
    type Output = fn(&Term) -> String;
    let outputs: [(&str, Output); 3] = [
        ("Erlang", |t| print(t, Erlang)),
        ("Elixir", |t| print(t, Elixir)),
        ("JSON", to_json),
    ];
    for (what, output) in outputs {
        super::order::STEPS.with(|s| s.set(0));
        let text = output(&term);
        let steps = super::order::STEPS.with(|s| s.get());
        assert!(
            steps <= terms * u64::from(depth) * 4,
            "{what}: {steps} comparison steps for a term of about {terms} terms"
        );
        assert!(text.len() > terms as usize, "{what}: {} bytes", text.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Printing straight from external term format (`print_bytes`, `json_bytes`).

fn encoded(t: &Term) -> Vec<u8> {
    let mut bytes = Vec::new();
    crate::etf::encode::encode(t, &mut bytes).expect("encodes");
    bytes
}

/// Terms for the Elixir forms the bytes printers must also get right: keyword lists and
/// maps with atom keys, maps as keys, Latin-1 atoms.
fn extra_zoo() -> Vec<Term> {
    let kw = list(vec![
        tuple(vec![atom("a"), int(1)]),
        tuple(vec![atom("b c"), tuple(vec![atom("x"), list(vec![])])]),
    ]);
    vec![
        kw.clone(),
        map(vec![(atom("a"), kw.clone()), (atom("b"), map(vec![]))]),
        map(vec![(atom("a"), int(1)), (int(1), atom("a"))]),
        map(vec![
            (float(0.0), atom("pos")),
            (int(0), atom("int")),
            (float(1.0), int(1)),
            (int(1), int(2)),
        ]),
        map(vec![
            (map(vec![(int(1), int(2))]), int(1)),
            (map(vec![(int(1), int(1))]), int(2)),
            (map(vec![(atom("z"), int(0))]), int(3)),
            (tuple(vec![int(1)]), int(4)),
            (list(vec![int(1), atom("x")]), int(5)),
            (bytelist(b"ab"), int(6)),
            (list(vec![int(97), int(97)]), int(7)),
            (improper(vec![int(97)], int(3)), int(8)),
            (bin("ab"), int(9)),
        ]),
        map((0..40).map(|i| (bin(&format!("k{i}")), int(i))).collect()),
        map((0..40).map(|i| (atom(&format!("k{i}")), int(i))).collect()),
        map(vec![(bin("$x"), int(1)), (bin("y"), int(2))]),
        list(vec![
            bytelist(b"hi"),
            list(vec![int(104), int(105)]),
            bytelist(&[1, 200]),
        ]),
        atom("Ã©"),
    ]
}

/// The bytes printers print every term eetf can hold exactly as the term printers print the
/// decoded term: as one leaf (the CLI's path), and with every tuple, list and map an arena
/// node (the path of terms around a native record), in both syntaxes and JSON.
#[test]
fn bytes_printers_agree_with_the_term_printers() {
    let zoo: Vec<Term> = zoo().into_iter().chain(extra_zoo()).collect();
    let mut rng = StdRng::seed_from_u64(21);
    let randoms: Vec<Term> = (0..3000)
        .map(|_| random_term(&mut rng, &printable_zoo(), 4))
        .collect();
    for (i, t) in zoo.iter().chain(&randoms).enumerate() {
        let bytes = encoded(t);
        let d = match crate::etf::decode_exact(&bytes, &crate::etf::Limits::default()) {
            Ok(d) => d,
            // A map holding one key twice (`"abc"` as a string and as a list encode alike):
            // refused, as `binary_to_term` refuses it.
            Err(crate::etf::TermError::MapKeysMerged) => {
                assert!(super::print_bytes(&bytes, Erlang).is_err(), "case {i}");
                continue;
            }
            Err(e) => panic!("case {i}: {e}"),
        };
        for s in [Erlang, Elixir] {
            let want = print(&d, s);
            assert_eq!(
                super::print_bytes(&bytes, s).unwrap(),
                want,
                "case {i} {s:?}"
            );
            assert_eq!(
                super::raw::print_all_nodes(&bytes, Some(s)).unwrap(),
                want,
                "case {i} {s:?}, all nodes"
            );
        }
        let want = to_json(&d);
        assert_eq!(super::json_bytes(&bytes).unwrap(), want, "case {i} json");
        assert_eq!(
            super::raw::print_all_nodes(&bytes, None).unwrap(),
            want,
            "case {i} json, all nodes"
        );
    }
}

/// `RECORD_EXT` bytes (version byte first): `fields` as (name, encoded value without its
/// version byte).
fn record(module: &str, name: &str, exported: bool, fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let atom = |out: &mut Vec<u8>, a: &str| {
        out.push(119);
        out.push(a.len() as u8);
        out.extend_from_slice(a.as_bytes());
    };
    let mut out = vec![131, 67];
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    out.push(u8::from(exported));
    atom(&mut out, module);
    atom(&mut out, name);
    for (f, _) in fields {
        atom(&mut out, f);
    }
    for (_, v) in fields {
        out.extend_from_slice(v);
    }
    out
}

/// A term's encoding without its version byte.
fn inner(t: &Term) -> Vec<u8> {
    encoded(t)[1..].to_vec()
}

fn versioned(parts: &[u8]) -> Vec<u8> {
    let mut v = vec![131];
    v.extend_from_slice(parts);
    v
}

/// Native records print as OTP 29 prints them (the expected texts are what OTP 29's `~p`
/// printed for the same terms), in Elixir as Elixir 1.20's `inspect` does; JSON tags them.
#[test]
fn native_records_print_as_otp_29_does() {
    // term_to_binary(records:create(geo, pt, [{x, 1}, {y, 2.5}], #{is_exported => true})),
    // as OTP 29 wrote it.
    let pt: Vec<u8> = vec![
        131, 67, 0, 0, 0, 2, 1, 119, 3, 103, 101, 111, 119, 2, 112, 116, 119, 1, 120, 119, 1, 121,
        97, 1, 70, 64, 4, 0, 0, 0, 0, 0, 0,
    ];
    let shown = "#geo:pt{x = 1,y = 2.5}";
    for s in [Erlang, Elixir] {
        assert_eq!(super::print_bytes(&pt, s).unwrap(), shown);
    }
    assert_eq!(
        super::json_bytes(&pt).unwrap(),
        r#"{"$record":{"module":"geo","name":"pt","exported":true,"fields":{"x":1,"y":2.5}}}"#
    );
    let pt2 = record(
        "geo",
        "pt",
        false,
        &[("y", inner(&float(2.5))), ("x", inner(&int(1)))],
    );
    let odd = record(
        "Mod X",
        "n-1",
        true,
        &[
            ("Fa", inner(&bin("s"))),
            ("b", inner(&list(vec![int(1), int(2)]))),
            ("c", pt[1..].to_vec()),
        ],
    );
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            odd.clone(),
            r#"#'Mod X':'n-1'{'Fa' = <<"s">>,b = [1,2],c = #geo:pt{x = 1,y = 2.5}}"#,
            r#"#'Mod X':'n-1'{'Fa' = <<"s">>,b = [1,2],c = #geo:pt{x = 1,y = 2.5}}"#,
        ),
        (record("m", "empty", true, &[]), "#m:empty{}", "#m:empty{}"),
        (
            record("m", "if", false, &[("end", inner(&int(1)))]),
            "#m:'if'{'end' = 1}",
            "#m:'if'{'end' = 1}",
        ),
        (
            record(
                "Elixir.Foo.Bar",
                "r",
                true,
                &[("b", inner(&bytelist(b"ab")))],
            ),
            "#'Elixir.Foo.Bar':r{b = \"ab\"}",
            "#'Elixir.Foo.Bar':r{b = \"ab\"}",
        ),
        // {R}, [R|R2], #{R => 1, a => R}, [a: R]: OTP 29 and Elixir 1.20 print these so.
        (
            versioned(&[&[104, 1][..], &pt[1..]].concat()),
            "{#geo:pt{x = 1,y = 2.5}}",
            "{#geo:pt{x = 1,y = 2.5}}",
        ),
        (
            versioned(&[&[108, 0, 0, 0, 1][..], &pt[1..], &pt2[1..]].concat()),
            "[#geo:pt{x = 1,y = 2.5}|#geo:pt{y = 2.5,x = 1}]",
            "[#geo:pt{x = 1,y = 2.5} | #geo:pt{y = 2.5,x = 1}]",
        ),
        (
            versioned(
                &[
                    &[116, 0, 0, 0, 2][..],
                    &pt[1..],
                    &inner(&int(1)),
                    &inner(&atom("a")),
                    &pt[1..],
                ]
                .concat(),
            ),
            "#{a => #geo:pt{x = 1,y = 2.5},#geo:pt{x = 1,y = 2.5} => 1}",
            "%{:a => #geo:pt{x = 1,y = 2.5}, #geo:pt{x = 1,y = 2.5} => 1}",
        ),
        (
            versioned(
                &[
                    &[108, 0, 0, 0, 1, 104, 2][..],
                    &inner(&atom("a")),
                    &pt[1..],
                    &[106],
                ]
                .concat(),
            ),
            "[{a,#geo:pt{x = 1,y = 2.5}}]",
            "[a: #geo:pt{x = 1,y = 2.5}]",
        ),
    ];
    for (i, (bytes, erl, ex)) in cases.iter().enumerate() {
        assert_eq!(super::print_bytes(bytes, Erlang).unwrap(), *erl, "case {i}");
        assert_eq!(super::print_bytes(bytes, Elixir).unwrap(), *ex, "case {i}");
        assert!(super::json_bytes(bytes).is_ok(), "case {i}");
    }
}

/// Map keys sort in OTP 29's order with records among them: after tuples, before maps; by
/// module, name, exported flag, arity, field names, then values (as OTP 29 compared them).
#[test]
fn record_keys_sort_in_otp_29_order() {
    let r = |m: &str, n: &str, e: bool, f: &[(&str, i32)]| {
        let fields: Vec<(&str, Vec<u8>)> = f.iter().map(|&(k, v)| (k, inner(&int(v)))).collect();
        record(m, n, e, &fields)[1..].to_vec()
    };
    // Sorted as OTP 29 sorts them (ascending).
    let keys: Vec<Vec<u8>> = vec![
        inner(&tuple(vec![
            int(1),
            int(2),
            int(3),
            int(4),
            int(5),
            int(6),
            int(7),
        ])),
        r("a", "a", false, &[]),
        r("a", "a", true, &[]),
        r("a", "b", true, &[("x", 1)]),
        r("a", "z", false, &[("x", 2)]),
        r("a", "z", false, &[("x", 1), ("y", 2)]),
        r("a", "z", true, &[("x", 1)]),
        r("a", "z", true, &[("x", 1), ("y", 2)]),
        r("a", "z", true, &[("x", 2), ("y", 1)]),
        r("a", "z", true, &[("y", 1), ("x", 1)]),
        r("b", "a", true, &[]),
        inner(&map(vec![])),
        inner(&list(vec![])),
    ];
    // The map holds them in reverse; printing sorts them.
    let mut bytes = vec![131, 116];
    bytes.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for (i, k) in keys.iter().enumerate().rev() {
        bytes.extend_from_slice(k);
        bytes.extend_from_slice(&inner(&int(i as i32)));
    }
    let text = super::print_bytes(&bytes, Erlang).unwrap();
    let values: Vec<i32> = text
        .split(" => ")
        .skip(1)
        .map(|s| {
            s.split([',', '}'])
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1)
        })
        .collect();
    assert_eq!(values, (0..keys.len() as i32).collect::<Vec<_>>(), "{text}");
}

/// A map with both 0.0 and -0.0 as keys (eetf would merge them) prints both, in term order;
/// so does one whose keys differ only inside (`{0.0}`, `{-0.0}`).
#[test]
fn maps_with_both_zeros_print_every_key() {
    let m = |keys: &[Term]| {
        let mut b = vec![131, 116];
        b.extend_from_slice(&(keys.len() as u32).to_be_bytes());
        for (i, k) in keys.iter().enumerate() {
            b.extend_from_slice(&inner(k));
            b.extend_from_slice(&inner(&int(i as i32)));
        }
        b
    };
    let flat = m(&[float(0.0), float(-0.0)]);
    assert!(crate::etf::decode_exact(&flat, &crate::etf::Limits::default()).is_err());
    assert_eq!(
        super::print_bytes(&flat, Erlang).unwrap(),
        "#{-0.0 => 1,0.0 => 0}"
    );
    assert_eq!(
        super::print_bytes(&flat, Elixir).unwrap(),
        "%{-0.0 => 1, 0.0 => 0}"
    );
    assert_eq!(
        super::json_bytes(&flat).unwrap(),
        r#"{"$map":[[-0.0,1],[0.0,0]]}"#
    );
    let nested = m(&[tuple(vec![float(-0.0)]), tuple(vec![float(0.0)]), atom("a")]);
    assert_eq!(
        super::print_bytes(&nested, Erlang).unwrap(),
        "#{a => 2,{-0.0} => 0,{0.0} => 1}"
    );
    // Inside a list inside a map value: the rest prints as the term printer would.
    let mut outer = vec![131, 108, 0, 0, 0, 2];
    outer.extend_from_slice(&inner(&atom("x")));
    outer.extend_from_slice(&flat[1..]);
    outer.push(106);
    assert_eq!(
        super::print_bytes(&outer, Elixir).unwrap(),
        "[:x, %{-0.0 => 1, 0.0 => 0}]"
    );
}

/// A record under 100 000 levels of lists and tuples prints on a test thread's small stack:
/// nothing recurses with the depth.
#[test]
fn deep_terms_around_a_record_print_without_recursion() {
    let depth = 100_000 - 2;
    let rec = record("m", "r", true, &[("f", inner(&int(1)))]);
    let mut bytes = vec![131];
    for i in 0..depth {
        if i % 2 == 0 {
            bytes.extend_from_slice(&[108, 0, 0, 0, 1]);
        } else {
            bytes.extend_from_slice(&[104, 1]);
        }
    }
    bytes.extend_from_slice(&rec[1..]);
    for i in (0..depth).rev() {
        if i % 2 == 0 {
            bytes.push(106);
        }
    }
    let text = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || super::print_bytes(&bytes, Elixir).map(|t| t.len()))
        .expect("spawn")
        .join()
        .expect("no stack overflow");
    assert_eq!(text.unwrap(), depth + depth + "#m:r{f = 1}".len());
    // One level too deep is refused, not printed.
    let mut too_deep = vec![131];
    for _ in 0..crate::etf::configured_depth() {
        too_deep.extend_from_slice(&[104, 1]);
    }
    too_deep.extend_from_slice(&rec[1..]);
    assert!(super::print_bytes(&too_deep, Erlang).is_err());
}

/// The bytes printers on hostile bytes: valid terms (with native records and merging maps
/// inside) mutated at random (bytes changed, cut, repeated, counts bumped) are refused or
/// printed, never a panic.
#[test]
fn bytes_printers_never_panic_on_mutated_bytes() {
    let mut rng = StdRng::seed_from_u64(77);
    let pt = record(
        "geo",
        "pt",
        true,
        &[("x", inner(&int(1))), ("y", inner(&float(2.5)))],
    );
    let zeros = map(vec![(float(0.0), atom("pos")), (int(0), atom("int"))]);
    let mut seeds: Vec<Vec<u8>> = zoo()
        .into_iter()
        .chain(extra_zoo())
        .map(|t| encoded(&t))
        .collect();
    seeds.push(pt.clone());
    // A tuple and a list around the record, and a map keyed by it.
    let mut around = vec![131, 104, 2];
    around.extend_from_slice(&pt[1..]);
    around.extend_from_slice(&inner(&zeros));
    seeds.push(around);
    let mut keyed = vec![131, 116, 0, 0, 0, 2];
    keyed.extend_from_slice(&pt[1..]);
    keyed.extend_from_slice(&inner(&int(1)));
    keyed.extend_from_slice(&inner(&float(-0.0)));
    keyed.extend_from_slice(&inner(&int(2)));
    seeds.push(keyed);
    let printable = printable_zoo();
    seeds.extend((0..200).map(|_| encoded(&random_term(&mut rng, &printable, 4))));
    let mut printed = 0;
    for round in 0..20_000 {
        let mut b = seeds[round % seeds.len()].clone();
        for _ in 0..rng.random_range(1..=3) {
            if b.len() < 2 {
                break;
            }
            let at = rng.random_range(1..b.len());
            match rng.random_range(0..5) {
                0 => b[at] = rng.random(),
                1 => b.truncate(at),
                2 => {
                    let end = rng.random_range(at..=b.len());
                    let piece = b[at..end].to_vec();
                    b.splice(at..at, piece);
                }
                3 => b[at] = b[at].wrapping_add(1),
                _ => b[at] = b[at].wrapping_sub(1),
            }
        }
        let results = [
            super::print_bytes(&b, Erlang).is_ok(),
            super::print_bytes(&b, Elixir).is_ok(),
            super::json_bytes(&b).is_ok(),
        ];
        assert!(
            results.iter().all(|&r| r == results[0]),
            "round {round}: the printers disagree on {b:?}: {results:?}"
        );
        // The test hook's arena of all nodes skips the leaves' exact decode (a map holding
        // one key twice is then printed, not refused): only its not panicking is checked.
        let _ = super::raw::print_all_nodes(&b, Some(Erlang));
        let _ = super::raw::print_all_nodes(&b, None);
        printed += usize::from(results[0]);
    }
    // Many mutations still make a valid term: the printers ran on those too.
    assert!(printed > 1000, "only {printed} mutated terms were valid");
}
