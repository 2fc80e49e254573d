//! Step 3b: the doctors of `doctorsForDB` that TCS did not send, written
//! after `syncEnd` (only then is the set of TCS doctors known). The reader
//! task of [`GmcSource::pages`] fetches ahead while this one sends.

use anyhow::{anyhow, Context};
use tracing::warn;

use super::settle::Ticket;
use super::tcs_merge::now_for_documents;
use super::RunContext;
use crate::domain::merge;
use crate::rebuild::record::RunPhase;
use crate::search::{BulkItem, BulkSender};
use crate::sources::gmc::{reject_key, GmcNumberSet, GmcSource, OutcomeMap};

pub(super) async fn write(
    context: &mut RunContext<'_>,
    gmc: &GmcSource,
    outcomes: &OutcomeMap,
    sender: &BulkSender<Ticket>,
    seen: &mut GmcNumberSet,
) -> anyhow::Result<()> {
    context.tracker.begin(RunPhase::GmcOnly).await;
    let total = gmc.estimated_doctors().await.ok();
    let mut progress = context.progress.phase(RunPhase::GmcOnly, "doctors", total);
    let mut pages = gmc.pages();
    while let Some(page) = pages
        .next_page()
        .await
        .context("while reading doctorsForDB")?
    {
        progress.inc(page.rows.len() as u64);
        let updated_at = now_for_documents();
        for row in page.rows {
            let (number, doctor) = match row {
                Ok(pair) => pair,
                Err(e) => {
                    context.tracker.record.reject(reject_key(&e));
                    continue;
                }
            };
            context.tracker.record.counts.gmc_doctors += 1;
            if !seen.add(&number) {
                continue;
            }
            context.tracker.record.counts.merged_gmc_only += 1;
            let doc = merge(
                &number,
                None,
                Some(&doctor),
                outcomes.get(&number).copied(),
                &updated_at,
            );
            let item = BulkItem {
                source: serde_json::to_vec(&doc)?,
                id: number.into_string(),
                version: None,
                ticket: Ticket::Gmc,
            };
            sender
                .send(item)
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("while writing GMC-only doctors")?;
        }
        context.tracker.checkpoint().await;
        context.check_continue()?;
    }
    if pages.resumes() > 0 {
        warn!(
            resumes = pages.resumes(),
            "The doctorsForDB cursor was reopened after writer stalls."
        );
    }
    progress.finish();
    Ok(())
}
