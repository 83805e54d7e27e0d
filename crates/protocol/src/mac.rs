//! MAC addresses as they travel between host and guest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet (EUI-48) address. On the wire it is the usual
/// `aa:bb:cc:dd:ee:ff` string; it is written in lower case and read in either
/// case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddrError {
    #[error(
        "a MAC address is six bytes written aa:bb:cc:dd:ee:ff, this one has {parts} colon-separated parts"
    )]
    Parts { parts: usize },
    #[error("byte {index} of a MAC address is not two hex digits (write aa:bb:cc:dd:ee:ff)")]
    Byte { index: usize },
    #[error("a MAC address has 6 bytes, not {len}")]
    Length { len: usize },
}

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl TryFrom<&[u8]> for MacAddr {
    type Error = MacAddrError;

    /// A hardware address as netlink reports it (any length).
    fn try_from(bytes: &[u8]) -> Result<Self, MacAddrError> {
        <[u8; 6]>::try_from(bytes)
            .map(MacAddr)
            .map_err(|_| MacAddrError::Length { len: bytes.len() })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, MacAddrError> {
        let parts = s.split(':').count();
        if parts != 6 {
            return Err(MacAddrError::Parts { parts });
        }
        let mut out = [0u8; 6];
        for (index, (part, byte)) in s.split(':').zip(out.iter_mut()).enumerate() {
            // Exactly two ASCII hex digits: from_str_radix alone would also
            // take a sign ("+f").
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacAddrError::Byte { index });
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacAddrError::Byte { index })?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address string aa:bb:cc:dd:ee:ff")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_lower_case_read_in_either() {
        let mac: MacAddr = "02:42:AC:11:00:0a".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x0a]));
        assert_eq!(mac.to_string(), "02:42:ac:11:00:0a");
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, r#""02:42:ac:11:00:0a""#);
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }

    #[test]
    fn malformed_addresses_name_the_problem() {
        let err = |s: &str| s.parse::<MacAddr>().unwrap_err();
        assert_eq!(err(""), MacAddrError::Parts { parts: 1 });
        assert_eq!(err("02:42:ac:11:00"), MacAddrError::Parts { parts: 5 });
        assert_eq!(
            err("02:42:ac:11:00:02:03"),
            MacAddrError::Parts { parts: 7 }
        );
        assert_eq!(err("02-42-ac-11-00-02"), MacAddrError::Parts { parts: 1 });
        assert_eq!(err("02:42:ac:11:00:2"), MacAddrError::Byte { index: 5 });
        assert_eq!(err("02:42:ac:11:00:002"), MacAddrError::Byte { index: 5 });
        assert_eq!(err("0g:42:ac:11:00:02"), MacAddrError::Byte { index: 0 });
        assert_eq!(err("02:+f:ac:11:00:02"), MacAddrError::Byte { index: 1 });
        assert_eq!(err("02:42:ac:11:00:٠٢"), MacAddrError::Byte { index: 5 });
        assert_eq!(err("02:42:ac:11: 0:02"), MacAddrError::Byte { index: 4 });
        assert_eq!(
            err("1:2:3:4:5:6").to_string(),
            "byte 0 of a MAC address is not two hex digits (write aa:bb:cc:dd:ee:ff)"
        );
    }

    #[test]
    fn a_malformed_address_is_a_decode_error() {
        for bad in [r#""02:42""#, "17", "null", r#"[2,66,172,17,0,2]"#] {
            assert!(serde_json::from_str::<MacAddr>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netlink_hardware_addresses_of_other_lengths_are_refused() {
        assert_eq!(
            MacAddr::try_from(&[1u8, 2, 3, 4, 5, 6][..]),
            Ok(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(
            MacAddr::try_from(&[0u8; 16][..]),
            Err(MacAddrError::Length { len: 16 })
        );
        assert_eq!(
            MacAddr::try_from(&[][..]),
            Err(MacAddrError::Length { len: 0 })
        );
    }
}
