//! Durations written the way Go's `time.Duration` prints and parses them (`10s`, `1m30s`, `4h0m0s`),
//! as KubeEdge's `metav1.Duration` keys are.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a duration key expects, for error messages.
const EXPECTED: &str = "a duration such as \"10s\", \"1m30s\" or \"100ms\"";

/// Go's largest `time.Duration`, in nanoseconds (about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

/// A non-negative duration in Go's `time.Duration` text form.
///
/// Parses everything `time.ParseDuration` accepts except negative values, and prints like
/// `time.Duration.String()`, so a file written by KubeEdge prints back unchanged.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(Duration);

impl GoDuration {
    /// Wraps `d`; `None` when it exceeds Go's range (about 292 years).
    pub fn new(d: Duration) -> Option<Self> {
        (d.as_nanos() <= MAX_NANOS).then_some(Self(d))
    }

    /// Whole seconds (`from_secs(10)` is `10s`).
    pub const fn from_secs(secs: u32) -> Self {
        Self(Duration::from_secs(secs as u64))
    }

    /// Whole milliseconds (`from_millis(100)` is `100ms`).
    pub const fn from_millis(millis: u32) -> Self {
        Self(Duration::from_millis(millis as u64))
    }

    /// The value as a standard duration.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// Parses Go's duration syntax (`1h30m`, `1.5s`, `300ms`, `0`); `None` if it is not one,
    /// is negative, or exceeds Go's range.
    pub fn parse(s: &str) -> Option<Self> {
        let nanos = parse_nanos(s)?;
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
        Some(Self(Duration::new(secs, sub)))
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

/// Total nanoseconds of a Go duration string, or `None`.
fn parse_nanos(s: &str) -> Option<u128> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" || s == "-0" {
        return Some(0);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            // More digits than fit in u128 overflow Go's range anyway.
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(scale)?;
        // The fraction: digits beyond nanosecond precision cannot change the result.
        let mut place = scale;
        for digit in frac_part.bytes().take(20) {
            place /= 10;
            value = value.checked_add(u128::from(digit - b'0') * place)?;
        }
        total = total.checked_add(value)?;
        if total > MAX_NANOS {
            return None;
        }
        rest = after;
    }
    Some(total)
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write!(f, "{}\u{b5}s", decimal(nanos, 1_000));
        }
        if nanos < 1_000_000_000 {
            return write!(f, "{}ms", decimal(nanos, 1_000_000));
        }
        let secs = nanos / 1_000_000_000;
        let sub = nanos % 1_000_000_000;
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(
            f,
            "{}s",
            decimal(seconds * 1_000_000_000 + sub, 1_000_000_000)
        )
    }
}

/// `value / unit` as a decimal without trailing zeros (`1500, 1000` → `1.5`).
fn decimal(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                GoDuration::parse(v).ok_or_else(|| {
                    let hint = if v.parse::<f64>().is_ok() {
                        " (a number needs a unit)"
                    } else {
                        ""
                    };
                    E::custom(format!("invalid value {v:?}: expected {EXPECTED}{hint}"))
                })
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                Err(E::custom(format!(
                    "invalid value {v}: expected {EXPECTED} (a number needs a unit)"
                )))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                Err(E::custom(format!(
                    "invalid value {v}: expected {EXPECTED} (a number needs a unit)"
                )))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(s: &str) -> String {
        GoDuration::parse(s).map_or_else(|| "<none>".to_owned(), |d| d.to_string())
    }

    #[test]
    fn kubeedge_default_durations_print_back_unchanged() {
        for s in [
            "0s", "10s", "20s", "100ms", "1m0s", "2m0s", "5m0s", "4h0m0s", "1m30s", "1h0m0s",
        ] {
            assert_eq!(round(s), s);
        }
    }

    #[test]
    fn go_shorthand_is_normalised_like_go() {
        assert_eq!(round("5m"), "5m0s");
        assert_eq!(round("4h"), "4h0m0s");
        assert_eq!(round("1.5s"), "1.5s");
        assert_eq!(round("1.5h"), "1h30m0s");
        assert_eq!(round("1h30m15.25s"), "1h30m15.25s");
        assert_eq!(round("1500ms"), "1.5s");
        assert_eq!(round("2us"), "2\u{b5}s");
        assert_eq!(round("2\u{3bc}s"), "2\u{b5}s");
        assert_eq!(round("1500ns"), "1.5\u{b5}s");
        assert_eq!(round("7ns"), "7ns");
        assert_eq!(round("0"), "0s");
        assert_eq!(round("+3s"), "3s");
        assert_eq!(round(".5s"), "500ms");
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        for s in [
            "", "s", "10", "10x", "1.2.3s", "-1s", "abc", ".s", "1h-5m", "3000000h",
        ] {
            assert_eq!(GoDuration::parse(s), None, "{s:?} should be rejected");
        }
    }

    #[test]
    fn parse_matches_std_durations() {
        assert_eq!(
            GoDuration::parse("1m30s").map(GoDuration::as_duration),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            GoDuration::parse("100ms").map(GoDuration::as_duration),
            Some(Duration::from_millis(100))
        );
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(nanos in 0u64..=i64::MAX as u64) {
            let d = GoDuration(Duration::from_nanos(nanos));
            proptest::prop_assert_eq!(GoDuration::parse(&d.to_string()), Some(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = GoDuration::parse(&s);
        }
    }
}
