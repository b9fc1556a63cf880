//! The distribution frame decoder and the safe ETF decoder on arbitrary bytes.
//!
//! Input: a frame body (what follows the 4-byte length: pass-through byte 112, control
//! message, optional payload). The same bytes also go to `etf::decode`, both whole and
//! without their first byte (so a frame body's control message is decoded as a term too).
//! A term that decodes is then encoded and displayed, as kvnode may do with what it receives;
//! a term the validator accepts but eetf then rejects is reported as a crash (a validator bug).
#![no_main]

use eetf::DecodeError;
use kvnode::internals::transport::connection::decode_frame;
use kvnode::internals::etf::{self, Limits, TermError};
use libfuzzer_sys::fuzz_target;

fn decode_term(bytes: &[u8]) {
    match etf::decode(bytes, &Limits::default()) {
        Ok((term, len)) => {
            assert!(len <= bytes.len());
            let mut out = Vec::new();
            let _ = term.encode(&mut out);
            let _ = term.to_string();
        }
        // The validator's contract (src/etf/mod.rs): what it accepts, eetf decodes, except for a
        // float that eetf's own parsing finds non-finite.
        Err(TermError::Decode(DecodeError::NonFiniteFloat)) => {}
        Err(TermError::Decode(error)) => panic!("eetf rejected a validated term: {error:?}"),
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data, &Limits::default());
    decode_term(data);
    if let Some(rest) = data.get(1..) {
        decode_term(rest);
    }
});
