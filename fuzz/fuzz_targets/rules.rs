//! Rule files and their templates: any text either parses or gives errors with a position;
//! parsed rules name any process (hostile comm, cmdline, exe and cgroup path) without panicking,
//! and the names they make are safe to show (no control characters, not empty).
//!
//! Input: the rule file, a NUL, then comm, cmdline (NUL-separated arguments), exe and cgroup
//! path, each a length byte and its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_user::model::{
    names::display_name,
    rules::{clean_cgroup, cmdline_text, parse, Subject},
};

fuzz_target!(|data: &[u8]| {
    let (text, mut fields) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let rules = match parse(text, None) {
        Ok(r) => r,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a message");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an empty error message");
            }
            let _ = errors.to_string();
            return;
        }
    };
    let comm = display_name(take(&mut fields).unwrap_or(b"mariadbd"));
    let cmdline = cmdline_text(take(&mut fields).unwrap_or(b"/usr/sbin/mariadbd\0--port=3307"));
    let exe = display_name(take(&mut fields).unwrap_or(b"/usr/sbin/mariadbd"));
    let cgroup = clean_cgroup(&display_name(
        take(&mut fields).unwrap_or(b"/system.slice/mariadb@3307.service"),
    ));
    for ports in [&[][..], &[3307][..], &[3306, 33060][..]] {
        let s = Subject {
            comm: &comm,
            ports,
            cmdline: Some(&cmdline),
            exe: Some(&exe),
            cgroup: Some(&cgroup),
        };
        for named in [rules.name_process(&s), rules.name_by_cgroup(&s)]
            .into_iter()
            .flatten()
        {
            assert!(!named.instance.is_empty(), "an empty instance name");
            assert!(
                !named.instance.chars().any(char::is_control),
                "a control character in instance name {:?}",
                named.instance
            );
        }
    }
});

/// The next field of the input: a length byte, then that many bytes (fewer at the end).
fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n).min(rest.len());
    let (field, rest) = rest.split_at(n);
    *data = rest;
    Some(field)
}
