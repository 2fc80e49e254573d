//! The GMC side of a rebuild, read from MongoDB (DocumentDB in production):
//! the latest recommendation outcome of every doctor from ONE aggregation,
//! the doctors of a batch of GMC numbers from a few `$in` queries (never one
//! query per doctor), and every doctor of `doctorsForDB` page by page. Also
//! the compact GMC-number containers ([`GmcNumberMap`], [`GmcNumberSet`]) a
//! run keeps per doctor.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::{StreamExt, TryStreamExt};
use mongodb::{Client, Collection};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::SourceError;
use crate::config::MongoSettings;
use crate::domain::gmc::GMC_DOCTOR_FIELDS;
use crate::domain::{GmcDoctor, GmcNumber, GmcNumberError, GmcStatus, RejectReason};

/// A map keyed by GMC number that stores the usual all-digit numbers as a
/// `u64` (8 bytes instead of a heap string), so that a run can keep one
/// entry per doctor for a million doctors and more in a few tens of MB.
/// Numbers that do not fit (leading zero, letters, more than 19 digits)
/// are kept as strings beside them; both forms never collide.
#[derive(Clone, Debug)]
pub struct GmcNumberMap<V> {
    numeric: HashMap<u64, V>,
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

/// The `u64` form of a GMC number when it round-trips exactly to the same text.
fn numeric_key(number: &str) -> Option<u64> {
    let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    let canonical = number.len() == 1 || !number.starts_with('0');
    if digits && canonical && number.len() <= 19 {
        number.parse().ok()
    } else {
        None
    }
}

impl<V> GmcNumberMap<V> {
    pub fn new() -> Self {
        Self::default()
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
        }
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
        let pipeline = vec![
            doc! {"$match": {"actualSubmissionDate": {"$exists": true, "$ne": null}}},
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
        info!(
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
                if let Some(k) = numeric_key(n.as_str()).and_then(|k| i64::try_from(k).ok()) {
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
        let numeric = self
            .doctors
            .find_one(doc! {"_id": {"$gt": f64::NEG_INFINITY}})
            .projection(doc! {"_id": 1})
            .await?;
        self.numeric_ids = numeric.is_some();
        if self.numeric_ids {
            info!("Some GMC doctors have a numeric _id; lookups ask for both forms.");
        }
        Ok(self.numeric_ids)
    }

    /// Every doctor of `doctorsForDB` in pages of `batch_size`, read ahead
    /// by a task (see the module notes).
    pub fn pages(&self) -> DoctorPages {
        self.pages_with_guard(CURSOR_STALL_GUARD)
    }

    /// [`pages`](Self::pages) with another stall guard (tests use a short one).
    pub fn pages_with_guard(&self, stall_guard: Duration) -> DoctorPages {
        let (tx, pages) = mpsc::channel(2);
        let resumes = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read_doctors(
            self.doctors.clone(),
            self.batch_size as usize,
            stall_guard,
            tx,
            resumes.clone(),
        ));
        DoctorPages {
            pages,
            resumes,
            reader,
        }
    }

    /// The number of doctors, as the server estimates it (for progress bars).
    pub async fn estimated_doctors(&self) -> Result<u64, SourceError> {
        Ok(self.doctors.estimated_document_count().await?)
    }
}

fn projection() -> Document {
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

/// How long the reader of `doctorsForDB` lets its cursor wait for a slow
/// consumer before it closes it (and later resumes by `_id`). DocumentDB and
/// MongoDB close cursors idle for ten minutes.
pub const CURSOR_STALL_GUARD: Duration = Duration::from_secs(60);

/// Pages of `doctorsForDB`, in `_id` order, read by a task of their own
/// (see [`GmcSource::pages`]).
#[derive(Debug)]
pub struct DoctorPages {
    pages: mpsc::Receiver<Result<DoctorPage, SourceError>>,
    resumes: Arc<AtomicU64>,
    reader: JoinHandle<()>,
}

/// One page of doctors.
#[derive(Debug, Default)]
pub struct DoctorPage {
    pub rows: Vec<DoctorRow>,
}

impl DoctorPages {
    /// The next page, or `None` when every doctor was read.
    pub async fn next_page(&mut self) -> Result<Option<DoctorPage>, SourceError> {
        self.pages.recv().await.transpose()
    }

    /// How many times the reader closed its cursor during a stall and resumed.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

impl Drop for DoctorPages {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads every doctor through one cursor sorted by `_id`, in pages. When the
/// consumer keeps a page waiting longer than `stall_guard`, the cursor is
/// dropped (the driver kills it on the server) and, once the page is taken,
/// a new one starts after the last `_id` read.
async fn read_doctors(
    doctors: Collection<Document>,
    page_size: usize,
    stall_guard: Duration,
    pages: mpsc::Sender<Result<DoctorPage, SourceError>>,
    resumes: Arc<AtomicU64>,
) {
    let mut after: Option<Bson> = None;
    loop {
        let filter = after.as_ref().map(resume_filter).unwrap_or_default();
        let cursor = doctors
            .find(filter)
            .sort(doc! {"_id": 1})
            .projection(projection())
            .batch_size(page_size as u32)
            .await;
        let mut cursor = match cursor {
            Ok(c) => c,
            Err(e) => {
                let _ = pages.send(Err(e.into())).await;
                return;
            }
        };
        let mut rows = Vec::with_capacity(page_size);
        let stalled = loop {
            let doc = match cursor.try_next().await {
                Ok(Some(doc)) => doc,
                Ok(None) => {
                    if !rows.is_empty() {
                        let _ = pages.send(Ok(DoctorPage { rows })).await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = pages.send(Err(e.into())).await;
                    return;
                }
            };
            after = doc.get("_id").cloned();
            rows.push(GmcDoctor::from_document(&doc));
            if rows.len() < page_size {
                continue;
            }
            let page = DoctorPage {
                rows: std::mem::replace(&mut rows, Vec::with_capacity(page_size)),
            };
            match pages.send_timeout(Ok(page), stall_guard).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(page)) => break page,
                Err(SendTimeoutError::Closed(_)) => return,
            }
        };
        drop(cursor);
        resumes.fetch_add(1, Ordering::Relaxed);
        warn!(
            stall_secs = stall_guard.as_secs(),
            after = ?after,
            "The writer stalled; closed the doctorsForDB cursor and will resume after the last id."
        );
        if pages.send(stalled).await.is_err() {
            return;
        }
    }
}

/// The filter that continues a read sorted by `_id` after `last`. `$gt`
/// compares within one BSON type, and numbers sort before strings, so after
/// a numeric id the strings follow as well. (Ids of other types sort after
/// strings; they are unusable anyway and are only read by the first cursor.)
fn resume_filter(last: &Bson) -> Document {
    match last {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            doc! {"$or": [{"_id": {"$gt": last.clone()}}, {"_id": {"$gte": ""}}]}
        }
        _ => doc! {"_id": {"$gt": last.clone()}},
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
        assert_eq!(numeric_key("0123"), None);
        assert_eq!(numeric_key("C123"), None);
        assert_eq!(numeric_key("12345678901234567890"), None);
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

    #[test]
    fn the_projection_reads_only_the_doctor_fields() {
        let p = projection();
        assert_eq!(p.len(), GMC_DOCTOR_FIELDS.len());
        assert!(p.contains_key("designatedBodyCode"));
        assert!(!p.contains_key("sanction"));
    }

    #[test]
    fn a_read_resumes_after_the_last_id_and_numbers_continue_into_strings() {
        assert_eq!(
            resume_filter(&Bson::String("1000".into())),
            doc! {"_id": {"$gt": "1000"}}
        );
        assert_eq!(
            resume_filter(&Bson::Int64(7)),
            doc! {"$or": [{"_id": {"$gt": 7_i64}}, {"_id": {"$gte": ""}}]}
        );
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
