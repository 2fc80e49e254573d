//! The GMC side of a rebuild, read from MongoDB (DocumentDB in production):
//! the latest recommendation outcome of every doctor from ONE aggregation,
//! the doctors of a batch of GMC numbers from a few `$in` queries (never one
//! query per doctor), and every doctor of `doctorsForDB` page by page
//! ([`pages`]). Also the compact GMC-number containers ([`numbers`]) a run
//! keeps per doctor, and the other GMC source: the recommendation service's
//! batches over RabbitMQ ([`queue`], parsed by [`batch`]).
//!
//! No cursor is left idle long enough to be killed. DocumentDB (like
//! MongoDB) kills a cursor that sees no `getMore` for ten minutes, and a
//! rebuild waits a lot: OpenSearch applies backpressure through the bulk
//! writer's bounded queue, so the reader of `doctorsForDB` can be parked
//! for a long time between two pages. So the doctors are read by a task of
//! their own through one cursor sorted by `_id`, a page ahead of the
//! writer; if the writer leaves a page waiting longer than
//! [`CURSOR_STALL_GUARD`] (one minute), the task closes the cursor and,
//! once the writer takes the page, opens a new one after the last `_id` it
//! read (keyset resumption). The outcome aggregation is drained into memory
//! before any writing starts, so it never waits on OpenSearch.
//!
//! Why not keyset pages throughout (`_id > last`, `limit`, one query per
//! page)? That is as cheap as one cursor on MongoDB and DocumentDB, which
//! walk the `_id` index; SecantusDB (the local stack) answers an `_id` range
//! with a collection scan, so paging there costs a full scan per page:
//! measured 4 s per page of 1,000 over 47,000 doctors, 240 doctors/s.

pub mod batch;
pub mod indexes;
pub mod numbers;
pub mod pages;
pub mod queue;
pub mod store;

use std::collections::HashMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::{StreamExt, TryStreamExt};
use mongodb::{Client, Collection};
use tracing::{debug, info};

pub use numbers::{GmcNumberMap, GmcNumberSet};
pub use pages::{DoctorPage, DoctorPages, CURSOR_STALL_GUARD};
pub use queue::{read_over_queue, GmcQueueRead};
pub use store::DoctorStore;

use super::SourceError;
use crate::config::MongoSettings;
use crate::domain::gmc::GMC_DOCTOR_FIELDS;
use crate::domain::{GmcDoctor, GmcNumber, GmcNumberError, GmcStatus, RejectReason};
use crate::retry::RetryPolicy;
use numbers::numeric_value;

/// The latest recommendation outcome per doctor.
pub type OutcomeMap = GmcNumberMap<GmcStatus>;

/// What the outcome aggregation delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutcomeLoad {
    /// Doctors with a latest submitted recommendation (groups returned).
    pub groups: u64,
    /// Groups whose latest outcome is not a known value; they get no `gmcStatus`.
    pub unknown_outcomes: u64,
    /// Groups whose `gmcNumber` is not usable; they match no doctor.
    pub unusable_numbers: u64,
}

/// What one full read of `doctorsForDB` delivered.
#[derive(Debug, Default)]
pub struct DoctorRead {
    /// Every doctor with a usable number (the first of ids that trim alike).
    pub doctors: DoctorStore,
    /// Rows read with a usable number (collisions included).
    pub rows: u64,
    /// Rows whose id is no usable number, by reject key.
    pub rejects: Vec<(&'static str, u64)>,
    /// Times the cursor was left (a stall, MongoDB gone away) and the read
    /// resumed after the last id.
    pub resumes: u64,
}

/// One document of `doctorsForDB`: a doctor, or why it cannot be one.
pub type DoctorRow = Result<(GmcNumber, GmcDoctor), GmcNumberError>;

/// The reject key of an unusable `doctorsForDB` id (the same keys as TCS rejects).
pub fn reject_key(error: &GmcNumberError) -> &'static str {
    RejectReason::BadGmcNumber(error.clone()).as_str()
}

/// Reads the GMC collections of one database.
#[derive(Clone, Debug)]
pub struct GmcSource {
    doctors: Collection<Document>,
    recommendations: Collection<Document>,
    batch_size: u32,
    numeric_ids: bool,
    /// How a read that loses the server waits for it (see `pages`).
    retry: RetryPolicy,
}

/// GMC numbers per `$in` query (see [`GmcSource::doctors_by_number`]).
pub const IN_CHUNK: usize = 50;
/// `$in` queries of one batch in flight at once.
pub const IN_CONCURRENCY: usize = 4;

