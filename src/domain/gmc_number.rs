//! `GmcNumber`: the trimmed GMC reference number that is every document's `_id`.

use std::fmt;

/// A usable GMC reference number: trimmed, non-empty, not a placeholder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GmcNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GmcNumberError {
    #[error("the GMC number is missing or blank")]
    Missing,
    #[error("the GMC number {0:?} is a placeholder, not a number")]
    Placeholder(String),
    #[error("the GMC number {0:?} is not usable as an id (too long or contains whitespace or control characters)")]
    Unusable(String),
}

/// Values TCS has been seen to send instead of a number (TIS21-4555 filters
/// UNKNOWN and null at the source; we do not trust that alone).
const PLACEHOLDERS: &[&str] = &["unknown", "null", "n/a", "na", "none", "-"];

impl GmcNumber {
    pub fn parse(raw: &str) -> Result<Self, GmcNumberError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(GmcNumberError::Missing);
        }
        if PLACEHOLDERS.iter().any(|p| trimmed.eq_ignore_ascii_case(p)) {
            return Err(GmcNumberError::Placeholder(trimmed.to_string()));
        }
        if trimmed.len() > 64 || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GmcNumberError::Unusable(trimmed.to_string()));
        }
        Ok(Self(trimmed.to_string()))
    }

    /// A number that was parsed before and kept as text (a map key): it
    /// is already trimmed and valid, so it is not checked again.
    pub(crate) fn from_stored_key(key: String) -> Self {
        debug_assert_eq!(
            Self::parse(&key).as_ref().map(Self::as_str),
            Ok(key.as_str())
        );
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for GmcNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gmc_number_is_trimmed() {
        assert_eq!(
            GmcNumber::parse("  1234567 \n").unwrap().as_str(),
            "1234567"
        );
    }

    #[test]
    fn blank_and_placeholder_numbers_are_rejected() {
        assert_eq!(GmcNumber::parse("   "), Err(GmcNumberError::Missing));
        assert!(matches!(
            GmcNumber::parse("UNKNOWN"),
            Err(GmcNumberError::Placeholder(_))
        ));
        assert!(matches!(
            GmcNumber::parse("null"),
            Err(GmcNumberError::Placeholder(_))
        ));
        assert!(matches!(
            GmcNumber::parse("12 34"),
            Err(GmcNumberError::Unusable(_))
        ));
    }
}
