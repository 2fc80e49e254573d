//! TCS sync messages: parsing a RabbitMQ body into a trainee record, the
//! end-of-sync marker, or a rejection with its reason.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::gmc_number::{GmcNumber, GmcNumberError};

/// One trainee as TCS sends it. Every field is optional on the wire; the
/// merge decides what a missing field means.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcsRecord {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub tcs_person_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub gmc_reference_number: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub doctor_first_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub doctor_last_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub submission_date: Option<String>,
    #[serde(default, deserialize_with = "joined_names")]
    pub programme_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub programme_membership_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub tcs_designated_body: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub programme_owner: Option<String>,
    #[serde(default, deserialize_with = "joined_names")]
    pub placement_grade: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub programme_membership_start_date: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub programme_membership_end_date: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub curriculum_end_date: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub data_source: Option<String>,
    #[serde(default)]
    pub sync_end: Option<bool>,
}

impl TcsRecord {
    /// Which record wins when TCS sends two trainees with one GMC number:
    /// the one with the latest programme membership start (the current
    /// programme), then the greater `tcsPersonId`. The rank depends on the
    /// record alone, never on arrival order, so redelivery and concurrent
    /// writes cannot change the winner: the bulk writer sends it as an
    /// external version and OpenSearch keeps the highest.
    pub fn precedence(&self) -> u64 {
        precedence_of(
            self.programme_membership_start_date.as_deref(),
            self.tcs_person_id,
        )
    }
}

/// The rank of [`TcsRecord::precedence`] from a programme membership start
/// and a `tcsPersonId`, as a master document holds them: days since 1970 of
/// the start's first ten characters (`yyyy-MM-dd`; a missing or unparseable
/// start ranks lowest) above the person id. The live TCS update's script
/// (`change::MERGE_TCS_SCRIPT`) ranks a stored document by the same rule.
pub fn precedence_of(start: Option<&str>, person: Option<i64>) -> u64 {
    let days = start
        .and_then(|d| chrono::NaiveDate::parse_from_str(d.get(..10)?, "%Y-%m-%d").ok())
        .map(|d| {
            (d - chrono::NaiveDate::default())
                .num_days()
                .clamp(0, 1 << 20) as u64
        })
        .unwrap_or(0);
    let person = person.unwrap_or(0).clamp(0, u32::MAX as i64) as u64;
    // Version 0 is not allowed for external versions, hence the + 1.
    ((days << 32) | person) + 1
}

/// What one message on the sync-data queue means.
#[derive(Clone, Debug, PartialEq)]
pub enum TcsMessage {
    Record(GmcNumber, Box<TcsRecord>),
    SyncEnd,
}

/// Why a message cannot become a document. Each reason is counted in the run report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the body is JSON but not a trainee object: {0}")]
    NotARecord(String),
    #[error("{0}")]
    BadGmcNumber(#[from] GmcNumberError),
    #[error("the body is {bytes} bytes, over the limit of {limit} (rabbitmq.max_message_bytes)")]
    TooLarge { bytes: usize, limit: usize },
}

impl RejectReason {
    /// A short stable key for counting rejects by reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::InvalidJson(_) => "invalid_json",
            RejectReason::NotARecord(_) => "not_a_record",
            RejectReason::BadGmcNumber(GmcNumberError::Missing) => "missing_gmc_number",
            RejectReason::BadGmcNumber(_) => "unusable_gmc_number",
            RejectReason::TooLarge { .. } => "too_large",
        }
    }
}

/// Parses one message body of at most `limit` bytes (a larger one is
/// refused unread: no trainee record comes near it, and a flood of them
/// must not cost memory); see [`parse_tcs_message`].
pub fn parse_tcs_message_within(body: &[u8], limit: usize) -> Result<TcsMessage, RejectReason> {
    if body.len() > limit {
        return Err(RejectReason::TooLarge {
            bytes: body.len(),
            limit,
        });
    }
    parse_tcs_message(body)
}

/// What a message of the update queue is.
#[derive(Debug)]
pub enum TcsUpdate {
    /// A sync-shaped message: a trainee's record (or a stray `syncEnd`).
    Message(TcsMessage),
    /// A trainee with a `tcsPersonId` and no GMC number: filtered out of
    /// TIS (today's rule), its TIS fields leave every document holding it.
    FilteredOut { person: i64 },
}

/// Parses one message of the update queue: as a sync record, except that a
/// missing (null, absent or blank) GMC number with a `tcsPersonId` means
/// the trainee was filtered out of TIS. Without a `tcsPersonId` it stays a
/// reject (`missing_gmc_number`), as today.
pub fn parse_tcs_update(body: &[u8], limit: usize) -> Result<TcsUpdate, RejectReason> {
    match parse_tcs_message_within(body, limit) {
        Err(RejectReason::BadGmcNumber(GmcNumberError::Missing)) => {
            let person = serde_json::from_slice::<TcsRecord>(body)
                .ok()
                .and_then(|r| r.tcs_person_id);
            match person {
                Some(person) => Ok(TcsUpdate::FilteredOut { person }),
                None => Err(RejectReason::BadGmcNumber(GmcNumberError::Missing)),
            }
        }
        other => other.map(TcsUpdate::Message),
    }
}