impl GmcSource {
    pub fn new(client: &Client, settings: &MongoSettings) -> Self {
        let db = client.database(&settings.database);
        Self {
            doctors: db.collection(&settings.doctors_collection),
            recommendations: db.collection(&settings.recommendation_collection),
            batch_size: settings.batch_size.max(1),
            numeric_ids: false,
            retry: RetryPolicy::default(),
        }
    }

    /// Waits for a server gone away mid-read with this policy (the run's).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The latest outcome of every doctor, from one aggregation: the
    /// submitted recommendations (those with an `actualSubmissionDate`;
    /// drafts have none) grouped by doctor, keeping the greatest
    /// `{gmcSubmissionDate, outcome}` pair. Documents compare field by
    /// field, so that is the outcome of the latest submission (on an equal
    /// date, the outcome that sorts last: a fixed rule, not arrival order).
    ///
    /// `$max` instead of `$sort` + `$first`: the group is a hash aggregation
    /// whose memory grows with the doctors, not the recommendations, and it
    /// needs no sort (which DocumentDB spills to disk past its memory
    /// limit). Measured on SecantusDB with 383k recommendations: 8.6 s
    /// against 14.8 s for the sorted form. `allowDiskUse` stays on for
    /// servers that choose to spill anyway.
    pub async fn latest_outcomes(&self) -> Result<(OutcomeMap, OutcomeLoad), SourceError> {
        self.outcomes_matching(doc! {}).await
    }

