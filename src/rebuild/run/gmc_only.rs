//! Step 3b: the doctors of `doctorsForDB` that TCS did not send, written
//! after `syncEnd` (only then is the set of TCS doctors known), from the
//! copy read into memory in step 2: the collection is not read twice.
//! Then the connection data of doctors neither side sent is counted: it
//! makes no document, as today's integration only updates documents that
//! exist.

use anyhow::Context;
use tracing::warn;

use super::gmc_read::GmcInMemory;
use super::settle::Ticket;
use super::sink::DocumentSink;
use super::tcs_merge::now_for_documents;
use super::RunContext;
use crate::domain::{merge, GmcNumber};
use crate::rebuild::record::RunPhase;
use crate::search::BulkItem;
use crate::sources::gmc::GmcNumberSet;

/// Documents between two checkpoints of the run record (and two looks at
/// whether the run should stop).
const CHECKPOINT_EVERY: u64 = 5_000;

pub(super) async fn write(
    context: &mut RunContext<'_>,
    gmc: &GmcInMemory,
    sender: &DocumentSink,
    seen: &mut GmcNumberSet,
) -> anyhow::Result<()> {
    context.tracker.begin(RunPhase::GmcOnly).await;
    let mut progress =
        context
            .progress
            .phase(RunPhase::GmcOnly, "doctors", Some(gmc.doctors.len() as u64));
    let mut updated_at = now_for_documents();
    for (looked_at, (number, doctor)) in (1u64..).zip(gmc.doctors.iter()) {
        if looked_at % CHECKPOINT_EVERY == 0 {
            progress.inc(CHECKPOINT_EVERY);
            updated_at = now_for_documents();
            context.tracker.checkpoint().await;
            context.check_continue()?;
        }
        if !seen.add(&number) {
            continue;
        }
        context.tracker.record.counts.merged_gmc_only += 1;
        let doc = merge(
            &number,
            None,
            Some(&doctor),
            gmc.outcomes.get(&number).copied(),
            gmc.connections.get(&number),
            &updated_at,
        );
        let item = BulkItem {
            source: serde_json::to_vec(&doc)?.into(),
            id: number.into_string(),
            version: None,
            ticket: Ticket::Gmc,
        };
        sender
            .send(item)
            .await
            .context("while writing GMC-only doctors")?;
    }
    progress.finish();
    count_connection_orphans(context, gmc, seen);
    Ok(())
}

/// Counts (and logs a few of) the doctors with connection data but no
/// document: a connection log or hidden discrepancy for a GMC number
/// neither TCS nor GMC sent.
fn count_connection_orphans(context: &mut RunContext<'_>, gmc: &GmcInMemory, seen: &GmcNumberSet) {
    let orphans: Vec<GmcNumber> = gmc
        .connections
        .iter()
        .map(|(number, _)| number)
        .filter(|number| !seen.contains(number))
        .collect();
    context.tracker.record.counts.connection_orphans = orphans.len() as u64;
    if !orphans.is_empty() {
        let examples: Vec<&str> = orphans.iter().take(5).map(|n| n.as_str()).collect();
        warn!(
            doctors = orphans.len(),
            examples = ?examples,
            "Connection data for doctors in neither TCS nor GMC: no document made for them."
        );
    }
}
