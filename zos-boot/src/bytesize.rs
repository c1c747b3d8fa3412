//! Sizes in deployment specs: a JSON number of bytes (Zero-OS style) or a string with a
//! binary unit (`"512M"`, `"2GiB"`, `"10G"`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Errors parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number followed by an optional unit.
    #[error("invalid size `{0}`: expected bytes or a number with K, M, G or T (binary units, e.g. 512M)")]
    Invalid(String),
    /// Does not fit in 64 bits.
    #[error("size `{0}` is too large")]
    TooLarge(String),
}

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

impl ByteSize {
    /// The size in whole MiB (rounded down).
    pub fn mib(self) -> u64 {
        self.0 / MIB
    }

    /// Parses `1234`, `512K`, `256M`, `256MiB`, `2G`, `1T` (binary units; `B` optional).
    pub fn parse(text: &str) -> Result<ByteSize, SizeError> {
        let t = text.trim();
        let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(end);
        let n: u64 = number
            .parse()
            .map_err(|_| SizeError::Invalid(text.to_string()))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => MIB,
            "g" | "gb" | "gib" => GIB,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(SizeError::Invalid(text.to_string())),
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| SizeError::TooLarge(text.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{} GiB", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{} MiB", b / MIB)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes as a number, or a string like \"512M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "size {v} is not a whole number of bytes"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_units() {
        assert_eq!(ByteSize::parse("1024").unwrap(), ByteSize(1024));
        assert_eq!(ByteSize::parse("512M").unwrap(), ByteSize(512 * MIB));
        assert_eq!(ByteSize::parse("2GiB").unwrap(), ByteSize(2 * GIB));
        assert_eq!(ByteSize::parse(" 4k ").unwrap(), ByteSize(4096));
        assert!(matches!(
            ByteSize::parse("12 parsecs"),
            Err(SizeError::Invalid(_))
        ));
        assert!(matches!(ByteSize::parse(""), Err(SizeError::Invalid(_))));
        assert!(matches!(
            ByteSize::parse("99999999999T"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn json_accepts_numbers_and_strings() {
        let a: ByteSize = serde_json::from_str("268435456").unwrap();
        let b: ByteSize = serde_json::from_str("\"256M\"").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&b).unwrap(), "268435456");
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
        assert!(serde_json::from_str::<ByteSize>("true").is_err());
        assert_eq!(ByteSize(3 * GIB).to_string(), "3 GiB");
    }
}