/// Parses one message body. `"syncStart"` never appears on this queue; a
/// record with `syncEnd: true` ends the stream whatever else it holds.
pub fn parse_tcs_message(body: &[u8]) -> Result<TcsMessage, RejectReason> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(RejectReason::NotARecord(format!(
            "expected an object, found {}",
            kind_of(&value)
        )));
    }
    let record: TcsRecord =
        serde_json::from_value(value).map_err(|e| RejectReason::NotARecord(e.to_string()))?;
    if record.sync_end == Some(true) {
        return Ok(TcsMessage::SyncEnd);
    }
    let raw = record.gmc_reference_number.as_deref().unwrap_or("");
    let gmc = GmcNumber::parse(raw)?;
    Ok(TcsMessage::Record(gmc, Box::new(record)))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Strings are trimmed and blanks become absent; numbers are accepted as text
/// (TCS has sent GMC numbers as JSON numbers).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(match value {
        Some(Value::String(s)) => non_blank(&s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    })
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let value = Option::<Value>::deserialize(d)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("tcsPersonId {n} is not an integer"))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("tcsPersonId {s:?} is not an integer"))),
        Some(other) => Err(D::Error::custom(format!(
            "tcsPersonId is {}, not an integer",
            kind_of(&other)
        ))),
    }
}

/// Programme names and grades arrive either already joined or as a list;
/// the index holds them joined by `" | "`.
fn joined_names<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(match value {
        Some(Value::Array(items)) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => non_blank(s),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            if parts.is_empty() {
                None
            } else {
                Some(parts.join(" | "))
            }
        }
        Some(Value::String(s)) => non_blank(&s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn non_blank(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_record_parses_with_a_trimmed_gmc_number() {
        let body = br#"{"tcsPersonId":42,"gmcReferenceNumber":" 7654321 ","doctorFirstName":"Ann",
            "programmeName":["Surgery","Cardiology"],"placementGrade":"279","syncEnd":false}"#;
        let TcsMessage::Record(gmc, record) = parse_tcs_message(body).unwrap() else {
            panic!("expected a record")
        };
        assert_eq!(gmc.as_str(), "7654321");
        assert_eq!(record.tcs_person_id, Some(42));
        assert_eq!(
            record.programme_name.as_deref(),
            Some("Surgery | Cardiology")
        );
        assert_eq!(record.placement_grade.as_deref(), Some("279"));
    }

    #[test]
    fn the_latest_programme_start_wins_then_the_greater_person_id() {
        let rec = |start: &str, id: i64| TcsRecord {
            programme_membership_start_date: Some(start.into()),
            tcs_person_id: Some(id),
            ..TcsRecord::default()
        };
        assert!(rec("2024-08-01", 1).precedence() > rec("2023-08-01", 99).precedence());
        assert!(rec("2024-08-01", 2).precedence() > rec("2024-08-01", 1).precedence());
        assert!(TcsRecord::default().precedence() >= 1);
    }

    #[test]
    fn sync_end_ends_the_stream() {
        assert_eq!(
            parse_tcs_message(br#"{"syncEnd":true}"#).unwrap(),
            TcsMessage::SyncEnd
        );
    }

    #[test]
    fn malformed_bodies_are_rejected_with_a_reason() {
        assert_eq!(
            parse_tcs_message(b"{not json").unwrap_err().as_str(),
            "invalid_json"
        );
        assert_eq!(
            parse_tcs_message(b"[1,2]").unwrap_err().as_str(),
            "not_a_record"
        );
        assert_eq!(
            parse_tcs_message(br#"{"tcsPersonId":"abc","gmcReferenceNumber":"1"}"#)
                .unwrap_err()
                .as_str(),
            "not_a_record"
        );
        assert_eq!(
            parse_tcs_message(br#"{"tcsPersonId":1}"#)
                .unwrap_err()
                .as_str(),
            "missing_gmc_number"
        );
        assert_eq!(
            parse_tcs_message(br#"{"gmcReferenceNumber":"UNKNOWN"}"#)
                .unwrap_err()
                .as_str(),
            "unusable_gmc_number"
        );
    }

    #[test]
    fn a_numeric_gmc_number_is_accepted_as_text() {
        let TcsMessage::Record(gmc, _) =
            parse_tcs_message(br#"{"gmcReferenceNumber":1234567}"#).unwrap()
        else {
            panic!("expected a record")
        };
        assert_eq!(gmc.as_str(), "1234567");
    }
}
