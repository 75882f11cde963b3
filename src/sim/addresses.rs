//! What a device receives when it becomes active: realistic IP assignments (public IPv4
//! /31, private IPv4 /31 in 10/8, public IPv6 /127, as Metal hands out) and a root
//! password. Addresses come from a per-simulator counter, so they are unique.

use std::net::{Ipv4Addr, Ipv6Addr};

use rand::RngExt;
use rand::distr::Alphanumeric;
use uuid::Uuid;

use crate::metal::types::IpAssignment;

/// Which address blocks a device asked for (`ip_addresses` on create; all three by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRequest {
    pub public_v4: bool,
    pub private_v4: bool,
    pub public_v6: bool,
}

impl Default for IpRequest {
    fn default() -> Self {
        Self {
            public_v4: true,
            private_v4: true,
            public_v6: true,
        }
    }
}

impl IpRequest {
    /// From the create input's `ip_addresses` (`public` defaults to true, family to 4).
    pub fn from_input(list: Option<&[crate::metal::types::IpAddressInput]>) -> Self {
        let Some(list) = list else {
            return Self::default();
        };
        let has = |family: i32, public: bool| {
            list.iter().any(|ip| {
                ip.address_family.unwrap_or(4) == family && ip.public.unwrap_or(true) == public
            })
        };
        Self {
            public_v4: has(4, true),
            private_v4: has(4, false),
            public_v6: has(6, true),
        }
    }
}

/// Addresses for the `n`-th device.
pub fn assign(n: u32, want: IpRequest) -> Vec<IpAssignment> {
    let mut out = Vec::new();
    if want.public_v4 {
        // 147.75.64.0 onwards, one /31 per device.
        let net = u32::from(Ipv4Addr::new(147, 75, 64, 0)).wrapping_add(n.wrapping_mul(2));
        out.push(v4(net, true));
    }
    if want.private_v4 {
        let net =
            u32::from(Ipv4Addr::new(10, 64, 0, 0)).wrapping_add(n.wrapping_mul(2) % (1 << 22));
        out.push(v4(net, false));
    }
    if want.public_v6 {
        let net = Ipv6Addr::new(0x2604, 0x1380, 0x4641, (n >> 16) as u16, n as u16, 0, 0, 0);
        let addr = Ipv6Addr::from(u128::from(net) + 1);
        out.push(IpAssignment {
            id: Some(Uuid::new_v4()),
            address: Some(addr.to_string()),
            address_family: Some(6),
            public: Some(true),
            management: Some(true),
            cidr: Some(127),
            gateway: Some(net.to_string()),
            netmask: Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".into()),
            network: Some(net.to_string()),
            enabled: Some(true),
        });
    }
    out
}

fn v4(net: u32, public: bool) -> IpAssignment {
    let network = Ipv4Addr::from(net);
    IpAssignment {
        id: Some(Uuid::new_v4()),
        address: Some(Ipv4Addr::from(net + 1).to_string()),
        address_family: Some(4),
        public: Some(public),
        management: Some(true),
        cidr: Some(31),
        gateway: Some(network.to_string()),
        netmask: Some("255.255.255.254".into()),
        network: Some(network.to_string()),
        enabled: Some(true),
    }
}

/// A fresh root password (the real API shows one for about a day after provisioning).
pub fn root_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metal::types::IpAddressInput;

    #[test]
    fn default_blocks_are_distinct_and_well_formed() {
        let a = assign(0, IpRequest::default());
        let b = assign(1, IpRequest::default());
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].address.as_deref(), Some("147.75.64.1"));
        assert_eq!(b[0].address.as_deref(), Some("147.75.64.3"));
        assert_eq!(a[1].address.as_deref(), Some("10.64.0.1"));
        assert!(a[1].public == Some(false) && a[1].address_family == Some(4));
        assert_eq!(a[2].address.as_deref(), Some("2604:1380:4641::1"));
        assert_ne!(a[2].address, b[2].address);
        assert_eq!(root_password().len(), 20);
    }

    #[test]
    fn honours_requested_blocks() {
        let only_private = [IpAddressInput {
            address_family: Some(4),
            public: Some(false),
            cidr: None,
            ip_reservations: vec![],
        }];
        let r = IpRequest::from_input(Some(&only_private));
        assert_eq!(
            r,
            IpRequest {
                public_v4: false,
                private_v4: true,
                public_v6: false
            }
        );
        assert_eq!(assign(5, r).len(), 1);
    }
}
