//! Deterministic generated data: N doctors with the realistic mixes of the
//! live system (13 designated bodies, discrepancies, doctors on one side
//! only, several recommendations each, a few malformed records), the
//! connection service's logs and hidden discrepancies of a share of them,
//! and the merged document each one must become.
//!
//! Every doctor is derived from `(seed, variant, index)` alone, so the data
//! can be streamed for a million doctors without holding it.

use std::collections::BTreeMap;

use bson::{doc, Document};
use chrono::{Duration, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use rebuilder::domain::connection::format_connection_time;
use rebuilder::domain::{GmcStatus, HiddenDiscrepancy, MasterDoctor};

pub const DESIGNATED_BODIES: [&str; 13] = [
    "1-AIIDR8", "1-AIIDSA", "1-AIIDWT", "1-AIIDVS", "1-AIIDWA", "1-AIIDNQ", "1-AIIDHJ", "1-AIIDMQ",
    "1-AIIDMY", "1-AIIDQQ", "1-AIIDH1", "1-AIIDWI", "1-AIIDSI",
];
const FIRST: [&str; 12] = [
    "Amara", "Ben", "Chloe", "Dev", "Elif", "Farah", "George", "Hana", "Isaac", "Jonah", "Keira",
    "Liam",
];
const LAST: [&str; 12] = [
    "Adeyemi",
    "Brown",
    "Chen",
    "Davies",
    "Evans",
    "Fitzgerald",
    "Gupta",
    "Hughes",
    "Iqbal",
    "Jones",
    "Khan",
    "Lewis",
];
const PROGRAMMES: [&str; 8] = [
    "General Practice",
    "Cardiology",
    "General Surgery",
    "Paediatrics",
    "Psychiatry",
    "Anaesthetics",
    "Emergency Medicine",
    "Radiology",
];
const MEMBERSHIP: [&str; 4] = ["SUBSTANTIVE", "SUBSTANTIVE", "LAT", "MILITARY"];
const STATUSES: [&str; 7] = [
    "NOT_STARTED",
    "STARTED",
    "READY_TO_REVIEW",
    "READY_TO_SUBMIT",
    "SUBMITTED_TO_GMC",
    "COMPLETED",
    "DRAFT",
];
const OWNERS: [&str; 5] = [
    "North West",
    "London",
    "Wessex",
    "Yorkshire",
    "East of England",
];

/// Which sources hold a doctor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// In TCS and in `doctorsForDB` with `existsInGmc` true.
    Both,
    /// In TCS only: not in GMC at all.
    TcsOnly,
    /// In `doctorsForDB` only.
    GmcOnly,
    /// In TCS and in `doctorsForDB`, but GMC says the doctor no longer exists there.
    NoLongerInGmc,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Both => "both",
            Category::TcsOnly => "tcs_only",
            Category::GmcOnly => "gmc_only",
            Category::NoLongerInGmc => "no_longer_in_gmc",
        }
    }
}

/// What to generate. `variant` changes a share of the doctors (names,
/// programmes, designated bodies), for a second run over changed data.
#[derive(Clone, Copy, Debug)]
pub struct DatasetSpec {
    pub seed: u64,
    pub doctors: usize,
    pub variant: u32,
    /// Mix the whole bad-input matrix into the TCS stream (see
    /// [`DatasetSpec::bad_input_matrix`]), not only the usual few.
    pub bad_inputs: bool,
}

/// One generated doctor: its sources and the document it must become.
#[derive(Clone, Debug)]
pub struct GeneratedDoctor {
    pub gmc_number: String,
    pub category: Category,
    /// TCS message bodies in publishing order (two for a duplicated doctor).
    pub tcs_messages: Vec<Value>,
    pub gmc_doctor: Option<Document>,
    pub recommendations: Vec<Document>,
    /// Documents of the connection service's `connectionLogs`.
    pub connection_logs: Vec<Document>,
    /// Documents of the connection service's `hiddenDiscrepancy`.
    pub hidden_discrepancies: Vec<Document>,
    /// The merged document, without `updatedAt` (set at write time).
    pub expected: MasterDoctor,
}

impl DatasetSpec {
    pub fn new(seed: u64, doctors: usize) -> Self {
        Self {
            seed,
            doctors,
            variant: 0,
            bad_inputs: false,
        }
    }

    /// The same data with the whole bad-input matrix in the TCS stream.
    pub fn with_bad_inputs(self) -> Self {
        Self {
            bad_inputs: true,
            ..self
        }
    }

