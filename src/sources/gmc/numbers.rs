//! Compact containers keyed by GMC number: the usual all-digit numbers are
//! kept as a `u32` (4 bytes instead of a heap string), so a run can keep
//! one entry per doctor for a million doctors and more in a few tens of MB.

use std::collections::HashMap;

use crate::domain::GmcNumber;

/// A map keyed by GMC number that stores the usual all-digit numbers as a
/// `u32` (4 bytes instead of a heap string), so that a run can keep one
/// entry per doctor for a million doctors and more in a few tens of MB.
/// GMC numbers have 7 digits; a `u32` holds up to 4,294,967,295, and its
/// entry with a small value takes half the bytes of a `u64`'s (at a
/// million doctors: 16 MB less per map). Numbers that do not fit (leading
/// zero, letters, beyond a `u32`) are kept as strings beside them; both
/// forms never collide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GmcNumberMap<V> {
    numeric: HashMap<u32, V>,
    other: HashMap<Box<str>, V>,
}

/// The set of GMC numbers a run has seen (see [`GmcNumberMap`]).
pub type GmcNumberSet = GmcNumberMap<()>;

impl<V> Default for GmcNumberMap<V> {
    fn default() -> Self {
        Self {
            numeric: HashMap::new(),
            other: HashMap::new(),
        }
    }
}

/// The integer form of a GMC number when it round-trips exactly to the same
/// text (how a server may store it as a numeric `_id`).
pub(crate) fn numeric_value(number: &str) -> Option<u64> {
    let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    let canonical = number.len() == 1 || !number.starts_with('0');
    if digits && canonical && number.len() <= 19 {
        number.parse().ok()
    } else {
        None
    }
}

/// The key of a GMC number in a [`GmcNumberMap`]'s numeric part: its
/// integer form when that fits a `u32`.
fn numeric_key(number: &str) -> Option<u32> {
    numeric_value(number).and_then(|n| u32::try_from(n).ok())
}

impl<V> GmcNumberMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map with room for about `n` numbers (almost all numeric).
    pub fn with_capacity(n: usize) -> Self {
        Self {
            numeric: HashMap::with_capacity(n),
            other: HashMap::new(),
        }
    }

    /// Every entry with its number, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (GmcNumber, &V)> + '_ {
        let numeric = self
            .numeric
            .iter()
            .map(|(k, v)| (GmcNumber::from_stored_key(k.to_string()), v));
        let other = self
            .other
            .iter()
            .map(|(k, v)| (GmcNumber::from_stored_key(k.to_string()), v));
        numeric.chain(other)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, number: &GmcNumber, value: V) -> Option<V> {
        match numeric_key(number.as_str()) {
            Some(n) => self.numeric.insert(n, value),
            None => self.other.insert(number.as_str().into(), value),
        }
    }

    pub fn get(&self, number: &GmcNumber) -> Option<&V> {
        match numeric_key(number.as_str()) {
            Some(n) => self.numeric.get(&n),
            None => self.other.get(number.as_str()),
        }
    }

    /// The value of `number`, made with `V::default()` when missing.
    pub fn get_or_default(&mut self, number: &GmcNumber) -> &mut V
    where
        V: Default,
    {
        match numeric_key(number.as_str()) {
            Some(n) => self.numeric.entry(n).or_default(),
            None => self.other.entry(number.as_str().into()).or_default(),
        }
    }

    pub fn contains(&self, number: &GmcNumber) -> bool {
        self.get(number).is_some()
    }

    pub fn len(&self) -> usize {
        self.numeric.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GmcNumberSet {
    /// Adds a number; `true` when it was not there yet.
    pub fn add(&mut self, number: &GmcNumber) -> bool {
        self.insert(number, ()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> GmcNumber {
        GmcNumber::parse(s).unwrap()
    }

    #[test]
    fn numeric_keys_round_trip_and_others_stay_text() {
        assert_eq!(numeric_key("1234567"), Some(1_234_567));
        assert_eq!(numeric_key("0"), Some(0));
        assert_eq!(numeric_key("4294967295"), Some(u32::MAX));
        assert_eq!(numeric_key("4294967296"), None);
        assert_eq!(numeric_value("4294967296"), Some(4_294_967_296));
        assert_eq!(numeric_key("0123"), None);
        assert_eq!(numeric_key("C123"), None);
        assert_eq!(numeric_value("12345678901234567890"), None);
    }

    #[test]
    fn numbers_beyond_a_u32_are_kept_as_text_and_found_again() {
        let mut map = GmcNumberMap::new();
        assert_eq!(map.insert(&n("4294967296"), 1), None);
        assert_eq!(map.insert(&n("4294967295"), 2), None);
        assert_eq!(map.get(&n("4294967296")), Some(&1));
        assert_eq!(map.get(&n("4294967295")), Some(&2));
        let mut all: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![("4294967295".to_string(), 2), ("4294967296".to_string(), 1)]
        );
    }

    #[test]
    fn a_gmc_number_map_keeps_numeric_and_text_numbers_apart() {
        let mut map = GmcNumberMap::new();
        assert_eq!(map.insert(&n("123"), 1), None);
        assert_eq!(map.insert(&n("0123"), 2), None);
        assert_eq!(map.insert(&n("123"), 3), Some(1));
        assert_eq!(map.get(&n("123")), Some(&3));
        assert_eq!(map.get(&n("0123")), Some(&2));
        assert_eq!(map.len(), 2);
        assert!(!map.contains(&n("124")));
    }

    #[test]
    fn a_gmc_number_set_says_whether_a_number_is_new() {
        let mut seen = GmcNumberSet::new();
        assert!(seen.add(&n("7")));
        assert!(!seen.add(&n("7")));
        assert!(seen.add(&n("X7")));
        assert_eq!(seen.len(), 2);
    }
}
