//! The simulator's fixed world: metros, facilities, plans and operating systems.
//!
//! Anything not listed here is rejected with 422, as the real API rejects unknown slugs.
//! Codes, names and countries are the real Equinix Metal ones; ids are deterministic
//! (derived from the code) so they are stable across runs and valid `format: uuid`.

use uuid::Uuid;

use crate::metal::types::{Facility, Metro, OperatingSystem, Plan};

/// A metro: `(code, name, ISO country, default facility)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetroEntry {
    pub code: &'static str,
    pub name: &'static str,
    pub country: &'static str,
    /// Where a metro-only create lands (the real API also reports a facility).
    pub default_facility: &'static str,
}

/// A facility (datacenter) inside a metro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FacilityEntry {
    pub code: &'static str,
    pub name: &'static str,
    pub metro: &'static str,
}

/// A server plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    pub slug: &'static str,
    pub name: &'static str,
}

/// An operating system image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsEntry {
    pub slug: &'static str,
    pub name: &'static str,
    pub distro: &'static str,
    pub version: &'static str,
}

/// The OS slug that boots an iPXE script instead of an image.
pub const CUSTOM_IPXE: &str = "custom_ipxe";

/// Metros in the order `metro: "any"` tries them.
pub const METROS: &[MetroEntry] = &[
    metro("sv", "Silicon Valley", "US", "sv15"),
    metro("da", "Dallas", "US", "da11"),
    metro("ny", "New York", "US", "ny5"),
    metro("dc", "Washington DC", "US", "dc13"),
    metro("ch", "Chicago", "US", "ch3"),
    metro("la", "Los Angeles", "US", "la4"),
    metro("se", "Seattle", "US", "se4"),
    metro("at", "Atlanta", "US", "at4"),
    metro("tr", "Toronto", "CA", "tr2"),
    metro("am", "Amsterdam", "NL", "am6"),
    metro("fr", "Frankfurt", "DE", "fr2"),
    metro("ld", "London", "GB", "ld7"),
    metro("pa", "Paris", "FR", "pa4"),
    metro("sg", "Singapore", "SG", "sg4"),
    metro("sy", "Sydney", "AU", "sy4"),
    metro("ty", "Tokyo", "JP", "ty11"),
];

const fn metro(
    code: &'static str,
    name: &'static str,
    country: &'static str,
    default_facility: &'static str,
) -> MetroEntry {
    MetroEntry {
        code,
        name,
        country,
        default_facility,
    }
}

const fn fac(code: &'static str, name: &'static str, metro: &'static str) -> FacilityEntry {
    FacilityEntry { code, name, metro }
}

/// Facilities; the first of each metro is its default.
pub const FACILITIES: &[FacilityEntry] = &[
    fac("sv15", "Silicon Valley, CA - SV15", "sv"),
    fac("sv16", "Silicon Valley, CA - SV16", "sv"),
    fac("da11", "Dallas, TX - DA11", "da"),
    fac("da6", "Dallas, TX - DA6", "da"),
    fac("ny5", "New York, NY - NY5", "ny"),
    fac("ny7", "New York, NY - NY7", "ny"),
    fac("dc13", "Ashburn, VA - DC13", "dc"),
    fac("dc10", "Ashburn, VA - DC10", "dc"),
    fac("ch3", "Chicago, IL - CH3", "ch"),
    fac("la4", "Los Angeles, CA - LA4", "la"),
    fac("se4", "Seattle, WA - SE4", "se"),
    fac("at4", "Atlanta, GA - AT4", "at"),
    fac("tr2", "Toronto, ON - TR2", "tr"),
    fac("am6", "Amsterdam, NL - AM6", "am"),
    fac("fr2", "Frankfurt, DE - FR2", "fr"),
    fac("fr8", "Frankfurt, DE - FR8", "fr"),
    fac("ld7", "London, GB - LD7", "ld"),
    fac("pa4", "Paris, FR - PA4", "pa"),
    fac("sg4", "Singapore - SG4", "sg"),
    fac("sg1", "Singapore - SG1", "sg"),
    fac("sy4", "Sydney, NSW - SY4", "sy"),
    fac("sy5", "Sydney, NSW - SY5", "sy"),
    fac("ty11", "Tokyo, JP - TY11", "ty"),
];

const fn plan(slug: &'static str, name: &'static str) -> PlanEntry {
    PlanEntry { slug, name }
}

/// Plans.
pub const PLANS: &[PlanEntry] = &[
    plan("c3.small.x86", "c3.small.x86"),
    plan("c3.medium.x86", "c3.medium.x86"),
    plan("c3.large.arm64", "c3.large.arm64"),
    plan("m3.small.x86", "m3.small.x86"),
    plan("m3.large.x86", "m3.large.x86"),
    plan("n3.xlarge.x86", "n3.xlarge.x86"),
    plan("s3.xlarge.x86", "s3.xlarge.x86"),
    plan("a3.large.x86", "a3.large.x86"),
];

const fn os(
    slug: &'static str,
    name: &'static str,
    distro: &'static str,
    version: &'static str,
) -> OsEntry {
    OsEntry {
        slug,
        name,
        distro,
        version,
    }
}

