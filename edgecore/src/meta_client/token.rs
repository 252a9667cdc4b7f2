//! Which stored service-account token may serve a request: the kubelet's token manager rules
//! (a token is refreshed past 80 % of its lifetime or after 24 h), applied to the
//! `serviceaccounttoken` rows the cloud's answers left in the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How a stored token compares with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    /// Under 80 % of its lifetime: serve it.
    Fresh,
    /// Due for a refresh, still valid: serve it only when the cloud cannot be asked.
    Stale,
    /// Expired (or unreadable): never serve it.
    Expired,
}

/// The kubelet's longest token age before a refresh, whatever the lifetime.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Whether `stored` (a TokenRequest with status) answers `request` (the same pod, lifetime and,
/// when the request names them, audiences).
pub(super) fn matches(stored: &Value, request: &Value) -> bool {
    let at = |v: &Value, p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
    let same_pod = at(stored, "/spec/boundObjectRef/uid")
        == at(request, "/spec/boundObjectRef/uid")
        && !at(request, "/spec/boundObjectRef/uid").is_null();
    let same_lifetime =
        at(stored, "/spec/expirationSeconds") == at(request, "/spec/expirationSeconds");
    let audiences = at(request, "/spec/audiences");
    let same_audiences = audiences.is_null() || audiences == at(stored, "/spec/audiences");
    let has_token = stored
        .pointer("/status/token")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    same_pod && same_lifetime && same_audiences && has_token
}

/// How fresh `stored` is at `now`.
pub(super) fn freshness(stored: &Value, now: SystemTime) -> Freshness {
    let expires = stored
        .pointer("/status/expirationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339);
    let lifetime = stored
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs);
    let (Some(expires), Some(lifetime)) = (expires, lifetime) else {
        return Freshness::Expired;
    };
    if now >= expires {
        return Freshness::Expired;
    }
    let issued = expires.checked_sub(lifetime).unwrap_or(UNIX_EPOCH);
    let refresh_at = expires
        .checked_sub(lifetime / 5)
        .unwrap_or(UNIX_EPOCH)
        .min(issued + MAX_AGE);
    if now >= refresh_at {
        Freshness::Stale
    } else {
        Freshness::Fresh
    }
}

/// `2026-12-04T18:15:59Z` (Kubernetes' `metav1.Time`; fractions and offsets are accepted).
pub(super) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(10).map(u8::to_ascii_uppercase) != Some(b'T')
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = frac.get(digits..)?;
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d)?;
    let secs = i64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()? - offset;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (from 1970 on).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn parses_kubernetes_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(at(0)));
        assert_eq!(
            parse_rfc3339("2025-06-01T08:00:10Z"),
            Some(at(1_748_764_810))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00.123456Z"),
            Some(at(951_782_400))
        );
        assert_eq!(
            parse_rfc3339("2025-06-01T10:00:10+02:00"),
            Some(at(1_748_764_810))
        );
        for bad in [
            "",
            "2025-06-01",
            "2025-13-01T00:00:00Z",
            "2025-06-01T00:00:00",
            "junk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    fn token(expires: &str, lifetime: u64) -> Value {
        json!({"spec": {"expirationSeconds": lifetime, "audiences": ["api"],
                        "boundObjectRef": {"uid": "pod-1"}},
               "status": {"expirationTimestamp": expires, "token": "t"}})
    }

    #[test]
    fn fresh_until_eighty_percent_then_stale_until_expiry() {
        // 3600 s lifetime expiring at 1_748_764_810: refresh due 720 s before.
        let t = token("2025-06-01T08:00:10Z", 3600);
        assert_eq!(freshness(&t, at(1_748_764_810 - 721)), Freshness::Fresh);
        assert_eq!(freshness(&t, at(1_748_764_810 - 719)), Freshness::Stale);
        assert_eq!(freshness(&t, at(1_748_764_810)), Freshness::Expired);
        assert_eq!(freshness(&json!({}), at(0)), Freshness::Expired);
        // A 48 h token is refreshed after 24 h.
        let long = token("2025-06-03T08:00:10Z", 48 * 3600);
        assert_eq!(
            freshness(&long, at(1_748_764_810 + 23 * 3600)),
            Freshness::Fresh
        );
        assert_eq!(
            freshness(&long, at(1_748_764_810 + 25 * 3600)),
            Freshness::Stale
        );
    }

    #[test]
    fn a_stored_token_serves_the_same_pod_lifetime_and_audiences() {
        let stored = token("2025-06-01T08:00:10Z", 3600);
        let req = |uid: &str, secs: u64, aud: Value| {
            json!({"spec": {"audiences": aud, "expirationSeconds": secs,
                            "boundObjectRef": {"uid": uid}}})
        };
        assert!(matches(&stored, &req("pod-1", 3600, Value::Null)));
        assert!(matches(&stored, &req("pod-1", 3600, json!(["api"]))));
        assert!(!matches(&stored, &req("pod-1", 3600, json!(["other"]))));
        assert!(!matches(&stored, &req("pod-2", 3600, Value::Null)));
        assert!(!matches(&stored, &req("pod-1", 600, Value::Null)));
    }
}
