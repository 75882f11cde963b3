//! Removes a call's secrets from Metal API error texts before they leave the process: an API
//! may echo parts of the request (the token, the userData, customData) in its error message,
//! and that message becomes a gRPC status message, a log line and a Machine's lastOperation.
//!
//! The texts to search are the ones the client keeps: whitespace flattened by
//! [`metal::error::flatten_whitespace`] and cut at a length marked with
//! [`metal::error::CUT_MARK`], so each secret is searched for in those forms too.

use crate::metal::{
    self,
    error::{CUT_MARK, flatten_whitespace},
};

use super::credentials::Credentials;
use super::scope::Scope;

/// Shortest secret worth scrubbing: replacing a 1-character userData everywhere would
/// destroy the message and protect nothing.
const MIN_SCRUB_LEN: usize = 6;
/// Individual userData lines at least this long are scrubbed too (an API may echo a part).
const MIN_SCRUB_LINE_LEN: usize = 16;

/// The strings one call must not let out, longest first.
#[derive(Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// Every string to remove for a call with these credentials and this spec: the token, the
    /// userData (whole and its long lines) and customData (serialized, and its long string
    /// values), each also JSON-escaped and flattened as the API and the client may show it.
    pub fn new(creds: &Credentials, scope: &Scope) -> Self {
        let mut out: Vec<String> = creds
            .secret_strings()
            .into_iter()
            .map(str::to_string)
            .collect();
        if let Some(ud) = &creds.user_data {
            out.extend(
                ud.expose()
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= MIN_SCRUB_LINE_LEN)
                    .map(str::to_string),
            );
        }
        if let Some(cd) = &scope.custom_data {
            out.push(cd.expose().to_string());
            collect_strings(cd.expose(), &mut out);
        }
        // An API that echoes the JSON request body shows each string JSON-escaped (`\"`, `\n`),
        // and the client flattens whitespace runs in error texts: scrub those forms too.
        let variants: Vec<String> = out
            .iter()
            .flat_map(|s| {
                let escaped = serde_json::to_string(s)
                    .ok()
                    .and_then(|j| j.get(1..j.len().saturating_sub(1)).map(str::to_owned));
                let flat = flatten_whitespace(s);
                let escaped_flat = escaped.as_deref().map(flatten_whitespace);
                [escaped, Some(flat), escaped_flat].into_iter().flatten()
            })
            .collect();
        out.extend(variants);
        Self::from_strings(out)
    }

    /// A scrubber for exactly these strings (those shorter than the minimum are dropped).
    fn from_strings(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| s.len() >= MIN_SCRUB_LEN);
        // Longest first, so a line inside the whole userData does not break its replacement.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// The error with every secret string replaced by `<redacted>` in its free-text parts.
    pub fn scrub(&self, mut e: metal::Error) -> metal::Error {
        match &mut e {
            metal::Error::Status { message, .. } => self.scrub_text(message),
            metal::Error::Transport { reason, .. } | metal::Error::Decode { reason, .. } => {
                self.scrub_text(reason)
            }
            metal::Error::Deadline { .. } => {}
        }
        e
    }

    fn scrub_text(&self, text: &mut String) {
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                *text = text.replace(s.as_str(), "<redacted>");
            }
        }
        // A secret cut by the client's truncation leaves its beginning just before the mark.
        // Redact any such beginning.
        if let Some(body) = text.strip_suffix(CUT_MARK) {
            let cut = self.secrets.iter().find_map(|s| {
                (MIN_SCRUB_LEN..s.len())
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .find(|&n| body.ends_with(&s[..n]))
                    .map(|n| body.len() - n)
            });
            if let Some(at) = cut {
                *text = format!("{}<redacted>{CUT_MARK}", &body[..at]);
            }
        }
    }
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if s.len() >= MIN_SCRUB_LINE_LEN => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_cut_by_truncation_is_redacted_too() {
        let scrubber = Scrubber::from_strings(vec!["tok-ABCDEFGHIJKLMNOP".to_string()]);
        let mut text = "HTTP 422: you sent tok-ABCDEFG…".to_string();
        scrubber.scrub_text(&mut text);
        assert_eq!(text, "HTTP 422: you sent <redacted>…");
        let mut untouched = "HTTP 422: nothing secret here…".to_string();
        scrubber.scrub_text(&mut untouched);
        assert_eq!(untouched, "HTTP 422: nothing secret here…");
    }
}