/// Operating systems.
pub const OPERATING_SYSTEMS: &[OsEntry] = &[
    os("ubuntu_20_04", "Ubuntu 20.04 LTS", "ubuntu", "20.04"),
    os("ubuntu_22_04", "Ubuntu 22.04 LTS", "ubuntu", "22.04"),
    os("ubuntu_24_04", "Ubuntu 24.04 LTS", "ubuntu", "24.04"),
    os("debian_11", "Debian 11", "debian", "11"),
    os("debian_12", "Debian 12", "debian", "12"),
    os(
        "flatcar_stable",
        "Flatcar Container Linux (Stable)",
        "flatcar",
        "stable",
    ),
    os(
        "flatcar_beta",
        "Flatcar Container Linux (Beta)",
        "flatcar",
        "beta",
    ),
    os("rocky_8", "Rocky Linux 8", "rocky", "8"),
    os("rocky_9", "Rocky Linux 9", "rocky", "9"),
    os("alma_9", "AlmaLinux 9", "alma", "9"),
    os("rhel_9", "Red Hat Enterprise Linux 9", "rhel", "9"),
    os("talos_v1", "Talos Linux", "talos", "1"),
    os("windows_2022", "Windows 2022 Standard", "windows", "2022"),
    os(CUSTOM_IPXE, "Custom iPXE", "custom_ipxe", "1"),
];

/// A stable, valid (version 4 shaped) UUID for a catalog entry, derived from its kind and code.
pub fn stable_id(kind: &str, code: &str) -> Uuid {
    // Two FNV-1a 64-bit passes with different offsets give 16 well-mixed bytes.
    let h = |seed: u64| {
        let mut x = seed;
        for b in kind.bytes().chain([b'/']).chain(code.bytes()) {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0000_0100_0000_01b3);
        }
        x
    };
    let hi = h(0xcbf2_9ce4_8422_2325);
    let lo = h(0x8422_2325_cbf2_9ce4);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A metro by code (case-insensitive) or by its id.
pub fn metro_by_code_or_id(s: &str) -> Option<&'static MetroEntry> {
    METROS
        .iter()
        .find(|m| m.code.eq_ignore_ascii_case(s) || stable_id("metro", m.code).to_string() == s)
}

/// A facility by code (case-insensitive) or by its id.
pub fn facility_by_code_or_id(s: &str) -> Option<&'static FacilityEntry> {
    FACILITIES
        .iter()
        .find(|f| f.code.eq_ignore_ascii_case(s) || stable_id("facility", f.code).to_string() == s)
}

/// A plan by slug or id.
pub fn plan_by_slug(s: &str) -> Option<&'static PlanEntry> {
    PLANS
        .iter()
        .find(|p| p.slug == s || stable_id("plan", p.slug).to_string() == s)
}

/// An operating system by slug or id.
pub fn os_by_slug(s: &str) -> Option<&'static OsEntry> {
    OPERATING_SYSTEMS
        .iter()
        .find(|o| o.slug == s || stable_id("os", o.slug).to_string() == s)
}

/// The metro a facility code belongs to (both from the catalog).
pub fn metro_of(facility: &FacilityEntry) -> &'static MetroEntry {
    METROS
        .iter()
        .find(|m| m.code == facility.metro)
        .unwrap_or(&METROS[0])
}

/// The default facility of a metro.
pub fn default_facility(metro: &MetroEntry) -> &'static FacilityEntry {
    facility_by_code_or_id(metro.default_facility).unwrap_or(&FACILITIES[0])
}

impl MetroEntry {
    /// The `Metro` object a device embeds.
    pub fn to_api(&self) -> Metro {
        Metro {
            id: Some(stable_id("metro", self.code)),
            code: Some(self.code.to_string()),
            name: Some(self.name.to_string()),
            country: Some(self.country.to_string()),
        }
    }
}

impl FacilityEntry {
    /// The `Facility` object a device embeds.
    pub fn to_api(&self) -> Facility {
        Facility {
            id: Some(stable_id("facility", self.code)),
            code: Some(self.code.to_string()),
            name: Some(self.name.to_string()),
        }
    }
}

impl PlanEntry {
    /// The `Plan` object a device embeds.
    pub fn to_api(&self) -> Plan {
        Plan {
            id: Some(stable_id("plan", self.slug)),
            slug: Some(self.slug.to_string()),
            name: Some(self.name.to_string()),
        }
    }
}

impl OsEntry {
    /// The `OperatingSystem` object a device embeds.
    pub fn to_api(&self) -> OperatingSystem {
        OperatingSystem {
            id: Some(stable_id("os", self.slug)),
            slug: Some(self.slug.to_string()),
            name: Some(self.name.to_string()),
            distro: Some(self.distro.to_string()),
            version: Some(self.version.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_entries_exist_and_are_consistent() {
        for m in [
            "am", "ch", "da", "dc", "fr", "la", "ny", "sg", "sv", "sy", "tr",
        ] {
            let metro = metro_by_code_or_id(m).unwrap();
            assert_eq!(default_facility(metro).metro, m, "default facility of {m}");
        }
        for p in [
            "c3.small.x86",
            "c3.medium.x86",
            "m3.small.x86",
            "m3.large.x86",
            "n3.xlarge.x86",
            "s3.xlarge.x86",
        ] {
            assert!(plan_by_slug(p).is_some(), "{p}");
        }
        for o in [
            "ubuntu_22_04",
            "ubuntu_24_04",
            "debian_12",
            "flatcar_stable",
            "rocky_9",
            CUSTOM_IPXE,
        ] {
            assert!(os_by_slug(o).is_some(), "{o}");
        }
        for f in FACILITIES {
            assert!(metro_by_code_or_id(f.metro).is_some(), "{}", f.code);
        }
    }

    #[test]
    fn ids_are_stable_unique_v4_and_resolvable() {
        let a = stable_id("metro", "sv");
        assert_eq!(a, stable_id("metro", "sv"));
        assert_ne!(a, stable_id("facility", "sv"));
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(metro_by_code_or_id(&a.to_string()).unwrap().code, "sv");
        let mut ids: Vec<Uuid> = METROS.iter().map(|m| stable_id("metro", m.code)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), METROS.len());
    }
}
