//! The doctors of `doctorsForDB`, held in memory for one run in a compact
//! form, so that the TCS merge and the GMC-only step read the collection
//! once (one `_id`-ordered cursor) instead of looking doctors up by `$in`.
//!
//! Why in memory: the TCS records arrive in no useful order and must stay
//! unacked until their document is written, so they cannot wait in memory
//! for a slow join; the doctors can. What it costs per doctor: a fixed
//! 36-byte record (eight 4-byte string handles and a flag) in a vector,
//! and its position in a hash table keyed by the `u32` form of the number
//! (8 bytes a bucket and one of control, with as many buckets again empty:
//! about 55 bytes a doctor at a million, where the records in the table
//! took 105), plus each *distinct* field value once in a string pool
//! (about 60 bytes plus its length). Names, dates, designated bodies,
//! statuses and admins repeat a lot across doctors, so the pool stays small;
//! a data set where every value were unique would cost about 8 × 70 bytes a
//! doctor more. `scripts/bench` prints the peak memory of the run.

use std::collections::HashMap;
use std::sync::Arc;

use super::numbers::GmcNumberMap;
use crate::domain::{GmcDoctor, GmcNumber};

/// A handle into the [`StringPool`]; [`NONE`] is a missing value.
type Handle = u32;
const NONE: Handle = Handle::MAX;

/// Each distinct string once, addressed by a 4-byte handle.
#[derive(Debug, Default)]
struct StringPool {
    values: Vec<Arc<str>>,
    handles: HashMap<Arc<str>, Handle>,
}

impl StringPool {
    fn intern(&mut self, value: Option<String>) -> Handle {
        let Some(value) = value else {
            return NONE;
        };
        if let Some(handle) = self.handles.get(value.as_str()) {
            return *handle;
        }
        let handle = Handle::try_from(self.values.len())
            .ok()
            .filter(|h| *h != NONE)
            .expect("more than four billion distinct GMC field values");
        let shared: Arc<str> = value.into();
        self.values.push(shared.clone());
        self.handles.insert(shared, handle);
        handle
    }

    fn get(&self, handle: Handle) -> Option<String> {
        (handle != NONE).then(|| self.values[handle as usize].to_string())
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

/// One doctor, as handles into the pool (field order of [`GmcDoctor`]).
#[derive(Clone, Copy, Debug)]
struct PackedDoctor {
    fields: [Handle; 8],
    exists_in_gmc: bool,
}

/// Every doctor of `doctorsForDB`, compactly (see the module notes).
#[derive(Debug, Default)]
pub struct DoctorStore {
    /// The position of each doctor in `doctors`: the hash table holds
    /// 4-byte positions rather than the 36-byte records, since it keeps
    /// about as many empty buckets as full ones (a million doctors take
    /// 2^21 buckets: 32 MB of positions against 100 MB of records).
    index: GmcNumberMap<u32>,
    doctors: Vec<PackedDoctor>,
    pool: StringPool,
    /// Rows whose number was already stored (ids that trim to one number).
    collisions: u64,
}

impl DoctorStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store sized for about `doctors` doctors (no rehashing on the way).
    pub fn with_capacity(doctors: usize) -> Self {
        Self {
            index: GmcNumberMap::with_capacity(doctors),
            doctors: Vec::with_capacity(doctors),
            ..Self::default()
        }
    }

    /// Keeps a doctor. Rows come in `_id` order; when two ids trim to the
    /// same number (`" 123"` and `"123"`), the first one read is kept, as
    /// the GMC-only step always did, and `false` is returned.
    pub fn insert(&mut self, number: &GmcNumber, doctor: GmcDoctor) -> bool {
        if self.index.contains(number) {
            self.collisions += 1;
            return false;
        }
        let GmcDoctor {
            doctor_first_name,
            doctor_last_name,
            submission_date,
            under_notice,
            doctor_status,
            last_updated_date,
            designated_body_code,
            admin,
            exists_in_gmc,
        } = doctor;
        let pool = &mut self.pool;
        let packed = PackedDoctor {
            fields: [
                pool.intern(doctor_first_name),
                pool.intern(doctor_last_name),
                pool.intern(submission_date),
                pool.intern(under_notice),
                pool.intern(doctor_status),
                pool.intern(last_updated_date),
                pool.intern(designated_body_code),
                pool.intern(admin),
            ],
            exists_in_gmc,
        };
        let position =
            u32::try_from(self.doctors.len()).expect("more than four billion GMC doctors");
        self.doctors.push(packed);
        self.index.insert(number, position);
        true
    }

    /// Whether `doctorsForDB` has a doctor of `number` (no unpacking).
    pub fn contains(&self, number: &GmcNumber) -> bool {
        self.index.contains(number)
    }

    /// The doctor of `number`, if `doctorsForDB` has one.
    pub fn get(&self, number: &GmcNumber) -> Option<GmcDoctor> {
        self.index
            .get(number)
            .map(|&at| self.unpack(&self.doctors[at as usize]))
    }

    fn unpack(&self, packed: &PackedDoctor) -> GmcDoctor {
        let [first, last, submission, notice, status, updated, body, admin] =
            packed.fields.map(|h| self.pool.get(h));
        GmcDoctor {
            doctor_first_name: first,
            doctor_last_name: last,
            submission_date: submission,
            under_notice: notice,
            doctor_status: status,
            last_updated_date: updated,
            designated_body_code: body,
            admin,
            exists_in_gmc: packed.exists_in_gmc,
        }
    }

    /// Every doctor, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (GmcNumber, GmcDoctor)> + '_ {
        self.index
            .iter()
            .map(|(n, &at)| (n, self.unpack(&self.doctors[at as usize])))
    }

