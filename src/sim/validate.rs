//! Create-request validation: JSON body → a [`CreateRequest`] whose slugs are resolved
//! against the catalog, or a 422 naming every problem (as the real API does).
//!
//! Placement (capacity, reservations) is decided later, under the state lock, because it
//! depends on what already exists.

use serde_json::Value;
use uuid::Uuid;

use super::catalog::{self, CUSTOM_IPXE, FacilityEntry, MetroEntry, OsEntry, PlanEntry};
use super::error::ApiError;
use crate::metal::types::{BillingCycle, DeviceCreateInput};

/// Where the caller asked for the device.
#[derive(Debug, Clone)]
pub enum Location {
    /// `metro: "<code>"`.
    Metro(&'static MetroEntry),
    /// `metro: "any"`.
    AnyMetro,
    /// `facility: [...]` in priority order.
    Facilities(Vec<FacilityChoice>),
}

/// One entry of a `facility` list.
#[derive(Debug, Clone, Copy)]
pub enum FacilityChoice {
    Facility(&'static FacilityEntry),
    Any,
}

/// `hardware_reservation_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationRequest {
    None,
    Id(Uuid),
    NextAvailable,
}

/// A syntactically and catalog-valid create request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub input: DeviceCreateInput,
    pub location: Location,
    pub plan: &'static PlanEntry,
    pub os: &'static OsEntry,
    pub reservation: ReservationRequest,
}

/// Parses and validates a `POST /projects/{id}/devices` body.
pub fn parse_create(body: &[u8]) -> Result<CreateRequest, ApiError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("Request body is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::unprocessable(
            "Request body must be a JSON object",
        ));
    };
    let mut errors = Vec::new();
    for field in ["plan", "operating_system"] {
        match obj.get(field) {
            None | Some(Value::Null) => errors.push(format!("{field} is required")),
            Some(Value::String(s)) if s.is_empty() => errors.push(format!("{field} is required")),
            Some(Value::String(_)) => {}
            Some(_) => errors.push(format!("{field} must be a string")),
        }
    }
    // The deprecated `facility` may be a single string in the fetched spec; accept both.
    if let Some(Value::String(s)) = obj.get("facility") {
        let one = Value::Array(vec![Value::String(s.clone())]);
        obj.insert("facility".into(), one);
    }
    if let Some(b) = obj.get("billing_cycle")
        && !b.as_str().is_some_and(|s| BillingCycle::ALL.contains(&s))
    {
        errors.push(format!(
            "billing_cycle must be one of {}",
            BillingCycle::ALL.join(", ")
        ));
    }
    if let Some(c) = obj.get("customdata")
        && !c.is_object()
    {
        errors.push("customdata must be a JSON object".into());
    }
    if !errors.is_empty() {
        return Err(ApiError::unprocessable_all(errors));
    }
    let input: DeviceCreateInput = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::unprocessable(format!("Invalid value for {path}: {}", e.into_inner()))
    })?;
    validate_create(input)
}

