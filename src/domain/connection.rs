//! The connection service's data of one doctor: its latest connection log
//! (which gives `updatedBy` and `lastConnectionDateTime`) and its hidden
//! discrepancies (one per designated body), with today's rules for
//! combining several of each.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `lastConnectionDateTime` and `hiddenDateTime` as today's integration
/// writes them (`uuuu-MM-dd'T'HH:mm:ss.SSS`, UTC, no zone).
pub fn format_connection_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// One connection log, reduced to what the document takes from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLog {
    /// Shared: a few administrators make most logs, so a reader keeps each
    /// name once (see `sources::connection::ConnectionBuilder`).
    pub updated_by: Option<Arc<str>>,
    /// `requestTime` in the collection (`eventDateTime` of the DTO).
    pub event_time: DateTime<Utc>,
}

/// One entry of a document's nested `hiddenDiscrepancies`: a designated
/// body hid this doctor's discrepancy from its users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HiddenDiscrepancy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmc_id: Option<String>,
    pub hidden_for_designated_body_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_date_time: Option<String>,
}

/// What a second hidden discrepancy for the same body did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenAdded {
    Added,
    /// The body already hid this doctor: the first entry stays, as today's
    /// integration keeps it (it appends only for a body not in the list).
    SameBodyKept,
}

/// The connection data of one doctor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DoctorConnection {
    latest: Option<ConnectionLog>,
    hidden: Vec<HiddenDiscrepancy>,
}

impl DoctorConnection {
    /// Takes a log: the latest by event time wins, whatever the order of
    /// reading; of two at the same instant the first read stays.
    pub fn add_log(&mut self, log: ConnectionLog) {
        if self
            .latest
            .as_ref()
            .is_none_or(|l| log.event_time > l.event_time)
        {
            self.latest = Some(log);
        }
    }

    /// Takes a hidden discrepancy unless its body already hid this doctor.
    pub fn add_hidden(&mut self, hidden: HiddenDiscrepancy) -> HiddenAdded {
        let body = &hidden.hidden_for_designated_body_code;
        if self
            .hidden
            .iter()
            .any(|h| &h.hidden_for_designated_body_code == body)
        {
            return HiddenAdded::SameBodyKept;
        }
        // Exactly: most doctors have one, and a first push would make room
        // for four (432 bytes left empty per doctor; 36 MB at a million).
        self.hidden.reserve_exact(1);
        self.hidden.push(hidden);
        HiddenAdded::Added
    }

    pub fn latest_log(&self) -> Option<&ConnectionLog> {
        self.latest.as_ref()
    }

    /// `updatedBy` of the document.
    pub fn updated_by(&self) -> Option<String> {
        self.latest
            .as_ref()
            .and_then(|l| l.updated_by.as_deref().map(str::to_string))
    }

    /// `lastConnectionDateTime` of the document.
    pub fn last_connection_date_time(&self) -> Option<String> {
        self.latest
            .as_ref()
            .map(|l| format_connection_time(l.event_time))
    }

    /// The document's `hiddenDiscrepancies`, in the order they were kept.
    pub fn hidden(&self) -> &[HiddenDiscrepancy] {
        &self.hidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn log(by: &str, secs: i64) -> ConnectionLog {
        ConnectionLog {
            updated_by: Some(by.into()),
            event_time: Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
        }
    }

    fn hidden(id: &str, body: &str) -> HiddenDiscrepancy {
        HiddenDiscrepancy {
            id: Some(id.into()),
            hidden_for_designated_body_code: body.into(),
            ..HiddenDiscrepancy::default()
        }
    }

    #[test]
    fn the_latest_log_wins_whatever_the_order_of_reading() {
        let mut c = DoctorConnection::default();
        c.add_log(log("b", 20));
        c.add_log(log("a", 10));
        c.add_log(log("c", 5));
        assert_eq!(c.updated_by().as_deref(), Some("b"));
        c.add_log(log("d", 30));
        assert_eq!(c.updated_by().as_deref(), Some("d"));
    }

    #[test]
    fn of_two_logs_at_the_same_instant_the_first_read_stays() {
        let mut c = DoctorConnection::default();
        c.add_log(log("first", 10));
        c.add_log(log("second", 10));
        assert_eq!(c.updated_by().as_deref(), Some("first"));
    }

    #[test]
    fn the_connection_time_has_milliseconds_and_no_zone() {
        let at = Utc.timestamp_millis_opt(1_700_000_000_042).unwrap();
        assert_eq!(format_connection_time(at), "2023-11-14T22:13:20.042");
        let mut c = DoctorConnection::default();
        c.add_log(ConnectionLog {
            updated_by: None,
            event_time: at,
        });
        assert_eq!(
            c.last_connection_date_time().as_deref(),
            Some("2023-11-14T22:13:20.042")
        );
        assert_eq!(c.updated_by(), None);
    }

    #[test]
    fn one_hidden_discrepancy_per_designated_body_and_the_first_is_kept() {
        let mut c = DoctorConnection::default();
        assert_eq!(c.add_hidden(hidden("1", "1-AIIDR8")), HiddenAdded::Added);
        assert_eq!(c.add_hidden(hidden("2", "1-AIIDSA")), HiddenAdded::Added);
        assert_eq!(
            c.add_hidden(hidden("3", "1-AIIDR8")),
            HiddenAdded::SameBodyKept
        );
        let ids: Vec<_> = c.hidden().iter().map(|h| h.id.as_deref()).collect();
        assert_eq!(ids, [Some("1"), Some("2")]);
    }

    #[test]
    fn a_hidden_discrepancy_serialises_with_todays_field_names() {
        let h = HiddenDiscrepancy {
            id: Some("x".into()),
            gmc_id: Some("1234567".into()),
            hidden_for_designated_body_code: "1-AIIDR8".into(),
            hidden_by: Some("admin".into()),
            reason: None,
            hidden_date_time: Some("2026-01-02T03:04:05.006".into()),
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["hiddenForDesignatedBodyCode"], "1-AIIDR8");
        assert_eq!(json["gmcId"], "1234567");
        assert_eq!(json["hiddenDateTime"], "2026-01-02T03:04:05.006");
        assert!(json.get("reason").is_none());
    }
}
