//! One batch of the recommendation service's sync (`IndexSyncMessage`:
//! `{"payload": [{"doctor": {DoctorsForDB}, "gmcOutcome": "..."}, ...],
//! "syncEnd": false}`), parsed into the doctors a rebuild needs, each as
//! the same [`GmcDoctor`] a read of `doctorsForDB` gives, or why it cannot be.
//!
//! The doctor goes through [`GmcDoctor::from_document`] (the queue's
//! `gmcReferenceNumber` as the collection's `_id`), so the two sources can
//! never disagree on trimming, placeholders or date handling. Dates come as
//! Extended JSON (`{"$date": "...Z"}`, `{"$date": millis}`), as ISO strings,
//! as `yyyy-MM-dd HH:mm:ss`, or as Jackson's `[y, m, d, ...]` arrays.

use bson::{Bson, Document};
use serde_json::{Map, Value};

use super::reject_key;
use crate::domain::{GmcDoctor, GmcNumber, GmcStatus};
use crate::sources::index_sync::{ext_json_date, kind_of, MessageRejects};

/// The reject keys of a message that is not a batch.
pub const GMC_MESSAGE_REJECTS: MessageRejects = MessageRejects {
    invalid_json: "gmc_batch_invalid_json",
    not_a_sync_message: "gmc_batch_not_a_sync_message",
    payload_not_a_list: "gmc_batch_payload_not_a_list",
};

/// The reject key of a payload item that holds no doctor object.
pub const REJECT_ITEM_NOT_A_DOCTOR: &str = "gmc_item_not_a_doctor";

/// What a payload item says about the doctor's latest outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// No submitted recommendation (null, absent or blank).
    None,
    Known(GmcStatus),
    /// A value that is no outcome we know: the doctor gets no `gmcStatus`.
    Unknown(String),
}

/// One payload item.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchItem {
    Doctor {
        number: GmcNumber,
        doctor: GmcDoctor,
        outcome: ItemOutcome,
    },
    /// Not usable: dead-lettered (its JSON) with the reason and counted.
    Rejected {
        reason: &'static str,
        detail: String,
        item: Value,
    },
}

/// Parses one payload item: `{"doctor": {...}, "gmcOutcome": "..."}`.
pub fn parse_item(item: &Value) -> BatchItem {
    let rejected = |reason, detail: String| BatchItem::Rejected {
        reason,
        detail,
        item: item.clone(),
    };
    let Some(doctor) = item.get("doctor").and_then(Value::as_object) else {
        return rejected(
            REJECT_ITEM_NOT_A_DOCTOR,
            format!("a payload item without a doctor object: {}", kind_of(item)),
        );
    };
    match GmcDoctor::from_document(&doctor_document(doctor)) {
        Ok((number, doctor)) => BatchItem::Doctor {
            number,
            doctor,
            outcome: outcome_of(item.get("gmcOutcome")),
        },
        Err(e) => rejected(reject_key(&e), e.to_string()),
    }
}

fn outcome_of(value: Option<&Value>) -> ItemOutcome {
    match value {
        None | Some(Value::Null) => ItemOutcome::None,
        Some(Value::String(s)) if s.trim().is_empty() => ItemOutcome::None,
        Some(Value::String(s)) => s
            .parse::<GmcStatus>()
            .map_or_else(|_| ItemOutcome::Unknown(s.clone()), ItemOutcome::Known),
        Some(other) => ItemOutcome::Unknown(other.to_string()),
    }
}

/// Fields of `DoctorsForDB` that hold dates.
const DATE_FIELDS: &[&str] = &[
    "submissionDate",
    "dateAdded",
    "lastUpdatedDate",
    "gmcLastUpdatedDateTime",
];

/// The doctor as the document `doctorsForDB` would hold: the GMC number as
/// `_id`, dates as BSON dates or day strings.
fn doctor_document(doctor: &Map<String, Value>) -> Document {
    let mut doc = Document::new();
    let number = doctor
        .get("gmcReferenceNumber")
        .filter(|v| !v.is_null())
        .or_else(|| doctor.get("_id"));
    if let Some(number) = number {
        doc.insert("_id", scalar(number));
    }
    for (key, value) in doctor {
        if key == "gmcReferenceNumber" || key == "_id" {
            continue;
        }
        let value = if DATE_FIELDS.contains(&key.as_str()) {
            date(value)
        } else {
            scalar(value)
        };
        doc.insert(key.clone(), value);
    }
    doc
}

fn scalar(value: &Value) -> Bson {
    match value {
        Value::String(s) => Bson::String(s.clone()),
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => n.as_i64().map_or(Bson::Null, Bson::Int64),
        _ => Bson::Null,
    }
}

