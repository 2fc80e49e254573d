//! The master document of `masterdoctorindex` and the merge rules that build
//! it from a TCS record, a GMC doctor, the latest recommendation outcome and
//! the connection service's data of the doctor.

use serde::{Deserialize, Serialize};

use super::connection::{DoctorConnection, HiddenDiscrepancy};
use super::gmc::{GmcDoctor, GmcStatus};
use super::gmc_number::GmcNumber;
use super::tcs::TcsRecord;

/// One doctor as the index holds it. Absent values are left out of the
/// document rather than written as null, as the old writer did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterDoctor {
    pub gmc_reference_number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doctor_first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doctor_last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcs_person_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programme_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_start_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curriculum_end_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programme_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcs_designated_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_grade: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub designated_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tis_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmc_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_notice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    pub exists_in_gmc: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Who made the doctor's latest connection (its latest connection log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When, as `yyyy-MM-dd'T'HH:mm:ss.SSS` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connection_date_time: Option<String>,
    /// The designated bodies that hid this doctor's discrepancy (a `nested`
    /// field: the connection service's Discrepancies query excludes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_discrepancies: Vec<HiddenDiscrepancy>,
}

impl MasterDoctor {
    /// Whether the discrepancies alias shows this doctor: the TCS and GMC
    /// designated bodies differ, a missing one counting as empty. This is the
    /// rule of the painless filter in `index-templates/masterdoctorindex.json`.
    pub fn is_discrepancy(&self) -> bool {
        self.tcs_designated_body.as_deref().unwrap_or("")
            != self.designated_body.as_deref().unwrap_or("")
    }
}

