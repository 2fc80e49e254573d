//! A live change as it arrived and as the journal keeps it. The journal
//! stores each change in its source form (the TCS message body, the
//! `doctorsForDB` document, the GMC number), so that a rebuild's catch-up
//! rebuilds exactly the change the applier applied, with today's rules.

use bson::{Binary, Bson, Document};

use crate::domain::{parse_tcs_message, Change, GmcDoctor, GmcNumber, TcsMessage};
use crate::handover::{JournalEntry, NewEntry};

/// A change in its source form.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// A TCS update message body.
    Tcs(Vec<u8>),
    /// A `doctorsForDB` document inserted, updated or replaced.
    Doctor(Document),
    /// A doctor deleted from `doctorsForDB`.
    DoctorLeft(GmcNumber),
    /// A recommendation of this doctor changed.
    Recommendation(GmcNumber),
}

impl Recorded {
    /// The change it stands for, or why it is not one (the reject key).
    pub fn change(&self) -> Result<Change, &'static str> {
        match self {
            Recorded::Tcs(body) => match parse_tcs_message(body) {
                Ok(TcsMessage::Record(number, record)) => Ok(Change::Tcs { number, record }),
                Ok(TcsMessage::SyncEnd) => Err("sync_end_on_update_queue"),
                Err(reason) => Err(reason.as_str()),
            },
            Recorded::Doctor(doc) => match GmcDoctor::from_document(doc) {
                Ok((number, doctor)) => Ok(Change::Doctor {
                    number,
                    doctor: Box::new(doctor),
                }),
                Err(e) => Err(crate::domain::RejectReason::BadGmcNumber(e).as_str()),
            },
            Recorded::DoctorLeft(number) => Ok(Change::DoctorLeft {
                number: number.clone(),
            }),
            Recorded::Recommendation(number) => Ok(Change::Recommendation {
                number: number.clone(),
            }),
        }
    }

    /// The journal entry of this change (for doctor `number`).
    pub fn entry(&self, number: &GmcNumber) -> NewEntry {
        let (kind, payload) = match self {
            Recorded::Tcs(body) => (
                "tcs",
                Bson::Binary(Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: body.clone(),
                }),
            ),
            Recorded::Doctor(doc) => ("doctor", Bson::Document(doc.clone())),
            Recorded::DoctorLeft(_) => ("doctor_left", Bson::Null),
            Recorded::Recommendation(_) => ("recommendation", Bson::Null),
        };
        NewEntry {
            kind,
            number: number.as_str().to_string(),
            payload,
        }
    }

    /// The change a journal entry stands for.
    pub fn from_entry(entry: &JournalEntry) -> Result<Self, String> {
        let number = || {
            GmcNumber::parse(&entry.number).map_err(|e| format!("journal entry {}: {e}", entry.seq))
        };
        match (entry.kind.as_str(), &entry.payload) {
            ("tcs", Bson::Binary(b)) => Ok(Recorded::Tcs(b.bytes.clone())),
            ("doctor", Bson::Document(d)) => Ok(Recorded::Doctor(d.clone())),
            ("doctor_left", _) => Ok(Recorded::DoctorLeft(number()?)),
            ("recommendation", _) => Ok(Recorded::Recommendation(number()?)),
            (kind, _) => Err(format!(
                "journal entry {} has an unknown kind {kind:?} or payload",
                entry.seq
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn round_trip(recorded: Recorded, number: &str) -> Recorded {
        let number = GmcNumber::parse(number).unwrap();
        let new = recorded.entry(&number);
        let entry = JournalEntry {
            seq: 1,
            kind: new.kind.to_string(),
            number: new.number,
            payload: new.payload,
        };
        Recorded::from_entry(&entry).unwrap()
    }

    #[test]
    fn every_change_survives_the_journal_and_means_the_same_after() {
        let tcs = Recorded::Tcs(
            br#"{"gmcReferenceNumber":"7000001","programmeName":"Cardiology"}"#.to_vec(),
        );
        assert_eq!(round_trip(tcs.clone(), "7000001"), tcs);
        let Change::Tcs { number, record } = tcs.change().unwrap() else {
            panic!("a TCS change")
        };
        assert_eq!(number.as_str(), "7000001");
        assert_eq!(record.programme_name.as_deref(), Some("Cardiology"));

        let doctor = Recorded::Doctor(
            doc! {"_id": "7000002", "designatedBodyCode": "1-AIIDSA", "existsInGmc": true},
        );
        assert_eq!(round_trip(doctor.clone(), "7000002"), doctor);
        assert!(matches!(doctor.change(), Ok(Change::Doctor { .. })));

        let left = Recorded::DoctorLeft(GmcNumber::parse("7000003").unwrap());
        assert_eq!(round_trip(left.clone(), "7000003"), left);
        let rec = Recorded::Recommendation(GmcNumber::parse("7000004").unwrap());
        assert_eq!(round_trip(rec.clone(), "7000004"), rec);
    }

    #[test]
    fn a_malformed_update_is_no_change_and_says_why() {
        assert_eq!(
            Recorded::Tcs(b"{nope".to_vec()).change(),
            Err("invalid_json")
        );
        assert_eq!(
            Recorded::Tcs(br#"{"tcsPersonId": 1}"#.to_vec()).change(),
            Err("missing_gmc_number")
        );
        assert_eq!(
            Recorded::Doctor(doc! {"x": 1}).change(),
            Err("missing_gmc_number")
        );
    }
}
