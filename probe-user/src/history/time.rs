//! TIME arguments of the commands that read history: RFC 3339 (`2026-12-05T03:10:00Z`), a
//! local date and time (`2026-12-05 03:10`), a time today in local time (`03:10`, `03:10:30`),
//! a time relative to now (`-15m`, `-2h`, `-1d`, `now`), unix seconds (`@1796437920`). Unix
//! milliseconds out.

use jiff::{civil, tz::TimeZone, Timestamp};

/// How far into the future a TIME may be (clocks of two hosts differ a little).
const SLACK_MS: i64 = 60_000;

/// Parses TIME relative to `now` (unix ms) in time zone `tz`.
pub fn parse_at(s: &str, now_ms: i64, tz: &TimeZone) -> Result<i64, String> {
    let s = s.trim();
    let t = parse(s, now_ms, tz)?;
    if t > now_ms + SLACK_MS {
        return Err(format!(
            "{s:?} ({}) is in the future{}",
            show(t, tz),
            if s.len() <= 8 && s.contains(':') {
                "; for a time on another day give the date too, e.g. 2026-12-04 03:10"
            } else {
                ""
            }
        ));
    }
    Ok(t)
}

fn parse(s: &str, now_ms: i64, tz: &TimeZone) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is not a time: use RFC 3339 (2026-12-05T03:10:00Z), a local date and time \
             (2026-12-05 03:10), a time today (03:10 or 03:10:30, local time), a time ago \
             (-15m, -2h, -1d, now) or unix seconds (@1796437920)"
        )
    };
    if s == "now" {
        return Ok(now_ms);
    }
    // Unix seconds, as date(1) writes them: @1796437920 or @1796437920.250.
    if let Some(unix) = s.strip_prefix('@') {
        let secs: f64 = unix.parse().map_err(|_| bad())?;
        if !secs.is_finite() || secs.abs() > 1e13 {
            return Err(bad());
        }
        return Ok((secs * 1e3).round() as i64);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let (num, unit) = ago.split_at(ago.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit_ms: i64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(unit_ms)
            .and_then(|d| now_ms.checked_sub(d))
            .ok_or_else(bad);
    }
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let zoned = |dt: civil::DateTime| -> Result<i64, String> {
        dt.to_zoned_datetime(tz.clone())
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| format!("{s:?}: {e}"))
    };
    if let Ok(dt) = s.parse::<civil::DateTime>() {
        return zoned(dt);
    }
    // A time alone is today's, as the host's clock and time zone see it.
    if s.len() <= 8 && s.contains(':') {
        if let Ok(t) = s.parse::<civil::Time>() {
            let today = Timestamp::from_millisecond(now_ms)
                .map_err(|e| e.to_string())?
                .to_zoned_datetime(tz.clone())
                .date();
            return zoned(today.to_datetime(t));
        }
    }
    Err(bad())
}

/// Parses TIME against the clock and time zone of this host.
pub fn parse_now(s: &str) -> Result<i64, String> {
    parse_at(s, Timestamp::now().as_millisecond(), &TimeZone::system())
}

/// A frame's time as people read it, in `tz`.
pub fn show(t_ms: i64, tz: &TimeZone) -> String {
    match Timestamp::from_millisecond(t_ms) {
        Ok(ts) => ts
            .to_zoned_datetime(tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{t_ms} ms"),
    }
}

/// A frame's time in local time.
pub fn show_local(t_ms: i64) -> String {
    show(t_ms, &TimeZone::system())
}

/// RFC 3339 in UTC, for machines.
pub fn rfc3339(t_ms: i64) -> String {
    Timestamp::from_millisecond(t_ms).map_or_else(|_| t_ms.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-05T10:00:00Z
    const NOW: i64 = 1_796_464_800_000;

    fn tz() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap_or(TimeZone::fixed(jiff::tz::offset(1)))
    }

    #[test]
    fn every_form_lands_on_the_instant_it_names() {
        let z = tz();
        let at = |s: &str| parse_at(s, NOW, &z);
        assert_eq!(at("2026-12-05T03:10:00Z"), Ok(NOW - (6 * 60 + 50) * 60_000));
        assert_eq!(
            at("2026-12-05T04:10:00+01:00"),
            Ok(NOW - (6 * 60 + 50) * 60_000)
        );
        // Paris is UTC+1 in December: 04:10 there is 03:10Z.
        assert_eq!(at("04:10"), Ok(NOW - (6 * 60 + 50) * 60_000));
        assert_eq!(at("04:10:30"), Ok(NOW - (6 * 60 + 50) * 60_000 + 30_000));
        assert_eq!(at("2026-12-04 04:10"), Ok(NOW - (30 * 60 + 50) * 60_000));
        assert_eq!(at("-15m"), Ok(NOW - 15 * 60_000));
        assert_eq!(at("-2h"), Ok(NOW - 2 * 3_600_000));
        assert_eq!(at("-1d"), Ok(NOW - 86_400_000));
        assert_eq!(at(" now "), Ok(NOW));
        assert_eq!(at("@1796464000.5"), Ok(1_796_464_000_500));
    }

    #[test]
    fn bad_and_future_times_say_why() {
        let z = tz();
        let at = |s: &str| parse_at(s, NOW, &z).expect_err(s);
        assert!(at("yesterday").contains("is not a time"));
        assert!(at("-15x").contains("is not a time"));
        assert!(at("-m").contains("is not a time"));
        assert!(at("25:00").contains("is not a time"));
        assert!(at("-99999999999999d").contains("is not a time"));
        assert!(at("@nan").contains("is not a time"));
        assert!(at("@1e300").contains("is not a time"));
        // 12:00 in Paris is 11:00Z, an hour after NOW.
        let e = at("12:00");
        assert!(
            e.contains("in the future") && e.contains("give the date"),
            "{e}"
        );
        assert!(at("2027-01-01T00:00:00Z").contains("in the future"));
    }
}