    /// The latest outcome of each of `numbers` (the rule of
    /// [`latest_outcomes`](Self::latest_outcomes), for a few doctors: the
    /// live applier recomputes a doctor's `gmcStatus` this way), by one
    /// aggregation per [`IN_CHUNK`] numbers, [`IN_CONCURRENCY`] at a time:
    /// the `$in` of a whole batch costs SecantusDB the square of its length
    /// (see [`doctors_by_number`](Self::doctors_by_number)); under a flood,
    /// one aggregation of 500 numbers held the applier to ~850 changes/s.
    pub async fn outcomes_of(&self, numbers: &[GmcNumber]) -> Result<OutcomeMap, SourceError> {
        let lookups: Vec<_> = numbers
            .chunks(IN_CHUNK)
            .map(|chunk| self.outcomes_in(chunk))
            .collect();
        let chunks = futures::stream::iter(lookups)
            .buffer_unordered(IN_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut map = OutcomeMap::with_capacity(numbers.len());
        // Each number is asked for in one chunk only, so no two chunks
        // answer for the same doctor.
        for chunk in chunks {
            for (number, status) in chunk.iter() {
                map.insert(&number, *status);
            }
        }
        Ok(map)
    }

    async fn outcomes_in(&self, numbers: &[GmcNumber]) -> Result<OutcomeMap, SourceError> {
        if numbers.is_empty() {
            return Ok(OutcomeMap::new());
        }
        let mut wanted: Vec<Bson> = numbers
            .iter()
            .map(|n| Bson::String(n.as_str().into()))
            .collect();
        if self.numeric_ids {
            wanted.extend(
                numbers
                    .iter()
                    .filter_map(|n| numeric_value(n.as_str()).and_then(|k| i64::try_from(k).ok()))
                    .map(Bson::Int64),
            );
        }
        let (map, _) = self
            .outcomes_matching(doc! {"gmcNumber": {"$in": wanted}})
            .await?;
        Ok(map)
    }

    async fn outcomes_matching(
        &self,
        filter: Document,
    ) -> Result<(OutcomeMap, OutcomeLoad), SourceError> {
        let mut matching = doc! {"actualSubmissionDate": {"$exists": true, "$ne": null}};
        matching.extend(filter);
        let pipeline = vec![
            doc! {"$match": matching},
            doc! {"$group": {
                "_id": "$gmcNumber",
                "latest": {"$max": {"submitted": "$gmcSubmissionDate", "outcome": "$outcome"}},
            }},
        ];
        let mut cursor = self
            .recommendations
            .aggregate(pipeline)
            .allow_disk_use(true)
            .batch_size(self.batch_size.max(1000))
            .await?;
        let mut map = OutcomeMap::new();
        // Stored numbers that differ only by padding trim to one doctor;
        // the later submission wins. Only such collisions are tracked.
        let mut padded: HashMap<GmcNumber, Bson> = HashMap::new();
        let mut load = OutcomeLoad::default();
        while let Some(group) = cursor.try_next().await? {
            load.groups += 1;
            let raw = match group.get("_id") {
                Some(Bson::String(s)) => s.clone(),
                Some(Bson::Int32(n)) => n.to_string(),
                Some(Bson::Int64(n)) => n.to_string(),
                _ => String::new(),
            };
            let Ok(number) = GmcNumber::parse(&raw) else {
                load.unusable_numbers += 1;
                continue;
            };
            let latest = group.get_document("latest").ok();
            let Some(status) = latest
                .and_then(|l| l.get_str("outcome").ok())
                .and_then(|s| s.parse::<GmcStatus>().ok())
            else {
                load.unknown_outcomes += 1;
                continue;
            };
            let submitted = latest
                .and_then(|l| l.get("submitted").cloned())
                .unwrap_or(Bson::Null);
            if raw != number.as_str() || padded.contains_key(&number) {
                if let Some(earlier) = padded.get(&number) {
                    if !is_later(&submitted, earlier) {
                        continue;
                    }
                }
                padded.insert(number.clone(), submitted);
            }
            map.insert(&number, status);
        }
        debug!(
            doctors = map.len(),
            groups = load.groups,
            unknown_outcomes = load.unknown_outcomes,
            "Loaded the latest recommendation outcomes."
        );
        Ok((map, load))
    }

    /// The GMC doctors among `numbers`, by `$in` queries on `_id`: one per
    /// [`IN_CHUNK`] numbers, run [`IN_CONCURRENCY`] at a time.
    ///
    /// Why chunks: an `_id` `$in` is a point lookup per value on MongoDB and
    /// DocumentDB, so one query of 1000 ids costs a few milliseconds there.
    /// SecantusDB (the local stack) re-checks every fetched document against
    /// the whole `$in` list, so its cost grows with the square of the list:
    /// measured on 4000 ids, 100 µs per id in chunks of 50, 130 µs in chunks
    /// of 100, 690 µs in one query of 1000. Small chunks cost MongoDB
    /// nothing noticeable and keep SecantusDB linear; 50 is its sweet spot.
    ///
    /// Numbers are asked for as strings, the type of `doctorsForDB._id`;
    /// when [`probe_id_types`](Self::probe_id_types) found numeric ids in
    /// the collection, numeric-looking numbers are asked for as integers too.
    pub async fn doctors_by_number(
        &self,
        numbers: &[GmcNumber],
    ) -> Result<Vec<(GmcNumber, GmcDoctor)>, SourceError> {
        let lookups: Vec<_> = numbers
            .chunks(IN_CHUNK)
            .map(|chunk| self.doctors_in(chunk))
            .collect();
        let chunks = futures::stream::iter(lookups)
            .buffer_unordered(IN_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let found: Vec<(GmcNumber, GmcDoctor)> = chunks.into_iter().flatten().collect();
        debug!(
            asked = numbers.len(),
            found = found.len(),
            "Fetched GMC doctors."
        );
        Ok(found)
    }

    async fn doctors_in(
        &self,
        numbers: &[GmcNumber],
    ) -> Result<Vec<(GmcNumber, GmcDoctor)>, SourceError> {
        let mut ids: Vec<Bson> = Vec::with_capacity(numbers.len() * 2);
        for n in numbers {
            ids.push(Bson::String(n.as_str().to_string()));
            if self.numeric_ids {
                if let Some(k) = numeric_value(n.as_str()).and_then(|k| i64::try_from(k).ok()) {
                    ids.push(Bson::Int64(k));
                }
            }
        }
        let docs: Vec<Document> = self
            .doctors
            .find(doc! {"_id": {"$in": ids}})
            .projection(projection())
            .batch_size(numbers.len().max(1) as u32 * 2)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| GmcDoctor::from_document(d).ok())
            .collect())
    }

    /// Looks once whether any doctor has a numeric `_id` (an index range
    /// probe, not a scan), so that lookups ask for both forms only then.
    pub async fn probe_id_types(&mut self) -> Result<bool, SourceError> {
        let numeric = self.has_numeric_ids().await?;
        self.set_numeric_ids(numeric);
        Ok(numeric)
    }

    /// Whether any doctor has a numeric `_id`.
    pub async fn has_numeric_ids(&self) -> Result<bool, SourceError> {
        let numeric = self
            .doctors
            .find_one(doc! {"_id": {"$gt": f64::NEG_INFINITY}})
            .projection(doc! {"_id": 1})
            .await?;
        Ok(numeric.is_some())
    }

    /// Makes lookups ask for numeric ids too (or not).
    pub fn set_numeric_ids(&mut self, numeric: bool) {
        self.numeric_ids = numeric;
        if numeric {
            info!("Some GMC doctors have a numeric _id; lookups ask for both forms.");
        }
    }