/// Builds the document of one doctor. Rules:
///
/// - `gmcReferenceNumber` is the trimmed key both sides were matched on.
/// - Names and `submissionDate` are carried by both sides: GMC wins where it
///   has a value, because GMC is the register of record for a doctor's
///   identity and submission; TCS fills the gap for doctors GMC lacks.
/// - Programme, membership, curriculum, owner, grade and `tcsDesignatedBody`
///   come only from TCS; `designatedBody`, `tisStatus`, `underNotice`,
///   `admin` and `lastUpdatedDate` only from GMC.
/// - `existsInGmc` is true only when the doctor is in `doctorsForDB` with
///   `existsInGmc` true; TCS-only doctors get false.
/// - `gmcStatus` is the latest recommendation outcome, whichever side the
///   doctor came from (recommendations are keyed by GMC number).
/// - `updatedBy`, `lastConnectionDateTime` and `hiddenDiscrepancies` come
///   from the connection service's data of the doctor (see
///   [`DoctorConnection`]); it never makes a document by itself.
/// - `updatedAt` is the time of writing, given by the caller.
pub fn merge(
    gmc_number: &GmcNumber,
    tcs: Option<&TcsRecord>,
    gmc: Option<&GmcDoctor>,
    status: Option<GmcStatus>,
    connection: Option<&DoctorConnection>,
    updated_at: &str,
) -> MasterDoctor {
    let from_tcs = |f: fn(&TcsRecord) -> &Option<String>| tcs.and_then(|t| f(t).clone());
    let from_gmc = |f: fn(&GmcDoctor) -> &Option<String>| gmc.and_then(|g| f(g).clone());
    MasterDoctor {
        gmc_reference_number: gmc_number.as_str().to_string(),
        doctor_first_name: from_gmc(|g| &g.doctor_first_name)
            .or_else(|| from_tcs(|t| &t.doctor_first_name)),
        doctor_last_name: from_gmc(|g| &g.doctor_last_name)
            .or_else(|| from_tcs(|t| &t.doctor_last_name)),
        submission_date: from_gmc(|g| &g.submission_date)
            .or_else(|| from_tcs(|t| &t.submission_date)),
        tcs_person_id: tcs.and_then(|t| t.tcs_person_id),
        programme_name: from_tcs(|t| &t.programme_name),
        membership_type: from_tcs(|t| &t.programme_membership_type),
        membership_start_date: from_tcs(|t| &t.programme_membership_start_date),
        membership_end_date: from_tcs(|t| &t.programme_membership_end_date),
        curriculum_end_date: from_tcs(|t| &t.curriculum_end_date),
        programme_owner: from_tcs(|t| &t.programme_owner),
        tcs_designated_body: from_tcs(|t| &t.tcs_designated_body),
        placement_grade: from_tcs(|t| &t.placement_grade),
        designated_body: from_gmc(|g| &g.designated_body_code),
        tis_status: from_gmc(|g| &g.doctor_status),
        gmc_status: status.map(|s| s.as_str().to_string()),
        under_notice: from_gmc(|g| &g.under_notice),
        admin: from_gmc(|g| &g.admin),
        exists_in_gmc: gmc.is_some_and(|g| g.exists_in_gmc),
        last_updated_date: from_gmc(|g| &g.last_updated_date),
        updated_at: Some(updated_at.to_string()),
        updated_by: connection.and_then(DoctorConnection::updated_by),
        last_connection_date_time: connection.and_then(DoctorConnection::last_connection_date_time),
        hidden_discrepancies: connection.map(|c| c.hidden().to_vec()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmc_number() -> GmcNumber {
        GmcNumber::parse("1234567").unwrap()
    }

    fn tcs() -> TcsRecord {
        TcsRecord {
            tcs_person_id: Some(9),
            doctor_first_name: Some("Tcs-First".into()),
            doctor_last_name: Some("Tcs-Last".into()),
            submission_date: Some("2025-01-01".into()),
            programme_name: Some("Surgery | Cardiology".into()),
            programme_membership_type: Some("SUBSTANTIVE".into()),
            tcs_designated_body: Some("1-AIIDR8".into()),
            programme_owner: Some("North West".into()),
            placement_grade: Some("279".into()),
            programme_membership_start_date: Some("2023-08-01".into()),
            programme_membership_end_date: Some("2026-08-01".into()),
            curriculum_end_date: Some("2026-07-31".into()),
            ..TcsRecord::default()
        }
    }

    fn gmc() -> GmcDoctor {
        GmcDoctor {
            doctor_first_name: Some("Gmc-First".into()),
            doctor_last_name: Some("Gmc-Last".into()),
            submission_date: Some("2025-06-01".into()),
            under_notice: Some("NO".into()),
            doctor_status: Some("NOT_STARTED".into()),
            last_updated_date: Some("2025-05-01".into()),
            designated_body_code: Some("1-AIIDSA".into()),
            admin: Some("admin@example.org".into()),
            exists_in_gmc: true,
        }
    }

    #[test]
    fn gmc_wins_for_names_and_submission_date() {
        let doc = merge(&gmc_number(), Some(&tcs()), Some(&gmc()), None, None, "t");
        assert_eq!(doc.doctor_first_name.as_deref(), Some("Gmc-First"));
        assert_eq!(doc.doctor_last_name.as_deref(), Some("Gmc-Last"));
        assert_eq!(doc.submission_date.as_deref(), Some("2025-06-01"));
    }

    #[test]
    fn tcs_fills_shared_fields_that_gmc_lacks() {
        let mut g = gmc();
        g.doctor_first_name = None;
        let doc = merge(&gmc_number(), Some(&tcs()), Some(&g), None, None, "t");
        assert_eq!(doc.doctor_first_name.as_deref(), Some("Tcs-First"));
    }

    #[test]
    fn tcs_and_gmc_only_fields_come_from_their_side() {
        let doc = merge(
            &gmc_number(),
            Some(&tcs()),
            Some(&gmc()),
            Some(GmcStatus::Approved),
            None,
            "now",
        );
        assert_eq!(doc.tcs_person_id, Some(9));
        assert_eq!(doc.membership_type.as_deref(), Some("SUBSTANTIVE"));
        assert_eq!(doc.membership_start_date.as_deref(), Some("2023-08-01"));
        assert_eq!(doc.curriculum_end_date.as_deref(), Some("2026-07-31"));
        assert_eq!(doc.tcs_designated_body.as_deref(), Some("1-AIIDR8"));
        assert_eq!(doc.designated_body.as_deref(), Some("1-AIIDSA"));
        assert_eq!(doc.tis_status.as_deref(), Some("NOT_STARTED"));
        assert_eq!(doc.gmc_status.as_deref(), Some("Approved"));
        assert_eq!(doc.under_notice.as_deref(), Some("NO"));
        assert_eq!(doc.updated_at.as_deref(), Some("now"));
        assert!(doc.exists_in_gmc);
        assert!(doc.is_discrepancy());
    }

    #[test]
    fn a_tcs_only_doctor_is_kept_and_not_in_gmc() {
        let doc = merge(&gmc_number(), Some(&tcs()), None, None, None, "t");
        assert!(!doc.exists_in_gmc);
        assert_eq!(doc.doctor_first_name.as_deref(), Some("Tcs-First"));
        assert_eq!(doc.designated_body, None);
        assert_eq!(doc.gmc_status, None);
    }

    #[test]
    fn a_gmc_only_doctor_is_kept_without_tcs_fields() {
        let doc = merge(
            &gmc_number(),
            None,
            Some(&gmc()),
            Some(GmcStatus::UnderReview),
            None,
            "t",
        );
        assert_eq!(doc.tcs_person_id, None);
        assert_eq!(doc.programme_name, None);
        assert_eq!(doc.gmc_status.as_deref(), Some("Under Review"));
        assert!(doc.exists_in_gmc);
    }

    #[test]
    fn a_doctor_gmc_no_longer_lists_is_not_a_connection() {
        let mut g = gmc();
        g.exists_in_gmc = false;
        assert!(!merge(&gmc_number(), Some(&tcs()), Some(&g), None, None, "t").exists_in_gmc);
    }

    #[test]
    fn matching_designated_bodies_are_not_a_discrepancy() {
        let mut g = gmc();
        g.designated_body_code = Some("1-AIIDR8".into());
        assert!(!merge(&gmc_number(), Some(&tcs()), Some(&g), None, None, "t").is_discrepancy());
    }

    #[test]
    fn absent_values_are_left_out_of_the_json() {
        let doc = merge(&gmc_number(), None, None, None, None, "t");
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json.get("programmeName").is_none());
        assert_eq!(json["gmcReferenceNumber"], "1234567");
        assert_eq!(json["existsInGmc"], false);
    }

    #[test]
    fn connection_data_fills_the_connection_fields() {
        use crate::domain::connection::ConnectionLog;
        use chrono::TimeZone;
        let mut c = DoctorConnection::default();
        c.add_log(ConnectionLog {
            updated_by: Some("admin@example.org".into()),
            event_time: chrono::Utc.timestamp_millis_opt(1_767_225_600_123).unwrap(),
        });
        c.add_hidden(HiddenDiscrepancy {
            id: Some("h1".into()),
            hidden_for_designated_body_code: "1-AIIDR8".into(),
            ..HiddenDiscrepancy::default()
        });
        let doc = merge(&gmc_number(), Some(&tcs()), None, None, Some(&c), "t");
        assert_eq!(doc.updated_by.as_deref(), Some("admin@example.org"));
        assert_eq!(
            doc.last_connection_date_time.as_deref(),
            Some("2026-01-01T00:00:00.123")
        );
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json["hiddenDiscrepancies"][0]["hiddenForDesignatedBodyCode"],
            "1-AIIDR8"
        );
    }

    #[test]
    fn without_connection_data_the_connection_fields_are_left_out() {
        let doc = merge(&gmc_number(), Some(&tcs()), Some(&gmc()), None, None, "t");
        let json = serde_json::to_value(&doc).unwrap();
        for f in ["updatedBy", "lastConnectionDateTime", "hiddenDiscrepancies"] {
            assert!(json.get(f).is_none(), "{f}");
        }
    }
}
