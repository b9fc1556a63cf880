//! EPMD wire constants and the name rules shared by the client and the embedded server.
//!
//! Every request on the EPMD port is a big-endian `u16` length followed by that many bytes, the
//! first of which is the request tag. Shapes follow the OTP ERTS User's Guide, "Distribution
//! Protocol", section "EPMD Protocol", and `erts/epmd/src/epmd_srv.c` (OTP 23+).

/// `ALIVE2_REQ` (`'x'`): register a node; the connection stays open while the node is alive.
pub const ALIVE2_REQ: u8 = 120;
/// `ALIVE2_RESP` (`'y'`): registration result with a 16-bit creation (distribution version < 6).
pub const ALIVE2_RESP: u8 = 121;
/// `ALIVE2_X_RESP` (`'v'`): registration result with a 32-bit creation (distribution version 6+).
pub const ALIVE2_X_RESP: u8 = 118;
/// `PORT_PLEASE2_REQ` (`'z'`): look up a node by name.
pub const PORT_PLEASE2_REQ: u8 = 122;
/// `PORT2_RESP` (`'w'`): the answer to `PORT_PLEASE2_REQ`.
pub const PORT2_RESP: u8 = 119;
/// `NAMES_REQ` (`'n'`): list registered nodes.
pub const NAMES_REQ: u8 = 110;
/// `DUMP_REQ` (`'d'`): list registered nodes with their file descriptors (local peers only).
pub const DUMP_REQ: u8 = 100;
/// `KILL_REQ` (`'k'`): ask the EPMD to exit (local peers only).
pub const KILL_REQ: u8 = 107;
/// `STOP_REQ` (`'s'`): ask the EPMD to drop a registration (needs `-relaxed_command_check`).
pub const STOP_REQ: u8 = 115;

/// The answer to a refused `KILL_REQ`.
pub const KILL_REFUSED: &[u8] = b"NO";

/// Result byte: success.
pub const RESULT_OK: u8 = 0;
/// Result byte: failure (name taken, invalid name, unknown node). Real epmd only sends 1.
pub const RESULT_ERROR: u8 = 1;
/// The creation real epmd sends alongside a failed registration.
pub const FAILED_CREATION: u32 = 99;

/// Node type of a normal Erlang node (`'M'`).
pub const NODE_TYPE_NORMAL: u8 = 77;
/// Node type of a hidden node (`'H'`).
pub const NODE_TYPE_HIDDEN: u8 = 72;
/// Protocol byte: TCP/IPv4.
pub const PROTOCOL_TCP_IPV4: u8 = 0;
/// Highest distribution version kvnode announces.
pub const DIST_VERSION_HIGHEST: u16 = 6;
/// Lowest distribution version kvnode announces.
pub const DIST_VERSION_LOWEST: u16 = 5;
/// From this highest version on, EPMD answers `ALIVE2_X_RESP` (32-bit creation).
pub const X_RESP_MIN_VERSION: u16 = 6;

/// Maximum node name length in characters (epmd: `verify_utf8(..) <= 255`).
pub const MAX_NAME_CHARS: usize = 255;
/// Maximum length of the `extra` field in bytes (epmd: `MAXSYMLEN`).
pub const MAX_EXTRA_BYTES: usize = 255 * 4;

/// Checks a node name (the part before `@`) the way epmd does: non-empty, valid UTF-8, no NUL
/// byte, at most `MAX_NAME_CHARS` characters. Returns the reason on failure.
pub fn check_name(name: &[u8]) -> Result<&str, &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.contains(&0) {
        return Err("the name contains a NUL byte");
    }
    let text = std::str::from_utf8(name).map_err(|_| "the name is not valid UTF-8")?;
    if text.chars().count() > MAX_NAME_CHARS {
        return Err("the name is longer than 255 characters");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert_eq!(check_name(b"kv"), Ok("kv"));
        assert_eq!(check_name("nöde".as_bytes()), Ok("nöde"));
        assert!(check_name(b"").is_err());
        assert!(check_name(b"a\0b").is_err());
        assert!(check_name(&[0xff, 0xfe]).is_err());
        assert!(check_name("é".repeat(255).as_bytes()).is_ok());
        assert!(check_name("é".repeat(256).as_bytes()).is_err());
    }
}