    /// Every doctor of `doctorsForDB` in pages of `batch_size`, read ahead
    /// by a task (see the module notes).
    pub fn pages(&self) -> DoctorPages {
        self.pages_with_guard(CURSOR_STALL_GUARD)
    }

    /// [`pages`](Self::pages) with another stall guard (tests use a short one).
    pub fn pages_with_guard(&self, stall_guard: Duration) -> DoctorPages {
        DoctorPages::start(
            self.doctors.clone(),
            self.batch_size as usize,
            stall_guard,
            self.retry,
        )
    }

    /// Reads every doctor of `doctorsForDB` once, through one cursor in
    /// `_id` order, into a compact [`DoctorStore`]; `on_page` hears how many
    /// rows each page held (for progress). Sized by `expected` (the
    /// server's estimate), so the table is not rehashed on the way.
    pub async fn read_doctors(
        &self,
        expected: usize,
        mut on_page: impl FnMut(usize),
    ) -> Result<DoctorRead, SourceError> {
        let mut doctors = DoctorStore::with_capacity(expected);
        let read = self
            .read_doctor_pages(|page| {
                on_page(page.len());
                for (number, doctor) in page {
                    doctors.insert(&number, doctor);
                }
            })
            .await?;
        debug!(
            doctors = doctors.len(),
            distinct_values = doctors.distinct_values(),
            "Read doctorsForDB."
        );
        Ok(DoctorRead { doctors, ..read })
    }

    /// Reads every doctor of `doctorsForDB` once, through one cursor in
    /// `_id` order, handing each page's usable doctors to `on_page` as it
    /// comes (a run merges with them while the rest is read). The answer
    /// has the counts; its store is empty.
    pub async fn read_doctor_pages(
        &self,
        mut on_page: impl FnMut(Vec<(GmcNumber, GmcDoctor)>),
    ) -> Result<DoctorRead, SourceError> {
        let mut read = DoctorRead::default();
        let mut rejects: HashMap<&'static str, u64> = HashMap::new();
        let mut pages = self.pages();
        while let Some(page) = pages.next_page().await? {
            let mut usable = Vec::with_capacity(page.rows.len());
            for row in page.rows {
                match row {
                    Ok(row) => usable.push(row),
                    Err(e) => *rejects.entry(reject_key(&e)).or_default() += 1,
                }
            }
            read.rows += usable.len() as u64;
            on_page(usable);
        }
        read.rejects = rejects.into_iter().collect();
        read.rejects.sort_unstable();
        read.resumes = pages.resumes();
        Ok(read)
    }

    /// The number of doctors, as the server estimates it (for progress
    /// bars), if it answers within [`ESTIMATE_TIME_LIMIT`]: MongoDB and
    /// DocumentDB answer from the collection's metadata at once, but a
    /// server that counts by scanning (SecantusDB holds its store lock for
    /// the whole scan: 31 s at a million doctors, measured) would stall
    /// every read of the run behind it; there the progress goes without a
    /// total.
    pub async fn estimated_doctors(&self) -> Result<u64, SourceError> {
        Ok(self
            .doctors
            .estimated_document_count()
            .max_time(ESTIMATE_TIME_LIMIT)
            .await?)
    }
}

/// How long the doctor count may take before the run goes on without it.
pub const ESTIMATE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Only the fields of `doctorsForDB` a doctor document needs.
pub(crate) fn projection() -> Document {
    GMC_DOCTOR_FIELDS
        .iter()
        .map(|f| ((*f).to_string(), Bson::Int32(1)))
        .collect()
}

fn is_later(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::DateTime(a), Bson::DateTime(b)) => a > b,
        (Bson::String(a), Bson::String(b)) => a > b,
        (_, Bson::Null) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_reads_only_the_doctor_fields() {
        let p = projection();
        assert_eq!(p.len(), GMC_DOCTOR_FIELDS.len());
        assert!(p.contains_key("designatedBodyCode"));
        assert!(!p.contains_key("sanction"));
    }

    #[test]
    fn later_submissions_compare_by_date() {
        let d = |s| Bson::DateTime(bson::DateTime::parse_rfc3339_str(s).unwrap());
        assert!(is_later(
            &d("2024-01-02T00:00:00Z"),
            &d("2024-01-01T00:00:00Z")
        ));
        assert!(!is_later(
            &d("2023-01-02T00:00:00Z"),
            &d("2024-01-01T00:00:00Z")
        ));
        assert!(is_later(&d("2023-01-02T00:00:00Z"), &Bson::Null));
    }
}
