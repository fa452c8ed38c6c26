//! Durations in the configuration: text with a unit (`"30s"`, `"500ms"`, `"1h 30m"`,
//! humantime's syntax), or a bare `0` for "none" (`min_write_interval = 0`,
//! `SWITCHBOARD__GATEWAY__HELD_UP_AFTER=0`). Any other bare number is refused with the
//! unit it lacks: `hold_timeout = 30` could mean seconds or milliseconds, and a
//! guess would be wrong for someone. Printed the way humantime prints (`"10ms"`,
//! `"0s"`), which loads back to the same value.
//!
//! Used through `#[serde(with = "crate::duration")]`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Prints `d` as humantime does (`"1m 30s"`, `"0s"`).
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(d, serializer)
}

/// Reads a duration with its unit, or a bare `0`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration with its unit, such as \"30s\" or \"500ms\" (or 0)")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!(
                "{text:?} is not a duration ({e}): write it as \"30s\", \"500ms\", \"1h 30m\""
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        Err(E::custom(format!(
            "{n} has no unit: write \"{n}s\" or \"{n}ms\" (a bare number is allowed only for 0)"
        )))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!(
                "{n} is negative: a duration is 0 or more"
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{n} has no unit: write \"{n}s\" or \"{n}ms\" as text with its unit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Timed {
        #[serde(with = "crate::duration")]
        after: Duration,
    }

    fn load(text: &str) -> Result<Duration, String> {
        toml::from_str::<Timed>(text)
            .map(|t| t.after)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn text_with_a_unit_or_a_bare_zero() {
        assert_eq!(load("after = \"30s\""), Ok(Duration::from_secs(30)));
        assert_eq!(
            load("after = \"1m 500ms\""),
            Ok(Duration::from_millis(60_500))
        );
        assert_eq!(load("after = \"0\""), Ok(Duration::ZERO));
        assert_eq!(load("after = 0"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_bare_number_is_refused_with_the_unit_it_lacks() {
        let e = load("after = 30").unwrap_err();
        assert!(e.contains("30 has no unit") && e.contains("\"30s\""), "{e}");
        let e = load("after = -1").unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = load("after = 1.5").unwrap_err();
        assert!(e.contains("no unit"), "{e}");
        let e = load("after = \"30 parsecs\"").unwrap_err();
        assert!(e.contains("not a duration") && e.contains("parsecs"), "{e}");
        let e = load("after = true").unwrap_err();
        assert!(e.contains("a duration with its unit"), "{e}");
    }

    #[test]
    fn printed_as_humantime_and_read_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_secs(90),
        ] {
            let text = toml::to_string(&Timed { after: d }).unwrap();
            assert_eq!(load(&text), Ok(d), "{text}");
        }
        let text = toml::to_string(&Timed {
            after: Duration::from_millis(10),
        })
        .unwrap();
        assert_eq!(text.trim(), "after = \"10ms\"");
    }
}
