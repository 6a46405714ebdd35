//! Names that come from processes (comm, command line) are untrusted bytes: any length, any byte,
//! not necessarily UTF-8. [`display_name`] turns them into text that is safe to put into a label
//! value, a log line or a terminal, without losing information.

/// Renders untrusted bytes as printable, unambiguous UTF-8:
///
/// - printable UTF-8 (including non-ASCII letters) is kept as is;
/// - control characters (newline, ESC, DEL, C1 controls) and bytes that are not valid UTF-8
///   become `\xNN` (one per byte);
/// - a backslash becomes `\\`, so the rendering can be read back unambiguously;
/// - a trailing NUL and everything after it is dropped (comm is a NUL-padded C string).
pub fn display_name(raw: &[u8]) -> String {
    let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        push_hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\x");
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_unchanged() {
        assert_eq!(display_name(b"mariadbd\0\0\0\0\0\0\0\0"), "mariadbd");
        assert_eq!(display_name("café-wörker".as_bytes()), "café-wörker");
        assert_eq!(display_name(b"kworker/0:1-events"), "kworker/0:1-events");
    }

    #[test]
    fn hostile_bytes_become_visible_escapes() {
        assert_eq!(display_name(b"a\nb"), "a\\x0ab");
        assert_eq!(display_name(b"\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(display_name(b"bad\xff\xfeutf8"), "bad\\xff\\xfeutf8");
        assert_eq!(display_name(b"q\"uote"), "q\"uote");
        assert_eq!(display_name(b"back\\slash"), "back\\\\slash");
        // C1 control U+0085 (NEL) is valid UTF-8 but a control character.
        assert_eq!(display_name("x\u{85}y".as_bytes()), "x\\xc2\\x85y");
    }

    #[test]
    fn rendering_is_unambiguous() {
        // A literal "\xff" (4 characters) and the byte 0xff must not render the same.
        assert_ne!(display_name(b"\\xff"), display_name(b"\xff"));
    }

    #[test]
    fn stops_at_nul() {
        assert_eq!(display_name(b"abc\0garbage"), "abc");
        assert_eq!(display_name(b""), "");
    }
}
