//! The embedded EPMD server's request parser on arbitrary buffered bytes.
//!
//! Input: the bytes an EPMD connection has received (length prefix included). Besides "never
//! panic", checks that buffering is sound: a complete request is reported as "need more bytes"
//! for every shorter prefix, and trailing bytes do not change the answer.
#![no_main]

use kvnode::internals::epmd::proto::check_name;
use kvnode::internals::epmd::server::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(body)) = parse_request(data) {
        let len = 2 + body.len();
        assert!(
            body.len() <= 4096,
            "request body of {} bytes accepted",
            body.len()
        );
        assert_eq!(&data[2..len], body);
        // Any split of the request into segments: each prefix must ask for more bytes.
        for cut in [0, 1, 2, len / 2, len - 1] {
            assert!(
                matches!(parse_request(&data[..cut]), Ok(None)),
                "prefix of {cut} of a {len}-byte request is not 'need more'"
            );
        }
        // Bytes after the request (the next segment) do not change the result.
        assert_eq!(parse_request(&data[..len]).ok().flatten(), Some(body));
    }
    // The name rules shared with PORT_PLEASE2_REQ and ALIVE2_REQ.
    let _ = check_name(data);
});
