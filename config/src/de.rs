//! Field deserializers whose errors say what the key expects (`invalid value "abc": expected an
//! integer number of seconds`), and `null` sections that mean "defaults", as in KubeEdge.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// An integer of type `T` described to the operator as `expected`.
struct Integer<T> {
    expected: &'static str,
    ty: PhantomData<T>,
}

impl<T> Integer<T> {
    fn out_of_range<E: de::Error>(&self, v: impl fmt::Display) -> E {
        E::custom(format!(
            "invalid value {v}: expected {} (out of range)",
            self.expected
        ))
    }
}

impl<T> Visitor<'_> for Integer<T>
where
    T: TryFrom<u64> + TryFrom<i64>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| self.out_of_range(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| self.out_of_range(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::custom(format!(
            "invalid value {v}: expected {}",
            self.expected
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Err(E::custom(format!(
            "invalid value {v:?}: expected {}",
            self.expected
        )))
    }
}

fn integer<'de, D, T>(deserializer: D, expected: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    deserializer.deserialize_any(Integer {
        expected,
        ty: PhantomData,
    })
}

/// A count of seconds that fits `u32`.
pub(crate) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    integer(d, "an integer number of seconds")
}

/// A count of milliseconds.
pub(crate) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    integer(d, "an integer number of milliseconds")
}

/// A signed 32-bit integer (KubeEdge's `int32`).
pub(crate) fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    integer(d, "an integer")
}

/// A section written as `key:` with nothing after it gets its defaults, as in KubeEdge (where a
/// JSON `null` leaves the default in place).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `skip_serializing_if` for KubeEdge's `omitempty` booleans.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(deserialize_with = "super::seconds")]
        secs: u32,
    }

    fn message(yaml: &str) -> String {
        match serde_yaml_ng::from_str::<Probe>(yaml) {
            Ok(p) => format!("ok {}", p.secs),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn seconds_accepts_integers_only() {
        assert_eq!(message("secs: 15"), "ok 15");
        assert!(
            message("secs: abc")
                .contains("invalid value \"abc\": expected an integer number of seconds")
        );
        assert!(message("secs: \"15\"").contains("invalid value \"15\""));
        assert!(
            message("secs: -1")
                .contains("invalid value -1: expected an integer number of seconds (out of range)")
        );
        assert!(message("secs: 4294967296").contains("out of range"));
        assert!(message("secs: 1.5").contains("invalid value 1.5"));
        assert!(message("secs: true").contains("expected an integer number of seconds"));
    }
}
