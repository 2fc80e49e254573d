//! GMC doctors as stored in `doctorsForDB`, and the recommendation outcome
//! that becomes a doctor's `gmcStatus`.

use std::fmt;
use std::str::FromStr;

use bson::{Bson, Document};

use super::gmc_number::{GmcNumber, GmcNumberError};

/// One doctor of `doctorsForDB`, reduced to what the index needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GmcDoctor {
    pub doctor_first_name: Option<String>,
    pub doctor_last_name: Option<String>,
    pub submission_date: Option<String>,
    pub under_notice: Option<String>,
    pub doctor_status: Option<String>,
    pub last_updated_date: Option<String>,
    pub designated_body_code: Option<String>,
    pub admin: Option<String>,
    pub exists_in_gmc: bool,
}

/// The fields read from `doctorsForDB`, for a projection.
pub const GMC_DOCTOR_FIELDS: &[&str] = &[
    "_id",
    "doctorFirstName",
    "doctorLastName",
    "submissionDate",
    "underNotice",
    "doctorStatus",
    "lastUpdatedDate",
    "designatedBodyCode",
    "admin",
    "existsInGmc",
];

impl GmcDoctor {
    /// Reads a stored document. Dates may be BSON dates or `yyyy-MM-dd`
    /// strings (both exist in the live store); they become `yyyy-MM-dd`.
    pub fn from_document(doc: &Document) -> Result<(GmcNumber, GmcDoctor), GmcNumberError> {
        let id = match doc.get("_id") {
            Some(Bson::String(s)) => GmcNumber::parse(s)?,
            Some(Bson::Int32(n)) => GmcNumber::parse(&n.to_string())?,
            Some(Bson::Int64(n)) => GmcNumber::parse(&n.to_string())?,
            _ => return Err(GmcNumberError::Missing),
        };
        let doctor = GmcDoctor {
            doctor_first_name: text(doc, "doctorFirstName"),
            doctor_last_name: text(doc, "doctorLastName"),
            submission_date: day(doc, "submissionDate"),
            under_notice: text(doc, "underNotice"),
            doctor_status: text(doc, "doctorStatus"),
            last_updated_date: day(doc, "lastUpdatedDate"),
            designated_body_code: text(doc, "designatedBodyCode"),
            admin: text(doc, "admin"),
            exists_in_gmc: matches!(doc.get("existsInGmc"), Some(Bson::Boolean(true))),
        };
        Ok((id, doctor))
    }
}

fn text(doc: &Document, key: &str) -> Option<String> {
    match doc.get(key) {
        Some(Bson::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Bson::Int32(n)) => Some(n.to_string()),
        Some(Bson::Int64(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn day(doc: &Document, key: &str) -> Option<String> {
    match doc.get(key) {
        Some(Bson::DateTime(dt)) => Some(dt.to_chrono().format("%Y-%m-%d").to_string()),
        Some(Bson::String(s)) => {
            let s = s.trim();
            // Keep the day of an ISO date-time; the index maps these as yyyy-MM-dd.
            (s.len() >= 10).then(|| s[..10].to_string())
        }
        _ => None,
    }
}

/// The latest recommendation outcome of a doctor, as the index shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GmcStatus {
    Approved,
    Rejected,
    UnderReview,
}

impl GmcStatus {
    pub const ALL: [GmcStatus; 3] = [Self::Approved, Self::Rejected, Self::UnderReview];

    pub fn as_str(self) -> &'static str {
        match self {
            GmcStatus::Approved => "Approved",
            GmcStatus::Rejected => "Rejected",
            GmcStatus::UnderReview => "Under Review",
        }
    }
}

impl fmt::Display for GmcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GmcStatus {
    type Err = String;
    /// Accepts the stored enum name (`UNDER_REVIEW`) and the shown value (`Under Review`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "approved" => Ok(Self::Approved),
            "rejected" => Ok(Self::Rejected),
            "underreview" => Ok(Self::UnderReview),
            _ => Err(format!(
                "unknown recommendation outcome {s:?}; expected one of APPROVED, REJECTED, UNDER_REVIEW"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_stored_doctor_reads_with_dates_as_days() {
        let when = bson::DateTime::parse_rfc3339_str("2024-03-05T00:00:00Z").unwrap();
        let stored = doc! {"_id": " 1234567", "doctorFirstName": "Ann", "submissionDate": when,
        "lastUpdatedDate": "2024-01-02", "designatedBodyCode": "1-AIIDR8", "existsInGmc": true};
        let (id, doctor) = GmcDoctor::from_document(&stored).unwrap();
        assert_eq!(id.as_str(), "1234567");
        assert_eq!(doctor.submission_date.as_deref(), Some("2024-03-05"));
        assert_eq!(doctor.last_updated_date.as_deref(), Some("2024-01-02"));
        assert!(doctor.exists_in_gmc);
        assert_eq!(doctor.doctor_last_name, None);
    }

    #[test]
    fn exists_in_gmc_is_false_unless_stored_true() {
        let (_, doctor) = GmcDoctor::from_document(&doc! {"_id": "1"}).unwrap();
        assert!(!doctor.exists_in_gmc);
    }

    #[test]
    fn outcomes_parse_from_stored_and_shown_forms() {
        assert_eq!(
            "UNDER_REVIEW".parse::<GmcStatus>(),
            Ok(GmcStatus::UnderReview)
        );
        assert_eq!(
            "Under Review".parse::<GmcStatus>(),
            Ok(GmcStatus::UnderReview)
        );
        assert_eq!("APPROVED".parse::<GmcStatus>(), Ok(GmcStatus::Approved));
        assert!("maybe"
            .parse::<GmcStatus>()
            .unwrap_err()
            .contains("APPROVED"));
    }
}
