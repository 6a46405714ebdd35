//! The classic Prometheus text format (version 0.0.4), for clients that do not ask for
//! OpenMetrics (curl, older Prometheus servers, many agents).
//!
//! prometheus-client only writes OpenMetrics, and the two differ in a few places this module
//! rewrites: a counter family is named with its `_total` suffix in HELP and TYPE lines, there are
//! no `# UNIT` lines, and there is no `# EOF` terminator. Samples are the same.

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which format a client asked for in its `Accept` header.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let q_zero = params.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        })
    })
}

/// Rewrites OpenMetrics text produced by prometheus-client into the 0.0.4 text format.
pub fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // HELP comes before TYPE; hold it until the type says whether to add `_total`.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" | "stateset" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some((_, help)) = pending_help.take() {
                out.push_str(&format!("# HELP {name} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_in_metadata_and_om_only_lines_go() {
        let om = "\
# HELP probe_cpu_seconds On-CPU time.
# TYPE probe_cpu_seconds counter
# UNIT probe_cpu_seconds seconds
probe_cpu_seconds_total{service_instance=\"a:1\"} 1.5
# HELP probe_memory_rss_bytes RSS.
# TYPE probe_memory_rss_bytes gauge
# UNIT probe_memory_rss_bytes bytes
probe_memory_rss_bytes{service_instance=\"a:1\"} 4096
# EOF
";
        let expected = "\
# HELP probe_cpu_seconds_total On-CPU time.
# TYPE probe_cpu_seconds_total counter
probe_cpu_seconds_total{service_instance=\"a:1\"} 1.5
# HELP probe_memory_rss_bytes RSS.
# TYPE probe_memory_rss_bytes gauge
probe_memory_rss_bytes{service_instance=\"a:1\"} 4096
";
        assert_eq!(from_openmetrics(om), expected);
    }

    #[test]
    fn negotiates_like_prometheus_does() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prom)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}