/// A date in any of the forms the recommendation service's serializers
/// produce. Strings stay strings: `from_document` keeps their day, which is
/// the first ten characters of an ISO date, an ISO date-time and a
/// `yyyy-MM-dd HH:mm:ss` alike.
fn date(value: &Value) -> Bson {
    match value {
        Value::String(s) => Bson::String(s.clone()),
        Value::Object(_) => ext_json_date(value).map_or(Bson::Null, Bson::DateTime),
        // Jackson without JavaTimeModule's string form: [2024, 3, 5] or
        // [2024, 3, 5, 10, 30, 0].
        Value::Array(parts) => match parts.as_slice() {
            [y, m, d, ..] => match (y.as_i64(), m.as_u64(), d.as_u64()) {
                (Some(y), Some(m), Some(d)) => Bson::String(format!("{y:04}-{m:02}-{d:02}")),
                _ => Bson::Null,
            },
            _ => Bson::Null,
        },
        _ => Bson::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use serde_json::json;

    fn doctor_of(item: Value) -> (GmcNumber, GmcDoctor, ItemOutcome) {
        match parse_item(&item) {
            BatchItem::Doctor {
                number,
                doctor,
                outcome,
            } => (number, doctor, outcome),
            other => panic!("not a doctor: {other:?}"),
        }
    }

    #[test]
    fn a_queue_doctor_reads_as_the_same_doctor_as_the_stored_one() {
        let when = bson::DateTime::parse_rfc3339_str("2024-03-05T00:00:00Z").unwrap();
        let stored = doc! {"_id": "1234567", "doctorFirstName": "Ann", "doctorLastName": "Lee",
        "submissionDate": when, "dateAdded": when, "underNotice": "NO", "sanction": "No",
        "doctorStatus": "STARTED", "lastUpdatedDate": "2024-01-02", "designatedBodyCode": "1-AIIDR8",
        "admin": "a@b", "existsInGmc": true};
        let (_, from_mongo) = GmcDoctor::from_document(&stored).unwrap();
        let (number, from_queue, outcome) = doctor_of(json!({
            "doctor": {"gmcReferenceNumber": " 1234567 ", "doctorFirstName": "Ann", "doctorLastName": "Lee",
                "submissionDate": "2024-03-05", "dateAdded": "2024-03-05", "underNotice": "NO",
                "sanction": "No", "doctorStatus": "STARTED", "lastUpdatedDate": "2024-01-02T10:00:00Z",
                "gmcLastUpdatedDateTime": "2024-01-02T10:00:00", "designatedBodyCode": "1-AIIDR8",
                "admin": "a@b", "existsInGmc": true},
            "gmcOutcome": "Under Review"
        }));
        assert_eq!(number.as_str(), "1234567");
        assert_eq!(from_queue, from_mongo);
        assert_eq!(outcome, ItemOutcome::Known(GmcStatus::UnderReview));
    }

    #[test]
    fn every_date_form_becomes_its_day() {
        for (form, day) in [
            (json!({"$date": "2024-03-05T00:00:00Z"}), "2024-03-05"),
            (json!({"$date": "2024-03-05T23:30:00.000Z"}), "2024-03-05"),
            (json!({"$date": 1_709_596_800_000_i64}), "2024-03-05"),
            (
                json!({"$date": {"$numberLong": "1709596800000"}}),
                "2024-03-05",
            ),
            (json!("2024-03-05 13:45:10"), "2024-03-05"),
            (json!("2024-03-05T13:45:10.123"), "2024-03-05"),
            (json!("2024-03-05"), "2024-03-05"),
            (json!([2024, 3, 5]), "2024-03-05"),
            (json!([2024, 3, 5, 13, 45]), "2024-03-05"),
        ] {
            let (_, doctor, _) = doctor_of(json!({"doctor": {
                "gmcReferenceNumber": "1", "submissionDate": form.clone(), "lastUpdatedDate": form.clone()
            }}));
            assert_eq!(doctor.submission_date.as_deref(), Some(day), "{form}");
            assert_eq!(doctor.last_updated_date.as_deref(), Some(day), "{form}");
        }
        let (_, doctor, _) = doctor_of(json!({"doctor": {"gmcReferenceNumber": "1",
            "submissionDate": null, "lastUpdatedDate": {"$date": "yesterday"}}}));
        assert_eq!(doctor.submission_date, None);
        assert_eq!(doctor.last_updated_date, None);
    }

    #[test]
    fn outcomes_read_like_the_aggregations() {
        let outcome =
            |v: Value| doctor_of(json!({"doctor": {"gmcReferenceNumber": 7}, "gmcOutcome": v})).2;
        assert_eq!(
            outcome(json!("APPROVED")),
            ItemOutcome::Known(GmcStatus::Approved)
        );
        assert_eq!(
            outcome(json!("Rejected")),
            ItemOutcome::Known(GmcStatus::Rejected)
        );
        assert_eq!(outcome(json!(null)), ItemOutcome::None);
        assert_eq!(outcome(json!("")), ItemOutcome::None);
        assert_eq!(
            outcome(json!("Deferred")),
            ItemOutcome::Unknown("Deferred".into())
        );
        let (number, _, none) = doctor_of(json!({"doctor": {"gmcReferenceNumber": 7}}));
        assert_eq!(number.as_str(), "7");
        assert_eq!(none, ItemOutcome::None);
    }

    #[test]
    fn items_without_a_usable_number_or_doctor_are_rejected_with_their_reason() {
        let reason = |item: Value| match parse_item(&item) {
            BatchItem::Rejected {
                reason, item: kept, ..
            } => {
                assert_eq!(kept, item);
                reason
            }
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(
            reason(json!({"doctor": {"doctorFirstName": "Ann"}})),
            "missing_gmc_number"
        );
        assert_eq!(
            reason(json!({"doctor": {"gmcReferenceNumber": "  "}})),
            "missing_gmc_number"
        );
        assert_eq!(
            reason(json!({"doctor": {"gmcReferenceNumber": "UNKNOWN"}})),
            "unusable_gmc_number"
        );
        assert_eq!(
            reason(json!({"gmcOutcome": "APPROVED"})),
            REJECT_ITEM_NOT_A_DOCTOR
        );
        assert_eq!(reason(json!("1234567")), REJECT_ITEM_NOT_A_DOCTOR);
    }
}
