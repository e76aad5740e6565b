//! The hybrid-vsock handshake a host client sends on the Unix socket:
//! `CONNECT <port>\n`, read byte by byte (so no byte of the stream after
//! the line is consumed), at most [`MAX_LINE`] bytes.

/// Longest accepted handshake line, newline included.
pub const MAX_LINE: usize = 32;

/// What the bytes read so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// No newline yet, still within the limit.
    Incomplete,
    /// A valid request for guest port `port`.
    Connect(u32),
    /// Garbage, overlong, or an out-of-range port.
    Invalid(&'static str),
}

/// Parses the bytes received so far (ending at the newline when complete).
pub fn parse(buf: &[u8]) -> Handshake {
    let Some(&last) = buf.last() else {
        return Handshake::Incomplete;
    };
    if last != b'\n' {
        if buf.len() >= MAX_LINE {
            return Handshake::Invalid("handshake line too long");
        }
        if buf.contains(&b'\n') {
            return Handshake::Invalid("data after the handshake line");
        }
        return Handshake::Incomplete;
    }
    if buf.len() > MAX_LINE {
        return Handshake::Invalid("handshake line too long");
    }
    let line = &buf[..buf.len() - 1];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return Handshake::Invalid("expected \"CONNECT <port>\"");
    };
    if port.is_empty() || port.len() > 10 || !port.iter().all(u8::is_ascii_digit) {
        return Handshake::Invalid("port is not a decimal number");
    }
    let Ok(text) = std::str::from_utf8(port) else {
        return Handshake::Invalid("port is not a decimal number");
    };
    match text.parse::<u32>() {
        Ok(p) => Handshake::Connect(p),
        Err(_) => Handshake::Invalid("port out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_connect_lines_parse() {
        assert_eq!(parse(b"CONNECT 1024\n"), Handshake::Connect(1024));
        assert_eq!(parse(b"CONNECT 0\n"), Handshake::Connect(0));
        assert_eq!(parse(b"CONNECT 4294967295\n"), Handshake::Connect(u32::MAX));
        assert_eq!(parse(b"CONNECT 52\r\n"), Handshake::Connect(52));
    }

    #[test]
    fn partial_lines_wait_for_more() {
        assert_eq!(parse(b""), Handshake::Incomplete);
        assert_eq!(parse(b"CONN"), Handshake::Incomplete);
        assert_eq!(parse(b"CONNECT 10"), Handshake::Incomplete);
    }

    #[test]
    fn garbage_overlong_and_out_of_range_are_refused() {
        assert!(matches!(parse(b"HELLO\n"), Handshake::Invalid(_)));
        assert!(matches!(parse(b"connect 1024\n"), Handshake::Invalid(_)));
        assert!(matches!(parse(b"CONNECT\n"), Handshake::Invalid(_)));
        assert!(matches!(parse(b"CONNECT -1\n"), Handshake::Invalid(_)));
        assert!(matches!(
            parse(b"CONNECT 1024 extra\n"),
            Handshake::Invalid(_)
        ));
        assert!(matches!(
            parse(b"CONNECT 4294967296\n"),
            Handshake::Invalid(_)
        ));
        assert!(matches!(
            parse(b"CONNECT 99999999999\n"),
            Handshake::Invalid(_)
        ));
        assert!(matches!(parse(&[b'A'; MAX_LINE]), Handshake::Invalid(_)));
        assert!(matches!(parse(b"CONNECT \xff\n"), Handshake::Invalid(_)));
    }
}
