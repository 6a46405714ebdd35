//! `probe top --from`: whatever bytes come back from the socket (a broken proxy, another
//! service, a daemon of another version, hostile names), reading them gives a sample or an error,
//! and a sample goes through the view (rates, sorting, marks) into a table whose cells are safe
//! to print on a terminal.
//!
//! The same for an answer to /api/v1/history: a view or an error, both safe to print.
//!
//! Input: the raw HTTP response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_user::top::{
    source::{parse_history_response, parse_response},
    table,
    view::{compute, sort, SortBy},
};

fuzz_target!(|data: &[u8]| {
    // The same bytes as an answer to /api/v1/history (`probe top --from URL --begin/--at`):
    // a view or an error, and a view prints safely.
    match parse_history_response("fuzz", data) {
        Ok(view) => {
            let out = table(&view);
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\n'),
                "a control character reaches the terminal:\n{out:?}"
            );
        }
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                !msg.chars().any(|c| c.is_control() && c != '\n'),
                "a control character in an error:\n{msg:?}"
            );
        }
    }
    let Ok(sample) = parse_response("fuzz", data) else {
        return;
    };
    // The same sample as the previous one and as the next: rates of zero over no time, and of
    // whatever the counters say against an empty past.
    let empty = probe_user::api::Sample {
        version: sample.version,
        ..Default::default()
    };
    for (prev, cur) in [(&sample, &sample), (&empty, &sample), (&sample, &empty)] {
        let mut view = compute(prev, cur);
        for by in SortBy::ALL {
            sort(&mut view, by, false);
            sort(&mut view, by, true);
        }
        let out = table(&view);
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reaches the terminal:\n{out:?}"
        );
    }
});