    /// Every class of bad sync message the rebuilder must reject, each with
    /// the reason it must be counted under: bytes that are not UTF-8, an
    /// empty body, JSON nested deeper than the parser's limit, JSON that is
    /// not an object, a GMC number that is blank, an object or a
    /// placeholder, a `tcsPersonId` of the wrong type, and a 10 MB message
    /// with a usable GMC number (over `rabbitmq.max_message_bytes`).
    pub fn bad_input_matrix() -> Vec<(Vec<u8>, &'static str)> {
        let mut nested = vec![b'['; 100_000];
        nested.extend(vec![b']'; 100_000]);
        let big = json!({
            "tcsPersonId": 990_001,
            "gmcReferenceNumber": "7000006",
            "notes": "x".repeat(10 * 1024 * 1024),
        });
        vec![
            (
                b"\xff\xfe{\"gmcReferenceNumber\": \"7000001\"}".to_vec(),
                "invalid_json",
            ),
            (Vec::new(), "invalid_json"),
            (nested, "invalid_json"),
            (b"null".to_vec(), "not_a_record"),
            (b"\"7000002\"".to_vec(), "not_a_record"),
            (
                json!({"tcsPersonId": 990_002, "gmcReferenceNumber": " \t "})
                    .to_string()
                    .into_bytes(),
                "missing_gmc_number",
            ),
            (
                json!({"tcsPersonId": 990_003, "gmcReferenceNumber": {"number": "7000003"}})
                    .to_string()
                    .into_bytes(),
                "missing_gmc_number",
            ),
            (
                json!({"tcsPersonId": 990_004, "gmcReferenceNumber": "N/A"})
                    .to_string()
                    .into_bytes(),
                "unusable_gmc_number",
            ),
            (
                json!({"tcsPersonId": "nine", "gmcReferenceNumber": "7000005"})
                    .to_string()
                    .into_bytes(),
                "not_a_record",
            ),
            (big.to_string().into_bytes(), "too_large"),
        ]
    }

    pub fn with_variant(self, variant: u32) -> Self {
        Self { variant, ..self }
    }

