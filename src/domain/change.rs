//! Live changes and what each does to a master document. A change comes
//! from one source and updates only that source's fields (a TCS change
//! never touches GMC fields, nor the reverse); a doctor not in the index yet
//! is created whole, by the merge rules. The update of each change is a pure
//! function of the change and what its batch looked up (the doctor's GMC
//! record, its latest outcome), so the live applier and a rebuild's
//! catch-up apply the same change the same way.
//!
//! Shared fields (names, `submissionDate`): GMC wins where it has a value,
//! as in the merge. A TCS change writes the merged value of them (GMC's when
//! GMC has one, else TCS's); a GMC change writes GMC's values where it has
//! them and leaves the others as they are (the index keeps TCS's).
//!
//! Two TCS trainees with one GMC number: the live update keeps the
//! rebuild's winner ([`TcsRecord::precedence`]: the latest programme
//! membership start, then the greater `tcsPersonId`). A TCS change is a
//! script update ([`DocUpdate::MergeTcs`]) that does nothing when the stored
//! document holds another trainee who ranks higher, so a late update of
//! the losing trainee never overwrites the winner; an update of the
//! trainee the document holds always applies. One gap is known: when the
//! winner later moves to an earlier programme and so ranks below the
//! loser, the loser's record is not sent again, and the document keeps the
//! winner until the next rebuild settles it (or the loser's next update).

use serde_json::{json, Map, Value};

use super::connection::DoctorConnection;
use super::gmc::{GmcDoctor, GmcStatus};
use super::gmc_number::GmcNumber;
use super::master::{merge, MasterDoctor};
use super::tcs::{precedence_of, TcsRecord};

/// One live change, normalized from its source.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A trainee's current TCS fields (the update queue).
    Tcs {
        number: GmcNumber,
        record: Box<TcsRecord>,
    },
    /// A doctor of `doctorsForDB` inserted, updated or replaced.
    Doctor {
        number: GmcNumber,
        doctor: Box<GmcDoctor>,
    },
    /// A doctor deleted from `doctorsForDB`: the doctor left GMC.
    DoctorLeft { number: GmcNumber },
    /// A recommendation of this doctor changed: its latest outcome must be
    /// recomputed.
    Recommendation { number: GmcNumber },
    /// A TCS update without a GMC number: the trainee `person` is filtered
    /// out of TIS, so its TIS fields leave every document that holds it.
    TcsLeft { person: i64 },
    /// A connection log or hidden discrepancy of this doctor was written:
    /// its connection fields must be recomputed.
    Connection { number: GmcNumber },
    /// The hidden discrepancy `id` was deleted (un-hidden): the document
    /// holding it has its connection fields recomputed.
    Unhidden { id: String },
}

impl Change {
    /// The doctor it is about; none for a trainee filtered out of TIS
    /// (whose documents are found by `tcsPersonId`).
    pub fn number(&self) -> Option<&GmcNumber> {
        match self {
            Change::Tcs { number, .. }
            | Change::Doctor { number, .. }
            | Change::DoctorLeft { number }
            | Change::Recommendation { number }
            | Change::Connection { number } => Some(number),
            Change::TcsLeft { .. } | Change::Unhidden { .. } => None,
        }
    }

    /// The source, for counting: `tcs`, `tcs_left`, `doctor`, `doctor_left`,
    /// `recommendation`, `connection`, `unhidden`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Tcs { .. } => "tcs",
            Change::TcsLeft { .. } => "tcs_left",
            Change::Connection { .. } => "connection",
            Change::Unhidden { .. } => "unhidden",
            Change::Doctor { .. } => "doctor",
            Change::DoctorLeft { .. } => "doctor_left",
            Change::Recommendation { .. } => "recommendation",
        }
    }
}

/// What a batch looked up for one doctor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Known {
    /// The doctor in `doctorsForDB`, if there.
    pub doctor: Option<GmcDoctor>,
    /// The latest submitted outcome, if any.
    pub outcome: Option<GmcStatus>,
    /// The connection service's data of the doctor, when the change needs
    /// it (none: no log, nothing hidden).
    pub connection: Option<DoctorConnection>,
}