/// Validates an already-typed create input (also used by `SimHandle::create_device_direct`).
pub fn validate_create(input: DeviceCreateInput) -> Result<CreateRequest, ApiError> {
    let mut errors = Vec::new();

    let location = match (&input.metro, &input.facility) {
        (Some(_), Some(_)) => {
            errors.push("Only one of metro or facility may be provided".to_string());
            None
        }
        (None, None) => {
            errors.push("Either metro or facility must be provided".to_string());
            None
        }
        (Some(m), None) if m.eq_ignore_ascii_case("any") => Some(Location::AnyMetro),
        (Some(m), None) => match catalog::metro_by_code_or_id(m) {
            Some(entry) => Some(Location::Metro(entry)),
            None => {
                errors.push(format!("Metro {m} is not a valid metro"));
                None
            }
        },
        (None, Some(list)) if list.is_empty() => {
            errors.push("facility must not be empty".to_string());
            None
        }
        (None, Some(list)) => {
            let mut choices = Vec::new();
            for f in list {
                if f.eq_ignore_ascii_case("any") {
                    choices.push(FacilityChoice::Any);
                } else if let Some(entry) = catalog::facility_by_code_or_id(f) {
                    choices.push(FacilityChoice::Facility(entry));
                } else {
                    errors.push(format!("Facility {f} is not a valid facility"));
                }
            }
            Some(Location::Facilities(choices))
        }
    };

    let plan = catalog::plan_by_slug(&input.plan);
    if plan.is_none() {
        errors.push(format!("Plan {} is not a valid plan", input.plan));
    }
    let os = catalog::os_by_slug(&input.operating_system);
    if os.is_none() {
        errors.push(format!(
            "Operating system {} is not a valid operating system",
            input.operating_system
        ));
    }
    if os.is_some_and(|o| o.slug == CUSTOM_IPXE) {
        let has_url = input
            .ipxe_script_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        let ipxe_userdata = input
            .userdata
            .as_ref()
            .is_some_and(|u| u.expose().trim_start().starts_with("#!ipxe"));
        if !has_url && !ipxe_userdata {
            errors.push(
                "ipxe_script_url is required when operating_system is custom_ipxe \
                 (or userdata must be an iPXE script starting with #!ipxe)"
                    .to_string(),
            );
        }
    }
    if let Some(h) = &input.hostname
        && !valid_hostname(h)
    {
        errors.push(format!("Hostname {h:?} is invalid"));
    }
    if let Some(ips) = &input.ip_addresses {
        for ip in ips {
            if let Some(af) = ip.address_family
                && af != 4
                && af != 6
            {
                errors.push(format!("address_family {af} must be 4 or 6"));
            }
        }
        let has_private_v4 = ips
            .iter()
            .any(|ip| ip.address_family.unwrap_or(4) == 4 && ip.public == Some(false));
        if !has_private_v4 {
            errors.push("ip_addresses must include a private IPv4 address".to_string());
        }
    }
    if let Some(t) = &input.termination_time
        && let Err(e) = normalize_date_time(t)
    {
        errors.extend(e.messages);
    }
    let reservation = match input.hardware_reservation_id.as_deref().map(str::trim) {
        None | Some("") => ReservationRequest::None,
        Some("next-available") => ReservationRequest::NextAvailable,
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) => ReservationRequest::Id(id),
            Err(_) => {
                errors.push(format!("Hardware reservation {s} is not provisionable"));
                ReservationRequest::None
            }
        },
    };

    match (location, plan, os) {
        (Some(location), Some(plan), Some(os)) if errors.is_empty() => Ok(CreateRequest {
            input,
            location,
            plan,
            os,
            reservation,
        }),
        _ => Err(ApiError::unprocessable_all(errors)),
    }
}

/// Parses an RFC 3339 date-time (UTC if no zone, as the spec says; `Z` or `±HH:MM`
/// offsets) and re-renders it in UTC with second precision.
pub fn normalize_date_time(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::unprocessable(format!(
            "termination_time {s:?} is not an RFC 3339 date-time"
        ))
    };
    let t = s.trim();
    let split = t
        .len()
        .checked_sub(6)
        .filter(|&i| t.is_char_boundary(i))
        .map(|i| t.split_at(i));
    let (base, offset) = match split {
        Some((base, off))
            if off.is_ascii()
                && matches!(off.as_bytes()[0], b'+' | b'-')
                && off.as_bytes()[3] == b':' =>
        {
            let h: i64 = off[1..3].parse().map_err(|_| bad())?;
            let m: i64 = off[4..6].parse().map_err(|_| bad())?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            (base, sign * (h * 3600 + m * 60))
        }
        _ => (t.trim_end_matches(['Z', 'z']), 0),
    };
    let utc = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let shift = std::time::Duration::from_secs(offset.unsigned_abs());
    let utc = if offset >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    };
    Ok(humantime::format_rfc3339_seconds(utc.ok_or_else(bad)?).to_string())
}

