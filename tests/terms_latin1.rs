//! Latin-1 atoms with non-ASCII characters (`ATOM_EXT` / `SMALL_ATOM_EXT`, bytes >= 0x80)
//! from a real peer: a C node built on erl_interface sends KV calls whose requests a BEAM
//! node encoded with `term_to_binary(request, minor_version: 1)` (Latin-1 atoms, as OTP
//! before 20 sent them over distribution; ei's own encoder writes UTF-8 atoms even when
//! asked for Latin-1). eetf reads those bytes as UTF-8, so kvnode refused them as bad input
//! (closing the connection); now they decode as the same atoms in UTF-8, and a key spelled
//! in Latin-1 is the key an Elixir node spells in UTF-8 (one atom in BEAM). The byte lane
//! (`put`, `get`) and the decoding path (`put_new`, `cas`) are both exercised; the Elixir
//! side checks what was stored with `===`.

mod common;

use common::*;
use std::process::Command;

/// The host's erl_interface directory (include/, lib/).
fn erl_interface() -> Option<std::path::PathBuf> {
    let lib = std::path::Path::new("/usr/lib/erlang/lib");
    let mut dirs: Vec<_> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("erl_interface-"))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

#[test]
fn latin1_atoms_from_an_erl_interface_c_node_are_the_same_atoms() {
    let ei = erl_interface().expect("erl_interface is installed (erlang-dev)");
    let bin = std::env::temp_dir().join(unique("latin1_cnode"));
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/latin1_cnode.c");
    let built = Command::new("gcc")
        .arg("-o")
        .arg(&bin)
        .arg(source)
        .arg(format!("-I{}", ei.join("include").display()))
        .arg(format!("-L{}", ei.join("lib").display()))
        .args(["-lei", "-lpthread"])
        .output()
        .expect("run gcc");
    assert!(
        built.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _cleanup = RemoveOnDrop(bin.clone());
    let kv = KvNode::fresh("kv_latin1");
    // The requests, as a BEAM node writes them with Latin-1 atoms.
    let encoded = kv.script(
        "latin1_enc",
        r##"
for r <- [
  {:put, :"é", {:"café", ~c"x"}},
  {:put_new, :"ü", [:"ü", :"é"]},
  {:cas, :"é", {:"café", ~c"x"}, :"naïve"},
  {:get, :"ü"}
] do
  IO.puts("REQ " <> Base.encode16(:erlang.term_to_binary(r, minor_version: 1)))
end
"##,
    );
    let requests: Vec<&str> = encoded
        .lines()
        .filter_map(|l| l.strip_prefix("REQ "))
        .collect();
    assert_eq!(requests.len(), 4, "{encoded}");
    // Really Latin-1: ATOM_EXT (0x64), length 1, 0xe9 ('é').
    assert!(requests[0].contains("640001E9"), "{encoded}");
    let me = format!("{}@127.0.0.1", unique("cterms"));
    let port = kv.dist_port().to_string();
    let mut args = vec![
        "127.0.0.1",
        &port,
        &kv.cookie,
        &me,
        "Elixir.DistributedExample.KVStore",
    ];
    args.extend(requests.iter().copied());
    let out = Command::new(&bin)
        .args(&args)
        .output()
        .expect("run the C node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "C node failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        kv.logs()
    );
    eprintln!("{stdout}");
    // The C node sent those bytes as they were.
    assert!(stdout.contains("640001e9"), "{stdout}");
    for reply in [
        "reply 0 ok",
        "reply 1 ok",
        "reply 2 ok",
        // ei prints the atoms of the list (checked exactly in Elixir below).
        "reply 3 [",
    ] {
        assert!(stdout.contains(reply), "{reply} missing:\n{stdout}");
    }
    kv.script(
        "latin1",
        r##"
show = fn t -> inspect(t) end
check = fn label, got, want ->
  if got !== want, do: raise("#{label}: got #{show.(got)}, want #{show.(want)}")
end
check.("cas result", GenServer.call(store, {:get, :"é"}), :"naïve")
check.("put_new", GenServer.call(store, {:get, :"ü"}), [:"ü", :"é"])
keys = GenServer.call(store, :keys)
check.("keys", Enum.sort(keys), Enum.sort([:"é", :"ü"]))
# The UTF-8 spelling of the key reaches the same entry.
:ok = GenServer.call(store, {:put, :"é", :again})
check.("one key", GenServer.call(store, :size), 2)
"##,
    );
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
