//! A live change as it arrived and as the journal keeps it. The journal
//! stores each change in its source form (the TCS message body, the
//! `doctorsForDB` document, the GMC number, an un-hidden discrepancy's
//! id), so that a rebuild's catch-up
//! rebuilds exactly the change the applier applied, with today's rules.

use bson::{Binary, Bson, Document};

use crate::domain::{parse_tcs_update, Change, GmcDoctor, GmcNumber, TcsMessage, TcsUpdate};
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
    /// A connection log or hidden discrepancy of this doctor was written.
    Connection(GmcNumber),
    /// The hidden discrepancy with this `_id` was deleted.
    Unhidden(String),
}

impl Recorded {
    /// The change it stands for, or why it is not one (the reject key).
    pub fn change(&self) -> Result<Change, &'static str> {
        match self {
            // The size limit was checked when the message arrived.
            Recorded::Tcs(body) => match parse_tcs_update(body, usize::MAX) {
                Ok(TcsUpdate::Message(TcsMessage::Record(number, record))) => {
                    Ok(Change::Tcs { number, record })
                }
                Ok(TcsUpdate::FilteredOut { person }) => Ok(Change::TcsLeft { person }),
                Ok(TcsUpdate::Message(TcsMessage::SyncEnd)) => Err("sync_end_on_update_queue"),
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
            Recorded::Connection(number) => Ok(Change::Connection {
                number: number.clone(),
            }),
            Recorded::Unhidden(id) => Ok(Change::Unhidden { id: id.clone() }),
        }
    }

    /// The journal entry of this change (for doctor `number`; none for a
    /// trainee filtered out of TIS, whose body names the trainee).
    pub fn entry(&self, number: Option<&GmcNumber>) -> NewEntry {
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
            Recorded::Connection(_) => ("connection", Bson::Null),
            Recorded::Unhidden(id) => ("unhidden", Bson::String(id.clone())),
        };
        NewEntry {
            kind,
            number: number.map(|n| n.as_str().to_string()).unwrap_or_default(),
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
            ("connection", _) => Ok(Recorded::Connection(number()?)),
            ("unhidden", Bson::String(id)) => Ok(Recorded::Unhidden(id.clone())),
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
        let new = recorded.entry(Some(&number));
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
        let connection = Recorded::Connection(GmcNumber::parse("7000005").unwrap());
        assert_eq!(round_trip(connection.clone(), "7000005"), connection);
        let unhidden = Recorded::Unhidden("6561f0c2a1b2c3d4e5f60718".into());
        assert_eq!(round_trip(unhidden.clone(), "7000006"), unhidden);
        assert_eq!(
            unhidden.change(),
            Ok(Change::Unhidden {
                id: "6561f0c2a1b2c3d4e5f60718".into()
            })
        );
    }

    #[test]
    fn a_malformed_update_is_no_change_and_says_why() {
        assert_eq!(
            Recorded::Tcs(b"{nope".to_vec()).change(),
            Err("invalid_json")
        );
        // A trainee without a GMC number is one filtered out of TIS; with
        // no tcsPersonId either, nothing can be done with it.
        assert_eq!(
            Recorded::Tcs(br#"{"tcsPersonId": 1}"#.to_vec()).change(),
            Ok(Change::TcsLeft { person: 1 })
        );
        assert_eq!(
            Recorded::Tcs(br#"{"gmcReferenceNumber": null, "programmeName": "X"}"#.to_vec())
                .change(),
            Err("missing_gmc_number")
        );
        assert_eq!(
            Recorded::Doctor(doc! {"x": 1}).change(),
            Err("missing_gmc_number")
        );
    }
}