    pub fn len(&self) -> usize {
        self.doctors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doctors.is_empty()
    }

    /// Distinct field values in the pool.
    pub fn distinct_values(&self) -> usize {
        self.pool.len()
    }

    /// Rows dropped because their id trims to a number already stored.
    pub fn collisions(&self) -> u64 {
        self.collisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> GmcNumber {
        GmcNumber::parse(s).unwrap()
    }

    fn doctor(first: &str, body: Option<&str>) -> GmcDoctor {
        GmcDoctor {
            doctor_first_name: Some(first.into()),
            doctor_last_name: Some("Smith".into()),
            submission_date: Some("2024-01-02".into()),
            under_notice: Some("No".into()),
            doctor_status: None,
            last_updated_date: Some("2024-02-03".into()),
            designated_body_code: body.map(Into::into),
            admin: None,
            exists_in_gmc: true,
        }
    }

    #[test]
    fn a_stored_doctor_comes_back_field_for_field() {
        let mut store = DoctorStore::new();
        let ann = doctor("Ann", Some("1-AIIDR8"));
        assert!(store.insert(&n("123"), ann.clone()));
        assert!(store.insert(&n("0123"), doctor("Bob", None)));
        assert_eq!(store.get(&n("123")), Some(ann));
        assert_eq!(
            store.get(&n("0123")).unwrap().doctor_first_name.as_deref(),
            Some("Bob")
        );
        assert_eq!(store.get(&n("124")), None);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn repeated_values_are_pooled_once() {
        let mut store = DoctorStore::new();
        for i in 0..1000 {
            store.insert(&n(&i.to_string()), doctor("Ann", Some("1-AIIDR8")));
        }
        // Ann, Smith, two dates, No, the body: six distinct values.
        assert_eq!(store.distinct_values(), 6);
        assert_eq!(store.len(), 1000);
    }

    #[test]
    fn the_first_of_two_ids_that_trim_to_one_number_is_kept() {
        let mut store = DoctorStore::new();
        assert!(store.insert(&n(" 7"), doctor("First", None)));
        assert!(!store.insert(&n("7"), doctor("Second", None)));
        assert_eq!(
            store.get(&n("7")).unwrap().doctor_first_name.as_deref(),
            Some("First")
        );
        assert_eq!(store.collisions(), 1);
    }

    #[test]
    fn iteration_returns_every_doctor_with_its_number() {
        let mut store = DoctorStore::new();
        store.insert(&n("5"), doctor("Five", None));
        store.insert(&n("C6"), doctor("Six", None));
        let mut all: Vec<(String, Option<String>)> = store
            .iter()
            .map(|(k, d)| (k.into_string(), d.doctor_first_name))
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("5".into(), Some("Five".into())),
                ("C6".into(), Some("Six".into()))
            ]
        );
    }
}
