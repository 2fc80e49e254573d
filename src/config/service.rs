//! The sections of `rebuilder serve`: the HTTP API (address, bearer token,
//! which endpoints it protects) and the nightly schedule.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Where the API listens (`0.0.0.0:8080` behind a gateway; port 0 picks one).
    pub listen: String,
    /// The bearer token the mutating endpoints require.
    pub token: Option<Secret>,
    /// A file holding the token (its trailing newline is dropped).
    pub token_file: Option<PathBuf>,
    /// Serve without a token (every endpoint open); logged loudly at start.
    pub allow_unauthenticated: bool,
    /// Require the token on the read-only endpoints too.
    pub protect_reads: bool,
    /// How long a SIGTERM waits for a run to stop at its next safe point.
    pub shutdown_grace_secs: u64,
    /// How long `/readyz` waits for each server.
    pub ready_timeout_ms: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token: None,
            token_file: None,
            allow_unauthenticated: false,
            protect_reads: false,
            shutdown_grace_secs: 120,
            ready_timeout_ms: 2000,
        }
    }
}

/// The live applier (`rebuilder live`, and inside `rebuilder serve`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSettings {
    /// Run the applier inside `rebuilder serve`.
    pub enabled: bool,
    /// Changes applied per bulk request at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more changes.
    pub linger_ms: u64,
    /// Messages of the update queue in flight (unacked) at once.
    pub prefetch: u16,
    /// How long a run waits for the applier to pause at the swap.
    pub pause_timeout_secs: u64,
    /// Catch-up rounds before validation, at most.
    pub catch_up_rounds: u32,
    /// Catch-up stops repeating once a round has fewer changes left than this.
    pub catch_up_backlog: u64,
    /// The lease that keeps one applier active across replicas.
    pub lease_ttl_secs: u64,
    /// How long the change streams' history is kept by the server
    /// (DocumentDB's `change_stream_log_retention_duration`, 3 h by
    /// default): a lag past half of it is warned of, since a lag past all
    /// of it loses changes.
    pub stream_retention_secs: u64,
    /// `/readyz` and `/api/sync/status` say the live updates are behind
    /// when the backlog is older than this.
    pub max_lag_secs: u64,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: 500,
            linger_ms: 100,
            prefetch: 500,
            pause_timeout_secs: 30,
            catch_up_rounds: 5,
            catch_up_backlog: 100,
            lease_ttl_secs: 15,
            stream_retention_secs: 3 * 3600,
            max_lag_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    pub enabled: bool,
    /// A cron expression: five fields (minute hour day month weekday), or
    /// six with seconds first.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub time_zone: String,
}

impl Default for ScheduleSettings {
    /// Every night at 02:00 British time (GMT in winter, BST in summer).
    fn default() -> Self {
        Self {
            enabled: true,
            cron: "0 2 * * *".into(),
            time_zone: "Europe/London".into(),
        }
    }
}

impl ScheduleSettings {
    /// The expression and the time zone, or why they do not parse.
    pub fn parsed(&self) -> Result<(croner::Cron, chrono_tz::Tz), String> {
        let zone: chrono_tz::Tz = self.time_zone.trim().parse().map_err(|_| {
            format!(
                "time zone {:?} is not an IANA time zone name (for example Europe/London)",
                self.time_zone
            )
        })?;
        let cron: croner::Cron = self.cron.parse().map_err(|e| {
            format!(
                "{:?} is not a cron expression (five fields, or six with seconds first): {e}",
                self.cron
            )
        })?;
        Ok((cron, zone))
    }

    /// The first start strictly after `after`, as UTC.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<chrono::DateTime<chrono::Utc>, String> {
        let (cron, zone) = self.parsed()?;
        let local = after.with_timezone(&zone);
        cron.find_next_occurrence(&local, false)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| format!("no next start for {:?}: {e}", self.cron))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_nightly_default_follows_british_summer_time() {
        let s = ScheduleSettings::default();
        // 1 January: GMT, so 02:00 London is 02:00 UTC.
        let winter = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(winter).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 2, 2, 0, 0).unwrap()
        );
        // 1 July: BST, so 02:00 London is 01:00 UTC.
        let summer = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(summer).unwrap(),
            Utc.with_ymd_and_hms(2026, 7, 2, 1, 0, 0).unwrap()
        );
    }

    #[test]
    fn seconds_may_lead_and_bad_values_are_named() {
        let every_3s = ScheduleSettings {
            cron: "*/3 * * * * *".into(),
            ..ScheduleSettings::default()
        };
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 1).unwrap();
        assert_eq!(
            every_3s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 3).unwrap()
        );
        let bad_zone = ScheduleSettings {
            time_zone: "Mars/Olympus".into(),
            ..ScheduleSettings::default()
        };
        assert!(bad_zone.parsed().unwrap_err().starts_with("time zone"));
        let bad_cron = ScheduleSettings {
            cron: "every night".into(),
            ..ScheduleSettings::default()
        };
        assert!(bad_cron
            .parsed()
            .unwrap_err()
            .contains("not a cron expression"));
    }
}