/// The `_update` of one change against a master document.
#[derive(Clone, Debug, PartialEq)]
pub enum DocUpdate {
    /// Set these fields (null clears one); create `upsert` when absent.
    Merge { doc: Value, upsert: Value },
    /// A TCS trainee's fields: like `Merge`, unless the document holds
    /// another trainee (another `tcsPersonId`) who ranks higher by
    /// [`precedence_of`] than this one, whose programme membership starts
    /// at `start` and whose id is `person`; then nothing changes (see
    /// [`merge_tcs_script`]).
    MergeTcs {
        doc: Value,
        upsert: Value,
        start: Option<String>,
        person: Option<i64>,
    },
    /// Set these fields when the document exists; nothing otherwise.
    MergeIfPresent { doc: Value },
    /// The doctor left GMC: clear the GMC fields and mark it not in GMC when
    /// TCS knows it, delete the document when only GMC did.
    LeaveGmc,
    /// The trainee `person` left TIS: when the document holds that trainee,
    /// clear the TIS fields (`keep`: GMC knows the doctor) or delete the
    /// document (only TIS did, so a rebuild would not make it either);
    /// nothing otherwise (see [`leave_tcs_script`]).
    LeaveTcs { person: i64, keep: bool },
}

/// Fields only TCS gives.
pub const TCS_FIELDS: &[&str] = &[
    "tcsPersonId",
    "programmeName",
    "membershipType",
    "membershipStartDate",
    "membershipEndDate",
    "curriculumEndDate",
    "programmeOwner",
    "tcsDesignatedBody",
    "placementGrade",
];
/// Fields only GMC gives (`gmcStatus` comes from recommendations).
pub const GMC_FIELDS: &[&str] = &[
    "designatedBody",
    "tisStatus",
    "underNotice",
    "admin",
    "existsInGmc",
    "lastUpdatedDate",
];
/// Fields both give; GMC wins where it has a value.
pub const SHARED_FIELDS: &[&str] = &["doctorFirstName", "doctorLastName", "submissionDate"];

/// The update one change makes, given what was looked up for its doctor.
pub fn update_for(change: &Change, known: &Known, updated_at: &str) -> DocUpdate {
    match change {
        Change::Tcs { number, record } => {
            let full = merge(
                number,
                Some(record),
                known.doctor.as_ref(),
                known.outcome,
                None,
                updated_at,
            );
            let all = document(&full);
            let mut doc = pick(&all, TCS_FIELDS, true);
            doc.extend(pick(&all, SHARED_FIELDS, true));
            doc.insert("updatedAt".into(), json!(updated_at));
            // Ranked by the fields the script ranks the stored document by.
            DocUpdate::MergeTcs {
                doc: Value::Object(doc),
                upsert: Value::Object(all),
                start: full.membership_start_date,
                person: full.tcs_person_id,
            }
        }
        Change::Doctor { number, doctor } => {
            let full = merge(number, None, Some(doctor), known.outcome, None, updated_at);
            let all = document(&full);
            let mut doc = pick(&all, GMC_FIELDS, true);
            // GMC's shared values where it has them; TCS's stay otherwise.
            doc.extend(pick(&all, SHARED_FIELDS, false));
            doc.insert("updatedAt".into(), json!(updated_at));
            DocUpdate::Merge {
                doc: Value::Object(doc),
                upsert: Value::Object(all),
            }
        }
        Change::DoctorLeft { .. } => DocUpdate::LeaveGmc,
        Change::Recommendation { .. } => DocUpdate::MergeIfPresent {
            doc: json!({
                "gmcStatus": known.outcome.map(|s| s.as_str()),
                "updatedAt": updated_at,
            }),
        },
        // The connection fields as the connection service's data stands
        // now (for an un-hidden discrepancy: of the document that held it).
        // (resolved per document holding it: `known` is that doctor's).
        Change::Connection { .. } | Change::Unhidden { .. } => {
            connection_update(known.connection.as_ref(), updated_at)
        }
        // For each document found holding the trainee; `known` is that
        // document's doctor.
        Change::TcsLeft { person } => DocUpdate::LeaveTcs {
            person: *person,
            keep: known.doctor.is_some(),
        },
    }
}

