//! `rebuilder status`: the current run, or the last one, read from the run
//! history; readable by default, the stored record with `--json`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::StatusArgs;
use crate::config::Settings;
use crate::rebuild::record::{RunHistory, RunOutcome, RunRecord};
use crate::sources::mongo_client;
use crate::state::lease::{lease_collection, read_lease, REBUILD_LEASE};

pub async fn run(settings: &Settings, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mongo = mongo_client(&settings.mongodb).await?;
    let history = RunHistory::new(&mongo, &settings.mongodb);
    let record = history
        .current_or_last()
        .await
        .context("while reading the run history")?;
    let lease = read_lease(&lease_collection(&mongo, &settings.mongodb), REBUILD_LEASE)
        .await
        .context("while reading the lease")?;
    let Some(record) = record else {
        if args.json {
            println!("null");
        } else {
            println!("No run recorded yet.");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&record));
    if record.outcome == RunOutcome::Running && !record.is_running(lease.as_ref()) {
        println!("  note: this run no longer holds the lease; its process has died (the next run marks it abandoned)");
    }
    Ok(ExitCode::SUCCESS)
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A run record as a few readable lines.
pub fn render(r: &RunRecord) -> String {
    let mut out = String::new();
    let c = &r.counts;
    let mode = match (r.dry_run, r.force) {
        (true, true) => ", dry run, forced",
        (true, false) => ", dry run",
        (false, true) => ", forced",
        (false, false) => "",
    };
    let _ = writeln!(
        out,
        "Run {} ({}{mode}) on {} pid {}: {} after {}",
        r.id,
        r.trigger,
        r.host,
        r.pid,
        r.outcome,
        secs(r.duration_ms())
    );
    let _ = writeln!(
        out,
        "  started {}{}",
        r.started_at,
        r.ended_at
            .as_ref()
            .map(|e| format!(", ended {e}"))
            .unwrap_or_default()
    );
    if let Some(phase) = r.phase {
        let _ = writeln!(out, "  now: {phase}");
    }
    if !r.phases.is_empty() {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| match p.duration_ms {
                Some(ms) => format!("{} {}", p.phase, secs(ms)),
                None => format!("{} (running)", p.phase),
            })
            .collect();
        let _ = writeln!(out, "  phases: {}", phases.join(", "));
    }
    let _ = writeln!(
        out,
        "  TCS: {} messages, {} records, {} duplicates, {} stale discarded",
        c.tcs_messages, c.tcs_records, c.tcs_duplicates, c.tcs_stale_discarded
    );
    let _ = writeln!(
        out,
        "  GMC: {} doctors, {} latest outcomes{}",
        c.gmc_doctors,
        c.gmc_outcomes,
        if c.gmc_stale_discarded > 0 {
            format!(", {} stale batches discarded", c.gmc_stale_discarded)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  connection data: {} connection logs, {} hidden discrepancies ({} for a body already kept), {} for doctors not in the index{}",
        c.connection_logs,
        c.hidden_discrepancies,
        c.hidden_same_body,
        c.connection_orphans,
        if c.connection_stale_discarded > 0 {
            format!(", {} stale batches discarded", c.connection_stale_discarded)
        } else {
            String::new()
        }
    );
    let b = &r.bulk;
    let _ = writeln!(
        out,
        "  merged: {} in both, {} TCS only, {} GMC only; {} documents expected ({} written, {} superseded, {} failed)",
        c.merged_both,
        c.merged_tcs_only,
        c.merged_gmc_only,
        c.docs_expected,
        b.written,
        b.superseded,
        b.failed
    );
    if b.requests > 0 {
        let _ = writeln!(
            out,
            "  bulk: {} requests, {} MB, {} retried items, {} throttled answers, {:.0} docs/s",
            b.requests,
            b.bytes / (1024 * 1024),
            b.retried_items,
            b.throttled_responses,
            b.docs_per_sec()
        );
    }
    let cu = &r.catch_up;
    if cu.applier_active || cu.replayed > 0 {
        let _ = writeln!(
            out,
            "  catch-up: {} live changes replayed in {} rounds; {} left at the pause, applier paused {} ms{}",
            cu.replayed,
            cu.rounds,
            cu.backlog_at_pause,
            cu.paused_ms,
            if cu.failed > 0 {
                format!("; {} refused", cu.failed)
            } else {
                String::new()
            }
        );
    }
    if !r.rejects.is_empty() {
        let rejects: Vec<String> = r.rejects.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "  rejects: {}", rejects.join(", "));
    }
    for g in &r.gates {
        let verdict = match (g.passed, g.overridden) {
            (true, _) => "passed",
            (false, true) => "FAILED, overridden by --force",
            (false, false) => "FAILED",
        };
        let _ = writeln!(out, "  gate {}: {verdict}: {}", g.name, g.detail);
    }
    if !r.orphans_deleted.is_empty() {
        let _ = writeln!(
            out,
            "  deleted orphans of dead runs: {}",
            r.orphans_deleted.join(", ")
        );
    }
    if !r.generations.is_empty() {
        let _ = writeln!(out, "  built: {}", r.generations.join(", "));
    }
    if let Some(p) = &r.promotion {
        let _ = writeln!(
            out,
            "  promoted in {} ms: {} (was {}), {} (was {})",
            p.took_ms,
            p.master.to,
            p.master.from.as_deref().unwrap_or("nothing"),
            p.recommendation.to,
            p.recommendation.from.as_deref().unwrap_or("nothing")
        );
    }
    if !r.retention_deleted.is_empty() {
        let _ = writeln!(
            out,
            "  retention deleted: {}",
            r.retention_deleted.join(", ")
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "  error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebuild::record::{RunPhase, Trigger};

    #[test]
    fn a_refused_run_renders_its_reason() {
        let mut r = RunRecord::start("r1", Trigger::Cli, false, false);
        r.begin_phase(RunPhase::Cleanup);
        r.reject("invalid_json");
        r.finish(
            RunOutcome::Refused,
            Some("another rebuild is running".into()),
        );
        let text = render(&r);
        assert!(text.contains("Run r1 (cli) on"));
        assert!(text.contains(": refused after"));
        assert!(text.contains("rejects: invalid_json 1"));
        assert!(text.contains("error: another rebuild is running"));
    }

    #[test]
    fn the_connection_data_and_stale_batches_discarded_are_shown() {
        let mut r = RunRecord::start("r2", Trigger::Cli, false, false);
        r.counts.connection_logs = 12;
        r.counts.hidden_discrepancies = 5;
        r.counts.connection_orphans = 1;
        r.counts.gmc_stale_discarded = 3;
        r.counts.connection_stale_discarded = 2;
        r.finish(RunOutcome::Succeeded, None);
        let text = render(&r);
        assert!(
            text.contains("connection data: 12 connection logs, 5 hidden discrepancies (0 for a body already kept), 1 for doctors not in the index, 2 stale batches discarded"),
            "{text}"
        );
        assert!(text.contains(", 3 stale batches discarded\n"), "{text}");
    }
}
