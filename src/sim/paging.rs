//! List queries and pagination `Meta`: which page to serve and the links to its
//! neighbours. The links carry the filters, so following `meta.next.href` (appended to the
//! API base URL) yields the next page of the same listing.

use crate::metal::types::{Href, Meta};

use super::error::ApiError;

/// The spec's default `per_page`.
pub const DEFAULT_PER_PAGE: u32 = 10;
/// The spec's maximum `page`.
pub const MAX_PAGE: u32 = 100_000;

/// `GET /projects/{id}/devices` query parameters that the simulator honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub page: u32,
    /// As requested; the server cap is applied when serving.
    pub per_page: u32,
    /// Exact tag match.
    pub tag: Option<String>,
    /// Case-insensitive substring of the hostname.
    pub hostname: Option<String>,
    /// Case-insensitive substring of hostname, description, short_id, tags, plan, facility,
    /// metro, OS or an IP address.
    pub search: Option<String>,
}

impl ListQuery {
    /// Parses a raw query string. `include`, `exclude` and unknown parameters are ignored.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Self {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            ..Self::default()
        };
        for (k, v) in parse_pairs(raw.unwrap_or("")) {
            match k.as_str() {
                "page" => q.page = int_param("page", &v, MAX_PAGE)?,
                "per_page" => q.per_page = int_param("per_page", &v, u32::MAX)?,
                "tag" if !v.is_empty() => q.tag = Some(v),
                "hostname" if !v.is_empty() => q.hostname = Some(v),
                "search" if !v.is_empty() => q.search = Some(v),
                _ => {}
            }
        }
        Ok(q)
    }

    /// The query string for `page` with the same filters and the effective `per_page`.
    fn href(&self, base: &str, page: u64, per_page: u32) -> Href {
        let mut s = format!("{base}?page={page}&per_page={per_page}");
        for (k, v) in [
            ("tag", &self.tag),
            ("hostname", &self.hostname),
            ("search", &self.search),
        ] {
            if let Some(v) = v {
                s.push('&');
                s.push_str(k);
                s.push('=');
                s.push_str(&encode(v));
            }
        }
        Href { href: s }
    }

    /// The `Meta` of page `self.page` of `total` items at `per_page` (already capped).
    /// `next` and `previous` are omitted at the ends, never `null`.
    pub fn meta(&self, base: &str, total: usize, per_page: u32) -> Meta {
        let total = total as u64;
        let last_page = total.div_ceil(u64::from(per_page)).max(1);
        let page = u64::from(self.page);
        Meta {
            first: Some(self.href(base, 1, per_page)),
            last: Some(self.href(base, last_page, per_page)),
            next: (page < last_page).then(|| self.href(base, page + 1, per_page)),
            previous: (page > 1).then(|| self.href(base, (page - 1).min(last_page), per_page)),
            self_: Some(self.href(base, page, per_page)),
            total: Some(total as i64),
            current_page: Some(page as i64),
            last_page: Some(last_page as i64),
        }
    }
}

fn int_param(name: &str, v: &str, max: u32) -> Result<u32, ApiError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::unprocessable(format!(
            "{name} must be an integer between 1 and {max}"
        ))),
    }
}

/// Splits `a=1&b=x%20y` into decoded pairs (`+` is a space, bad escapes kept verbatim).
pub fn parse_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let q =
            ListQuery::parse(Some("page=2&per_page=100&tag=k8s%3Acluster+a&include=x,y")).unwrap();
        assert_eq!((q.page, q.per_page), (2, 100));
        assert_eq!(q.tag.as_deref(), Some("k8s:cluster a"));
        let d = ListQuery::parse(None).unwrap();
        assert_eq!((d.page, d.per_page), (1, DEFAULT_PER_PAGE));
        assert!(ListQuery::parse(Some("page=0")).is_err());
        assert!(ListQuery::parse(Some("per_page=abc")).is_err());
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn meta_links_at_the_ends() {
        let mut q = ListQuery::parse(Some("tag=a b")).unwrap();
        q.page = 1;
        let m = q.meta("/projects/p/devices", 2501, 1000);
        assert_eq!(m.last_page, Some(3));
        assert_eq!(m.total, Some(2501));
        assert!(m.previous.is_none());
        assert_eq!(
            m.next.unwrap().href,
            "/projects/p/devices?page=2&per_page=1000&tag=a%20b"
        );
        q.page = 3;
        let m = q.meta("/projects/p/devices", 2501, 1000);
        assert!(m.next.is_none());
        assert_eq!(
            m.previous.unwrap().href,
            "/projects/p/devices?page=2&per_page=1000&tag=a%20b"
        );
        let empty = q.meta("/x", 0, 10);
        assert_eq!(empty.last_page, Some(1));
        assert!(empty.next.is_none());
    }
}