/// RFC 1123 host names (dots allowed), as the real API requires.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> Vec<String> {
        parse_create(body.as_bytes()).unwrap_err().messages
    }

    #[test]
    fn accepts_metro_facility_string_and_list() {
        let ok = parse_create(
            br#"{"metro":"sv","plan":"c3.small.x86","operating_system":"ubuntu_22_04"}"#,
        )
        .unwrap();
        assert!(matches!(ok.location, Location::Metro(m) if m.code == "sv"));
        let f = parse_create(
            br#"{"facility":"ny5","plan":"c3.small.x86","operating_system":"debian_12"}"#,
        )
        .unwrap();
        assert!(matches!(&f.location, Location::Facilities(v) if v.len() == 1));
        let f = parse_create(
            br#"{"facility":["ny5","any"],"plan":"c3.small.x86","operating_system":"debian_12","hardware_reservation_id":"next-available"}"#,
        )
        .unwrap();
        assert!(matches!(&f.location, Location::Facilities(v) if v.len() == 2));
        assert_eq!(f.reservation, ReservationRequest::NextAvailable);
    }

    #[test]
    fn names_each_problem() {
        assert_eq!(
            err(r#"{"metro":"sv"}"#),
            vec!["plan is required", "operating_system is required"]
        );
        assert_eq!(
            err(r#"{"plan":"c3.small.x86","operating_system":"ubuntu_22_04"}"#),
            vec!["Either metro or facility must be provided"]
        );
        assert_eq!(
            err(
                r#"{"metro":"sv","facility":["sv15"],"plan":"c3.small.x86","operating_system":"ubuntu_22_04"}"#
            ),
            vec!["Only one of metro or facility may be provided"]
        );
        let e = err(r#"{"metro":"mars","plan":"x9.huge","operating_system":"beos"}"#);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("mars") && e[1].contains("x9.huge") && e[2].contains("beos"));
        assert!(
            err(r#"{"metro":"sv","plan":"c3.small.x86","operating_system":"custom_ipxe"}"#)[0]
                .contains("ipxe_script_url")
        );
        assert!(err(r#"{"metro":"sv","plan":"c3.small.x86","operating_system":"ubuntu_22_04","billing_cycle":"weekly"}"#)[0]
            .contains("billing_cycle"));
        assert!(err(r#"{"metro":"sv","plan":"c3.small.x86","operating_system":"ubuntu_22_04","hostname":"bad_host!"}"#)[0]
            .contains("Hostname"));
        assert!(err(r#"{"metro":"sv","plan":"c3.small.x86","operating_system":"ubuntu_22_04","tags":"x"}"#)[0]
            .contains("tags"));
        assert!(err("not json")[0].contains("JSON"));
        assert!(err("[1]")[0].contains("object"));
    }

    #[test]
    fn date_times_are_normalized_to_utc() {
        assert_eq!(
            normalize_date_time("2030-01-02T03:04:05Z").unwrap(),
            "2030-01-02T03:04:05Z"
        );
        assert_eq!(
            normalize_date_time("2030-01-02T03:04:05").unwrap(),
            "2030-01-02T03:04:05Z"
        );
        assert_eq!(
            normalize_date_time("2030-01-02T03:04:05.5+02:00").unwrap(),
            "2030-01-02T01:04:05Z"
        );
        assert!(normalize_date_time("tomorrow").is_err());
    }

    #[test]
    fn ipxe_userdata_is_enough_for_custom_ipxe() {
        let ok = parse_create(
            br##"{"metro":"sv","plan":"c3.small.x86","operating_system":"custom_ipxe","userdata":"#!ipxe\nchain http://x/y"}"##,
        );
        assert!(ok.is_ok());
    }
}
