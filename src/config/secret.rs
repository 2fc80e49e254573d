//! Secrets: strings (passwords, tokens, connection strings with
//! credentials) that never appear in logs, `Debug` output or errors, and the
//! redaction of URIs for printing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string (password, connection string with credentials) that never
/// appears in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// The secret as it may be printed: a URI keeps its scheme, user, hosts
    /// and path with the password replaced by `***`; anything else is `***`.
    pub fn redacted(&self) -> Secret {
        match redact_uri(&self.0) {
            Some(uri) => Secret(uri),
            None if self.0.is_empty() => Secret(String::new()),
            None => Secret("***".into()),
        }
    }
}

/// `scheme://user:***@hosts/path?query` for a URI with credentials, the URI
/// itself without them; `None` when `text` is not a URI.
pub fn redact_uri(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Some(text.to_string());
    };
    let user = userinfo.split(':').next().unwrap_or("");
    let redacted_userinfo = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        // A user alone (a token as the user name) is a secret too.
        "***".to_string()
    };
    Some(format!("{scheme}://{redacted_userinfo}@{hosts}{tail}"))
}

/// `text` with the credentials of every URI in it replaced (error messages
/// of drivers that quote the address they failed to reach).
pub fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let core = word.trim_matches(|c: char| "\"'()[],;".contains(c));
            match redact_uri(core) {
                Some(clean) if core.contains('@') => word.replace(core, &clean),
                _ => word.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_error_text_are_redacted() {
        let text =
            "cannot connect to \"amqp://tcs:pw@mq:5671/x\" (mongodb://u:p@db:27017/): refused";
        let clean = redact_text(text);
        assert_eq!(
            clean,
            "cannot connect to \"amqp://tcs:***@mq:5671/x\" (mongodb://u:***@db:27017/): refused"
        );
        assert_eq!(redact_text("no uri here"), "no uri here");
    }
}