/// The connection fields of a present document set to what `connection`
/// says (none: cleared, nothing hidden); an absent document stays absent,
/// as today's integration only updates existing ones.
fn connection_update(connection: Option<&DoctorConnection>, updated_at: &str) -> DocUpdate {
    let hidden = connection.map(|c| c.hidden().to_vec()).unwrap_or_default();
    DocUpdate::MergeIfPresent {
        doc: json!({
            "updatedBy": connection.and_then(DoctorConnection::updated_by),
            "lastConnectionDateTime": connection.and_then(DoctorConnection::last_connection_date_time),
            "hiddenDiscrepancies": hidden,
            "updatedAt": updated_at,
        }),
    }
}

/// The painless script of [`DocUpdate::LeaveGmc`]: the GMC fields are
/// cleared; a doctor TCS knows stays, not in GMC; one only GMC knew goes.
pub fn leave_gmc_script(updated_at: &str) -> Value {
    json!({
        "lang": "painless",
        "source": "if (ctx._source.tcsPersonId == null) { ctx.op = 'delete'; } else { for (f in params.fields) { ctx._source.remove(f); } ctx._source.existsInGmc = false; ctx._source.updatedAt = params.updatedAt; }",
        "params": {
            "fields": ["designatedBody", "tisStatus", "underNotice", "admin", "lastUpdatedDate"],
            "updatedAt": updated_at,
        }
    })
}

/// The painless script of [`DocUpdate::LeaveTcs`]. `tcsPersonId` may be
/// stored as a number or a string; the comparison takes both.
pub fn leave_tcs_script(person: i64, keep: bool, updated_at: &str) -> Value {
    json!({
        "lang": "painless",
        "source": "def p = ctx._source.tcsPersonId; \
    long stored = -1L; \
    if (p instanceof Number) { stored = ((Number) p).longValue(); } \
    else if (p instanceof String) { try { stored = Long.parseLong(((String) p).trim()); } catch (NumberFormatException e) { stored = -1L; } } \
    if (stored != ((Number) params.person).longValue()) { ctx.op = 'noop'; } \
    else if (!params.keep) { ctx.op = 'delete'; } \
    else { for (f in params.fields) { ctx._source.remove(f); } ctx._source.updatedAt = params.updatedAt; }",
        "params": {
            "person": person,
            "keep": keep,
            "fields": TCS_FIELDS,
            "updatedAt": updated_at,
        }
    })
}

/// The painless source of [`DocUpdate::MergeTcs`]. `rank` is
/// [`precedence_of`] in painless, applied to the stored document's
/// `membershipStartDate` and `tcsPersonId` (the fields the merge fills from
/// the trainee's programme membership start and person id); what the index
/// stores there passed the mapping (`yyyy-MM-dd` or an ISO date-time), where
/// Java's ISO date and chrono's `%Y-%m-%d` read the first ten characters
/// alike. A null in `doc` sets the field to null, as a partial `doc` merge
/// does.
pub const MERGE_TCS_SCRIPT: &str = "\
def person(def v) { \
  if (v instanceof Number) { return ((Number) v).longValue(); } \
  if (v instanceof String) { try { return Long.parseLong(((String) v).trim()); } catch (NumberFormatException e) { return null; } } \
  return null; \
} \
long rank(def start, def id) { \
  long days = 0L; \
  if (start instanceof String && ((String) start).length() >= 10) { \
    try { days = LocalDate.parse(((String) start).substring(0, 10)).toEpochDay(); } catch (Exception e) { days = 0L; } \
  } \
  if (days < 0L) { days = 0L; } \
  if (days > 1048576L) { days = 1048576L; } \
  long p = id == null ? 0L : ((Number) id).longValue(); \
  if (p < 0L) { p = 0L; } \
  if (p > 4294967295L) { p = 4294967295L; } \
  return ((days << 32) | p) + 1L; \
} \
def stored = person(ctx._source.tcsPersonId); \
def mine = person(params.person); \
boolean same = stored == null ? mine == null : mine != null && ((Number) stored).longValue() == ((Number) mine).longValue(); \
if (!same && rank(ctx._source.membershipStartDate, stored) > ((Number) params.rank).longValue()) { \
  ctx.op = 'noop'; \
} else { \
  for (entry in params.doc.entrySet()) { ctx._source[entry.getKey()] = entry.getValue(); } \
}";