    /// Doctors in index order.
    pub fn doctors(&self) -> impl Iterator<Item = GeneratedDoctor> + '_ {
        (0..self.doctors).map(move |i| self.doctor(i))
    }

    /// Malformed TCS bodies mixed into the stream, with the reject reason
    /// each one must be counted under: a few, growing slowly with N.
    pub fn malformed_tcs_messages(&self) -> Vec<(Vec<u8>, &'static str)> {
        let rounds = 1 + self.doctors / 20_000;
        let mut out = if self.bad_inputs {
            Self::bad_input_matrix()
        } else {
            Vec::new()
        };
        for r in 0..rounds {
            out.push((
                format!("{{\"tcsPersonId\": {r}, \"gmcRef").into_bytes(),
                "invalid_json",
            ));
            out.push((b"[\"not\", \"a\", \"trainee\"]".to_vec(), "not_a_record"));
            out.push((
                json!({"tcsPersonId": 900_000 + r, "doctorFirstName": "No", "doctorLastName": "Number"})
                    .to_string()
                    .into_bytes(),
                "missing_gmc_number",
            ));
            out.push((
                json!({"tcsPersonId": 910_000 + r, "gmcReferenceNumber": "UNKNOWN"})
                    .to_string()
                    .into_bytes(),
                "unusable_gmc_number",
            ));
        }
        out
    }

    /// Reject counts by reason that the malformed messages must produce.
    pub fn expected_rejects(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for (_, reason) in self.malformed_tcs_messages() {
            *counts.entry(reason).or_insert(0) += 1;
        }
        counts
    }

    /// The whole TCS stream as the simulator publishes it: every doctor's
    /// messages with the malformed ones spread through, without `syncEnd`.
    pub fn tcs_stream(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        let malformed = self.malformed_tcs_messages();
        let spacing = (self.doctors / (malformed.len() + 1)).max(1);
        let mut pending = malformed.into_iter();
        self.doctors().enumerate().flat_map(move |(i, d)| {
            let mut bodies: Vec<Vec<u8>> = d
                .tcs_messages
                .iter()
                .map(|m| serde_json::to_vec(m).expect("JSON always serializes"))
                .collect();
            if (i + 1) % spacing == 0 {
                if let Some((body, _)) = pending.next() {
                    bodies.push(body);
                }
            }
            if i + 1 == self.doctors {
                bodies.extend(pending.by_ref().map(|(b, _)| b));
            }
            bodies
        })
    }

    pub fn doctor(&self, index: usize) -> GeneratedDoctor {
        let mut doctor = self.doctor_without_connection(index);
        // The connection data depends on the base data only (a variant
        // changes documents, not what the connection service holds).
        let base = if self.variant == 0 {
            doctor.expected.clone()
        } else {
            self.with_variant(0)
                .doctor_without_connection(index)
                .expected
        };
        self.add_connection_data(index, &base, &mut doctor);
        doctor
    }

    /// The connection service's data of a doctor, drawn from a stream of
    /// its own (so the rest of the data set is as it was before it
    /// existed): about 40% of doctors have one to three connection logs,
    /// about a third of the discrepancies are hidden for one or two
    /// designated bodies, and a few doctors that are not discrepancies are
    /// hidden too (hidden before their bodies matched again). A few `gmcId`
    /// values are padded or stored as numbers, as hand-made entries are.
    fn add_connection_data(&self, index: usize, base: &MasterDoctor, doctor: &mut GeneratedDoctor) {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ 0xC0_77EC ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let number = doctor.gmc_number.clone();
        let gmc_id = |rng: &mut ChaCha8Rng| -> bson::Bson {
            let roll: f64 = rng.random();
            if roll < 0.03 {
                bson::Bson::String(format!(" {number} "))
            } else if roll < 0.06 {
                bson::Bson::Int64(number.parse().expect("generated numbers are digits"))
            } else {
                bson::Bson::String(number.clone())
            }
        };
        let base_time = NaiveDate::from_ymd_opt(2024, 1, 1)
            .expect("a valid date")
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        let body = base
            .designated_body
            .clone()
            .or_else(|| base.tcs_designated_body.clone())
            .unwrap_or_else(|| DESIGNATED_BODIES[0].to_string());
        if rng.random_bool(0.4) {
            let mut latest: Option<(chrono::DateTime<chrono::Utc>, String)> = None;
            for k in 0..rng.random_range(1..=3) {
                // Distinct instants (k ms apart at least), in no order.
                let at = base_time
                    + Duration::milliseconds(rng.random_range(0..700 * 86_400_000_i64) + k);
                let by = format!(
                    "{}.{}@hee.nhs.uk",
                    pick_from(&mut rng, &FIRST),
                    pick_from(&mut rng, &LAST)
                )
                .to_lowercase();
                let add = rng.random_bool(0.7);
                doctor.connection_logs.push(doc! {
                    "_id": format!("cl-{number}-{k}"),
                    "gmcId": gmc_id(&mut rng),
                    "newDesignatedBodyCode": if add { body.as_str() } else { "" },
                    "previousDesignatedBodyCode": if add { "" } else { body.as_str() },
                    "updatedBy": &by,
                    "requestTime": bson::DateTime::from_chrono(at),
                    "gmcClientId": format!("client-{k}"),
                    "reason": if add { "Doctor has a connection with this designated body" } else { "Conflict of interest" },
                    "requestType": if add { "ADD" } else { "REMOVE" },
                    "responseCode": "0",
                    "_class": "uk.nhs.hee.tis.revalidation.connection.entity.ConnectionRequestLog",
                });
                if latest.as_ref().is_none_or(|(t, _)| at > *t) {
                    latest = Some((at, by));
                }
            }
            if let Some((at, by)) = latest {
                doctor.expected.updated_by = Some(by);
                doctor.expected.last_connection_date_time = Some(format_connection_time(at));
            }
        }
        let mut bodies = Vec::new();
        if base.is_discrepancy() && rng.random_bool(0.35) {
            bodies.extend(
                base.designated_body
                    .clone()
                    .or_else(|| base.tcs_designated_body.clone()),
            );
            if rng.random_bool(0.3) {
                bodies.extend(
                    base.tcs_designated_body
                        .clone()
                        .filter(|t| !bodies.contains(t)),
                );
            }
        } else if !base.is_discrepancy() && rng.random_bool(0.01) {
            bodies.push(body.clone());
        }
        let mut at = base_time + Duration::milliseconds(rng.random_range(0..700 * 86_400_000_i64));
        for (k, hidden_for) in bodies.into_iter().enumerate() {
            let id = format!("hd-{number}-{k}");
            let by = format!("admin{}@hee.nhs.uk", rng.random_range(1..20));
            let reason = pick_from(
                &mut rng,
                &[
                    "Doctor is on leave",
                    "Awaiting GMC update",
                    "Known transfer",
                ],
            );
            doctor.hidden_discrepancies.push(doc! {
                "_id": &id,
                "gmcId": gmc_id(&mut rng),
                "currentDesignatedBodyCode": base.designated_body.as_deref().unwrap_or(""),
                "programmeOwnerDesignatedBodyCode": base.tcs_designated_body.as_deref().unwrap_or(""),
                "hiddenForDesignatedBodyCode": &hidden_for,
                "hiddenBy": &by,
                "reason": reason,
                "hiddenDateTime": bson::DateTime::from_chrono(at),
                "hiddenUntilDate": bson::DateTime::from_chrono(at + Duration::days(90)),
                "_class": "uk.nhs.hee.tis.revalidation.connection.entity.HiddenDiscrepancy",
            });
            doctor
                .expected
                .hidden_discrepancies
                .push(HiddenDiscrepancy {
                    id: Some(id),
                    gmc_id: Some(number.clone()),
                    hidden_for_designated_body_code: hidden_for,
                    hidden_by: Some(by),
                    reason: Some(reason.to_string()),
                    hidden_date_time: Some(format_connection_time(at)),
                });
            at += Duration::days(1);
        }
    }

    fn doctor_without_connection(&self, index: usize) -> GeneratedDoctor {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // The variant's changes draw from their own stream, so the base data
        // is the same in every variant.
        let mut change = ChaCha8Rng::seed_from_u64(
            self.seed ^ 0xA5A5 ^ ((index as u64) << 20) ^ u64::from(self.variant),
        );
        let changed = self.variant > 0 && change.random_bool(0.1);

        let gmc_number = format!("{}", 1_000_000 + index);
        let roll: f64 = rng.random();
        let category = if roll < 0.05 {
            Category::TcsOnly
        } else if roll < 0.13 {
            Category::GmcOnly
        } else if roll < 0.15 {
            Category::NoLongerInGmc
        } else {
            Category::Both
        };
        let pick = |rng: &mut ChaCha8Rng, xs: &[&'static str]| xs[rng.random_range(0..xs.len())];

        let mut first = pick(&mut rng, &FIRST).to_string();
        let last = pick(&mut rng, &LAST).to_string();
        if changed {
            first = format!("{first}-{}", self.variant);
        }
        let gmc_db = pick(&mut rng, &DESIGNATED_BODIES);
        // About 10% of doctors on both sides have a different TCS designated body.
        let discrepant = rng.random_bool(0.10) || (changed && change.random_bool(0.5));
        let tcs_db = if discrepant {
            DESIGNATED_BODIES
                .iter()
                .copied()
                .find(|d| *d != gmc_db && rng.random_bool(0.3))
                .unwrap_or(if gmc_db == DESIGNATED_BODIES[0] {
                    DESIGNATED_BODIES[1]
                } else {
                    DESIGNATED_BODIES[0]
                })
        } else {
            gmc_db
        };
        let base = NaiveDate::from_ymd_opt(2020, 1, 1).expect("a valid date");
        let day =
            |rng: &mut ChaCha8Rng, span: i64| base + Duration::days(rng.random_range(0..span));
        let submission = day(&mut rng, 2500);
        let start = day(&mut rng, 1500);
        let end = start + Duration::days(rng.random_range(365..1500));
        let curriculum_end = end - Duration::days(rng.random_range(0..60));
        let person_id = 10_000_000 + index as i64;
        let programmes: Vec<&str> = (0..rng.random_range(1..=2))
            .map(|_| pick(&mut rng, &PROGRAMMES))
            .collect();
        let grades: Vec<String> = (0..rng.random_range(1..=2))
            .map(|_| rng.random_range(270..300).to_string())
            .collect();
        let membership = pick(&mut rng, &MEMBERSHIP);
        let owner = pick(&mut rng, &OWNERS);
        // GMC sometimes spells a name differently; GMC must win.
        let gmc_first = if rng.random_bool(0.05) {
            format!("{first}ine")
        } else {
            first.clone()
        };
        let status = pick(&mut rng, &STATUSES);
        let under_notice = pick(&mut rng, &["NO", "NO", "NO", "YES", "ON_HOLD"]);
        let last_updated = day(&mut rng, 2500);
        let admin = format!(
            "admin{}@{}.example",
            rng.random_range(1..40),
            gmc_db.to_lowercase()
        );
        // A few TCS records carry padding around the GMC number.
        let padded = rng.random_bool(0.03);
        let duplicated = rng.random_bool(0.01);

        let in_tcs = category != Category::GmcOnly;
        let in_gmc_collection = category != Category::TcsOnly;
        let fmt = |d: NaiveDate| d.format("%Y-%m-%d").to_string();

        let tcs_body = |person_id: i64, start: NaiveDate, programme: &str| {
            json!({
                "tcsPersonId": person_id,
                "gmcReferenceNumber": if padded { format!(" {gmc_number} ") } else { gmc_number.clone() },
                "doctorFirstName": first,
                "doctorLastName": last,
                "submissionDate": fmt(submission),
                "programmeName": programme,
                "programmeMembershipType": membership,
                "tcsDesignatedBody": tcs_db,
                "programmeOwner": owner,
                "placementGrade": grades.join(" | "),
                "programmeMembershipStartDate": fmt(start),
                "programmeMembershipEndDate": fmt(end),
                "curriculumEndDate": fmt(curriculum_end),
                "dataSource": "TCS",
                "syncEnd": false
            })
        };
        let programme = programmes.join(" | ");
        let mut tcs_messages = Vec::new();
        if in_tcs {
            tcs_messages.push(tcs_body(person_id, start, &programme));
            if duplicated {
                // A second trainee record for the same GMC number, with an
                // older programme: the merge keeps the latest programme
                // membership start, whatever the order of arrival.
                let older = tcs_body(
                    person_id + 50_000_000,
                    start - Duration::days(400),
                    "Foundation",
                );
                if rng.random_bool(0.5) {
                    tcs_messages.insert(0, older);
                } else {
                    tcs_messages.push(older);
                }
            }
        }

        let exists_in_gmc = category == Category::Both || category == Category::GmcOnly;
        let gmc_doctor = in_gmc_collection.then(|| {
            doc! {
                "_id": &gmc_number,
                "doctorFirstName": &gmc_first,
                "doctorLastName": &last,
                "submissionDate": bson_day(submission),
                "dateAdded": bson_day(base),
                "underNotice": under_notice,
                "sanction": "No",
                "doctorStatus": status,
                "lastUpdatedDate": bson_day(last_updated),
                "designatedBodyCode": gmc_db,
                "admin": &admin,
                "existsInGmc": exists_in_gmc,
            }
        });

        // Recommendations: several submitted ones, maybe a later draft that
        // must not count (it has no actualSubmissionDate).
        let mut recommendations = Vec::new();
        let mut latest: Option<(NaiveDate, GmcStatus)> = None;
        if in_gmc_collection || rng.random_bool(0.2) {
            for k in 0..rng.random_range(0..=4) {
                let submitted = day(&mut rng, 2500);
                let outcome = GmcStatus::ALL[rng.random_range(0..3)];
                let stored = match outcome {
                    GmcStatus::Approved => "APPROVED",
                    GmcStatus::Rejected => "REJECTED",
                    GmcStatus::UnderReview => "UNDER_REVIEW",
                };
                let draft = rng.random_bool(0.15);
                let mut rec = doc! {
                    "_id": format!("{gmc_number}-{k}"),
                    "gmcNumber": &gmc_number,
                    "outcome": stored,
                    "recommendationType": "REVALIDATE",
                    "recommendationStatus": if draft { "READY_TO_REVIEW" } else { "SUBMITTED_TO_GMC" },
                    "gmcSubmissionDate": bson_day(submitted),
                };
                if !draft {
                    rec.insert(
                        "actualSubmissionDate",
                        bson_day(submitted + Duration::days(1)),
                    );
                    // Ties on the submission day are avoided so the expected
                    // latest outcome is unambiguous.
                    if latest.is_none_or(|(d, _)| submitted > d) {
                        latest = Some((submitted, outcome));
                    } else if latest.is_some_and(|(d, _)| submitted == d) {
                        rec.insert("gmcSubmissionDate", bson_day(submitted - Duration::days(1)));
                    }
                }
                recommendations.push(rec);
            }
        }

        let tcs_side = in_tcs;
        let gmc_side = in_gmc_collection;
        let expected = MasterDoctor {
            gmc_reference_number: gmc_number.clone(),
            doctor_first_name: Some(if gmc_side {
                gmc_first.clone()
            } else {
                first.clone()
            }),
            doctor_last_name: Some(last.clone()),
            submission_date: Some(fmt(submission)),
            tcs_person_id: tcs_side.then_some(person_id),
            programme_name: tcs_side.then(|| programme.clone()),
            membership_type: tcs_side.then(|| membership.to_string()),
            membership_start_date: tcs_side.then(|| fmt(start)),
            membership_end_date: tcs_side.then(|| fmt(end)),
            curriculum_end_date: tcs_side.then(|| fmt(curriculum_end)),
            programme_owner: tcs_side.then(|| owner.to_string()),
            tcs_designated_body: tcs_side.then(|| tcs_db.to_string()),
            placement_grade: tcs_side.then(|| grades.join(" | ")),
            designated_body: gmc_side.then(|| gmc_db.to_string()),
            tis_status: gmc_side.then(|| status.to_string()),
            gmc_status: latest.map(|(_, s)| s.as_str().to_string()),
            under_notice: gmc_side.then(|| under_notice.to_string()),
            admin: gmc_side.then(|| admin.clone()),
            exists_in_gmc,
            last_updated_date: gmc_side.then(|| fmt(last_updated)),
            updated_at: None,
            updated_by: None,
            last_connection_date_time: None,
            hidden_discrepancies: Vec::new(),
        };

        GeneratedDoctor {
            gmc_number,
            category,
            tcs_messages,
            gmc_doctor,
            recommendations,
            connection_logs: Vec::new(),
            hidden_discrepancies: Vec::new(),
            expected,
        }
    }
}

