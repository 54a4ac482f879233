//! The Ethernet address of the guest's card, as `--net mac=` gives it.

use std::fmt;
use std::str::FromStr;

use super::NetError;

/// An Ethernet address for the guest's card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub(super) [u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = NetError;
    /// Exactly `xx:xx:xx:xx:xx:xx`, hex digits of either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadMac(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+f" or "f".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        // The guest driver would replace such an address with a random one.
        if octets[0] & 1 != 0 || octets == [0; 6] {
            return Err(NetError::NotUnicastMac(s.to_owned()));
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::harness::MAC;

    #[test]
    fn mac_addresses() {
        let mac: MacAddr = "02:AB:cd:00:01:02".parse().unwrap();
        assert_eq!(mac.octets(), MAC);
        assert_eq!(mac.to_string(), "02:ab:cd:00:01:02");
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:02:03",
            "02:ab:cd:00:01:2",
            "02:ab:cd:00:01:002",
            "02-ab-cd-00-01-02",
            "02:ab:cd:00:01:0g",
            "02:ab:cd:00:01:+2",
            "02:ab:cd:00:01:02:",
            "02ab:cd:00:01:02:",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(matches!(e, NetError::BadMac(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        for not_unicast in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let e = not_unicast.parse::<MacAddr>().unwrap_err();
            assert!(matches!(e, NetError::NotUnicastMac(_)), "{e}");
        }
    }
}