/// The script of [`DocUpdate::MergeTcs`]. A condition in a script, because
/// the `_update` API takes no external version, and a document's version
/// is no rank anyway: every live change of it (a GMC one too) moves it.
pub fn merge_tcs_script(doc: &Value, start: Option<&str>, person: Option<i64>) -> Value {
    json!({
        "lang": "painless",
        "source": MERGE_TCS_SCRIPT,
        "params": {
            "doc": doc,
            "person": person,
            "rank": precedence_of(start, person),
        }
    })
}

fn document(doc: &MasterDoctor) -> Map<String, Value> {
    match serde_json::to_value(doc) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The named fields of `all`; absent ones as null when `clear_absent`.
fn pick(all: &Map<String, Value>, fields: &[&str], clear_absent: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for f in fields {
        match all.get(*f) {
            Some(v) => {
                out.insert((*f).to_string(), v.clone());
            }
            None if clear_absent => {
                out.insert((*f).to_string(), Value::Null);
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> GmcNumber {
        GmcNumber::parse("7100001").unwrap()
    }

    fn tcs() -> TcsRecord {
        TcsRecord {
            tcs_person_id: Some(5),
            doctor_first_name: Some("Tcs-First".into()),
            programme_name: Some("Cardiology".into()),
            tcs_designated_body: Some("1-AIIDR8".into()),
            programme_membership_start_date: Some("2023-08-01".into()),
            ..TcsRecord::default()
        }
    }

    fn gmc() -> GmcDoctor {
        GmcDoctor {
            doctor_first_name: Some("Gmc-First".into()),
            designated_body_code: Some("1-AIIDSA".into()),
            under_notice: Some("NO".into()),
            exists_in_gmc: true,
            ..GmcDoctor::default()
        }
    }

    #[test]
    fn a_tcs_change_sets_only_tcs_fields_and_the_merged_shared_ones() {
        let change = Change::Tcs {
            number: n(),
            record: Box::new(tcs()),
        };
        let known = Known {
            doctor: Some(gmc()),
            outcome: Some(GmcStatus::Approved),
            connection: None,
        };
        let DocUpdate::MergeTcs {
            doc,
            upsert,
            start,
            person,
        } = update_for(&change, &known, "t1")
        else {
            panic!("a TCS merge")
        };
        assert_eq!(start.as_deref(), Some("2023-08-01"));
        assert_eq!(person, Some(5));
        assert_eq!(doc["programmeName"], "Cardiology");
        assert_eq!(
            doc["membershipType"],
            Value::Null,
            "absent TCS fields are cleared"
        );
        assert_eq!(
            doc["doctorFirstName"], "Gmc-First",
            "GMC wins on shared fields"
        );
        for gmc_field in GMC_FIELDS.iter().chain(["gmcStatus"].iter()) {
            assert!(doc.get(*gmc_field).is_none(), "{gmc_field} is not touched");
        }
        assert_eq!(
            upsert["designatedBody"], "1-AIIDSA",
            "a new doctor is created whole"
        );
        assert_eq!(upsert["gmcStatus"], "Approved");
        assert_eq!(doc["updatedAt"], "t1");
    }

    #[test]
    fn a_gmc_change_sets_only_gmc_fields_and_keeps_tcs_names_it_lacks() {
        let mut doctor = gmc();
        doctor.doctor_first_name = None;
        let change = Change::Doctor {
            number: n(),
            doctor: Box::new(doctor),
        };
        let DocUpdate::Merge { doc, .. } = update_for(&change, &Known::default(), "t2") else {
            panic!("a merge")
        };
        assert_eq!(doc["designatedBody"], "1-AIIDSA");
        assert_eq!(doc["existsInGmc"], true);
        assert_eq!(
            doc["tisStatus"],
            Value::Null,
            "absent GMC fields are cleared"
        );
        assert!(doc.get("doctorFirstName").is_none(), "TCS's name stays");
        for tcs_field in TCS_FIELDS {
            assert!(doc.get(*tcs_field).is_none(), "{tcs_field} is not touched");
        }
    }

    #[test]
    fn a_recommendation_change_recomputes_only_the_status() {
        let change = Change::Recommendation { number: n() };
        let some = update_for(
            &change,
            &Known {
                outcome: Some(GmcStatus::UnderReview),
                ..Known::default()
            },
            "t3",
        );
        assert_eq!(
            some,
            DocUpdate::MergeIfPresent {
                doc: json!({"gmcStatus": "Under Review", "updatedAt": "t3"})
            }
        );
        let none = update_for(&change, &Known::default(), "t3");
        assert_eq!(
            none,
            DocUpdate::MergeIfPresent {
                doc: json!({"gmcStatus": null, "updatedAt": "t3"})
            }
        );
    }

    #[test]
    fn a_doctor_who_left_gmc_is_cleared_or_removed_by_one_script() {
        assert_eq!(
            update_for(&Change::DoctorLeft { number: n() }, &Known::default(), "t"),
            DocUpdate::LeaveGmc
        );
        let script = leave_gmc_script("t4");
        assert_eq!(script["params"]["updatedAt"], "t4");
        assert!(script["source"]
            .as_str()
            .unwrap()
            .contains("ctx.op = 'delete'"));
        let cleared: Vec<&str> = script["params"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for f in GMC_FIELDS.iter().filter(|f| **f != "existsInGmc") {
            assert!(cleared.contains(f), "{f} is cleared");
        }
    }

    #[test]
    fn a_tcs_change_carries_its_rank_to_a_script_that_merges_its_fields() {
        let doc = json!({"programmeName": "Cardiology", "membershipType": null});
        let script = merge_tcs_script(&doc, Some("2024-08-01"), Some(42));
        assert_eq!(script["lang"], "painless");
        assert_eq!(
            script["params"]["doc"], doc,
            "null clears, as in a doc merge"
        );
        assert_eq!(script["params"]["person"], 42);
        let rank = TcsRecord {
            programme_membership_start_date: Some("2024-08-01".into()),
            tcs_person_id: Some(42),
            ..TcsRecord::default()
        }
        .precedence();
        assert_eq!(script["params"]["rank"], rank, "the bulk load's version");
        let source = script["source"].as_str().unwrap();
        for field in ["ctx._source.tcsPersonId", "ctx._source.membershipStartDate"] {
            assert!(source.contains(field), "the stored {field} is ranked");
        }
        assert!(source.contains("ctx.op = 'noop'"));
        // The painless rank is the Rust one: days since 1970 over the id,
        // both clamped, plus one.
        assert!(source.contains("1048576L") && source.contains("4294967295L"));
        assert_eq!(precedence_of(None, None), 1);
        assert_eq!(
            precedence_of(Some("1970-01-02T09:00:00Z"), Some(3)),
            (1 << 32 | 3) + 1
        );

        let unknown = merge_tcs_script(&doc, None, None);
        assert_eq!(unknown["params"]["person"], Value::Null);
        assert_eq!(unknown["params"]["rank"], 1, "ranks lowest");
    }
}
