//! Hostile process names, command lines, executables, cgroup paths and device names, through
//! instance naming (the built-in rules) into /metrics (OpenMetrics and the classic text) and
//! /api/v1/top: every output parses, and every label value reads back as the name it came from.
//!
//! Input: comm, cmdline (NUL-separated arguments), exe, cgroup path and device name, each a
//! length byte and its bytes, then a byte of listening port. With PROBE_FUZZ_DUMP=DIR each input's two expositions are written there, for
//! the Python prometheus_client parsers (`cargo xtask fuzz` runs them over the corpus).

#![no_main]

use std::{collections::HashMap, sync::Arc};

use libfuzzer_sys::fuzz_target;
use probe_user::{
    daemon::{InstanceMeta, Snapshot},
    exporter::{classic::from_openmetrics, metrics::encode_openmetrics},
    model::{
        accounts::{InstanceTotals, IoProcessRow, ProcessRow},
        instance::{Facts, Resolver},
        io::{IoCounters, Op},
        latency::Latency,
        names::display_name,
        rules::{CgroupMeta, Rules},
    },
    api::Sample,
};

fuzz_target!(|data: &[u8]| {
    let input = data;
    let mut data = data;
    // comm as the kernel keeps it: at most 15 bytes and a NUL.
    let mut raw_comm = [0u8; 16];
    let given = take(&mut data).unwrap_or_default();
    let n = given.len().min(15);
    raw_comm[..n].copy_from_slice(&given[..n]);
    let comm = display_name(&raw_comm);
    let cmdline = Facts::cmdline_from_raw(take(&mut data).unwrap_or_default());
    let exe: Arc<str> = display_name(take(&mut data).unwrap_or_default()).into();
    let cgroup = display_name(take(&mut data).unwrap_or_default());
    let device: Arc<str> = display_name(take(&mut data).unwrap_or_default()).into();
    let port = 3300 + u16::from(data.first().copied().unwrap_or(7));

    let rules = Rules::defaults();
    let mut facts = Facts {
        ports: vec![port],
        cmdline: Some(cmdline),
        exe: Some(exe),
        ..Facts::default()
    };
    facts.identity.comm = raw_comm;
    facts.identity.cgroup_id = 7;
    let live = HashMap::from([(4242, facts.clone())]);
    let path = cgroup.clone();
    let paths = move |_: u64| Some(path.clone());
    let named = Resolver {
        rules: &rules,
        live: &live,
        cgroup_paths: &paths,
    }
    .resolve(&facts);
    let instance: Arc<str> = named.instance.clone().into();
    let meta = CgroupMeta::parse(&cgroup);

    // As the kernel writes them: every operation in one histogram bucket.
    let mut io = IoCounters {
        bytes: 4096,
        latency: Latency {
            count: 1,
            sum_ns: 3_000,
            ..Latency::default()
        },
    };
    io.latency.buckets[2] = 1;
    let snapshot = Snapshot {
        instances: vec![(instance.clone(), InstanceTotals::default())],
        top: vec![ProcessRow {
            pid: 4242,
            comm: comm.clone().into(),
            instance: instance.clone(),
            cpu_ns: 1,
            run_delay_ns: 0,
            score: 1.0,
        }],
        io: vec![((instance.clone(), (device.clone(), Op::Read)), io.clone())],
        top_io: vec![IoProcessRow {
            pid: 4242,
            comm: comm.clone().into(),
            instance: instance.clone(),
            counters: vec![((device.clone(), Op::Read), io)],
            score: 1.0,
        }],
        meta: vec![(
            instance.clone(),
            InstanceMeta {
                rule: named.rule.clone(),
                container: meta.container.clone(),
                pod_uid: meta.pod_uid.clone(),
            },
        )],
        ..Snapshot::default()
    };

    let sample = Sample::from_snapshot(&snapshot, 1.0);
    let om = encode_openmetrics(snapshot).expect("encoding never fails");
    let classic = from_openmetrics(&om);
    let mut want = vec![("service_instance", &*instance), ("comm", &*comm), ("device", &*device)];
    if let Some(c) = &meta.container {
        want.push(("container", c));
    }
    if let Some(p) = &meta.pod_uid {
        want.push(("pod_uid", p));
    }
    for (format, text) in [("OpenMetrics", &om), ("classic", &classic)] {
        let labels = parse(text).unwrap_or_else(|e| panic!("{format} output: {e}\n{text}"));
        for (k, v) in &want {
            assert!(
                labels.iter().any(|(lk, lv)| lk == k && lv == v),
                "{format}: label {k}={v:?} does not read back\n{text}"
            );
        }
    }
    if let Ok(dir) = std::env::var("PROBE_FUZZ_DUMP") {
        let id = format!("{:016x}", hash(input));
        let _ = std::fs::write(format!("{dir}/{id}.om"), &om);
        let _ = std::fs::write(format!("{dir}/{id}.prom"), &classic);
    }

    // /api/v1/top: what `probe top --from` reads back is what was sent.
    let body = serde_json::to_vec(&sample).expect("a sample serializes");
    let mut raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".to_vec();
    raw.extend_from_slice(&body);
    let back = probe_user::top::source::parse_response("fuzz", &raw).expect("own sample reads back");
    assert_eq!(
        serde_json::to_value(&back).ok(),
        serde_json::to_value(&sample).ok(),
        "the sample changed on the way"
    );
});

/// The next field of the input: a length byte, then that many bytes (fewer at the end).
fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&n, rest) = data.split_first()?;
    let n = usize::from(n).min(rest.len());
    let (field, rest) = rest.split_at(n);
    *data = rest;
    Some(field)
}

fn hash(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// A strict reader of both text formats: every line is a comment (`# HELP`, `# TYPE`, `# UNIT`,
/// `# EOF`) or `name{labels} value` with valid names, quoted values and known escapes. Returns
/// every label pair, unescaped.
fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap_or_default();
            if !["HELP", "TYPE", "UNIT", "EOF"].contains(&kind) {
                return Err(format!("unknown comment {line:?}"));
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| format!("no value: {line:?}"))?;
        if !valid_name(&line[..name_end]) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let mut rest = &line[name_end..];
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = inner.find('=').ok_or_else(|| format!("label without = in {line:?}"))?;
                let key = &inner[..eq];
                if !valid_name(key) {
                    return Err(format!("bad label name {key:?} in {line:?}"));
                }
                let quoted = inner[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| format!("unquoted label value in {line:?}"))?;
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next().ok_or_else(|| format!("unterminated value in {line:?}"))? {
                        (_, '\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            c => return Err(format!("bad escape {c:?} in {line:?}")),
                        },
                        (i, '"') => break i + 1,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                inner = &quoted[end..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before the value in {line:?}"))?;
        let value = value.split(' ').next().unwrap_or_default();
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return Err(format!("bad value {value:?} in {line:?}"));
        }
    }
    Ok(labels)
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}
