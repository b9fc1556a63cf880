//! `--ready-file`: the machine-readable signal that kvnode is up (tests/common waits for it
//! instead of scraping logs). Written atomically once the node listens and is registered,
//! removed on an orderly stop; an unwritable path is a clear error at start.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn ready_file_names_a_live_node_and_goes_on_orderly_stop() {
    let epmd_port = free_port();
    let kv = KvNode::start(&unique("kv_ready"), &unique("cookie"), epmd_port);
    let ready = &kv.ready;
    assert_eq!(ready.epmd_port, epmd_port);
    assert!(ready.creation > 0, "{ready:?}");
    // The port it names is kvnode's distribution listener: connectable now.
    std::net::TcpStream::connect(("127.0.0.1", ready.dist_port))
        .unwrap_or_else(|e| panic!("dist port {} from the ready file: {e}", ready.dist_port));
    // No temporary file is left beside it.
    let path = kv.ready_file();
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    assert!(!std::path::Path::new(&tmp).exists());
    // SIGTERM is an orderly stop: exit 0 and the file is gone.
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(kv.guard.pid() as i32, libc::SIGTERM) };
    let mut kv = kv;
    let status = wait_for("kvnode exit after SIGTERM", Duration::from_secs(15), || {
        kv.guard.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "exit {status}; logs:\n{}", kv.logs());
    assert!(!path.exists(), "ready file left after orderly stop");
}

#[test]
fn unwritable_ready_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(unique("kvnode_no_such_dir"));
    let path = dir.join("ready");
    let name = format!("{}@127.0.0.1", unique("kv_unready"));
    let epmd = free_port().to_string();
    let path_s = path.to_str().expect("utf-8 path");
    let err = kvnode_refuses(&[
        "--name",
        &name,
        "--cookie",
        "c",
        "--epmd-port",
        &epmd,
        "--ready-file",
        path_s,
    ]);
    assert!(
        err.contains("cannot write the ready file") && err.contains(&*path.to_string_lossy()),
        "stderr: {err}"
    );
}