fn pick_from(rng: &mut ChaCha8Rng, xs: &[&'static str]) -> &'static str {
    xs[rng.random_range(0..xs.len())]
}

fn bson_day(d: NaiveDate) -> bson::DateTime {
    let at = d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
    bson::DateTime::from_chrono(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_doctors() {
        let a = DatasetSpec::new(7, 50).doctor(13);
        let b = DatasetSpec::new(7, 50).doctor(13);
        assert_eq!(a.expected, b.expected);
        assert_eq!(a.tcs_messages, b.tcs_messages);
    }

    #[test]
    fn the_mix_is_realistic() {
        let spec = DatasetSpec::new(1, 20_000);
        let mut by_category: BTreeMap<Category, usize> = BTreeMap::new();
        let (mut discrepancies, mut duplicated, mut with_recommendations) = (0, 0, 0);
        let mut bodies = std::collections::BTreeSet::new();
        for d in spec.doctors() {
            *by_category.entry(d.category).or_default() += 1;
            if d.category == Category::Both && d.expected.is_discrepancy() {
                discrepancies += 1;
            }
            duplicated += usize::from(d.tcs_messages.len() > 1);
            with_recommendations += usize::from(d.recommendations.len() > 1);
            if let Some(g) = &d.gmc_doctor {
                bodies.insert(g.get_str("designatedBodyCode").unwrap().to_string());
            }
        }
        let share = |n: usize| n as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&share(by_category[&Category::TcsOnly])));
        assert!((0.07..0.09).contains(&share(by_category[&Category::GmcOnly])));
        assert!(by_category[&Category::NoLongerInGmc] > 0);
        let both = by_category[&Category::Both] as f64;
        assert!((0.08..0.12).contains(&(discrepancies as f64 / both)));
        assert!(duplicated > 100);
        assert!(with_recommendations > 1000);
        assert_eq!(bodies.len(), 13);
    }

    #[test]
    fn the_stream_holds_every_tcs_message_and_the_malformed_ones() {
        let spec = DatasetSpec::new(3, 1000);
        let doctors_messages: usize = spec.doctors().map(|d| d.tcs_messages.len()).sum();
        let malformed = spec.malformed_tcs_messages().len();
        assert!(malformed >= 4);
        assert_eq!(spec.tcs_stream().count(), doctors_messages + malformed);
        assert_eq!(
            spec.expected_rejects().values().sum::<u64>(),
            malformed as u64
        );
    }

    #[test]
    fn a_variant_changes_some_doctors_and_keeps_the_rest() {
        let base = DatasetSpec::new(5, 2000);
        let changed = base.with_variant(1);
        let differing = (0..2000)
            .filter(|&i| base.doctor(i).expected != changed.doctor(i).expected)
            .count();
        assert!(
            (100..400).contains(&differing),
            "{differing} doctors changed"
        );
    }
}
