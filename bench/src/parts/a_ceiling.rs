//! A, the ceiling: the sweep of raw `_bulk` loads ([`crate::ceiling`]) on
//! fresh indices, with what OpenSearch did for others meanwhile; the best
//! full load stays behind as D's source.

use super::OnTheNode;
use crate::cli::Part;
use crate::report::Report;
use crate::{ceiling, disturbance, indices};

/// Measures A into `report` (its figures only when A is not skipped: D
/// needs the load either way) and returns the index of the best full load,
/// which the caller deletes.
pub async fn measure(node: &OnTheNode<'_>, report: &mut Report) -> anyhow::Result<String> {
    let OnTheNode {
        args,
        search,
        template,
        corpus,
        prefix,
    } = *node;
    let plan = args.sweep_plan();
    println!(
        "A: raw _bulk sweep over batch sizes {:?} x concurrency {:?} ({} docs per point, fresh index each):",
        plan.batch_sizes,
        plan.concurrencies,
        plan.sweep_docs.min(corpus.len())
    );
    let activity = indices::activity(search).await?;
    let outcome = ceiling::sweep(search, template, corpus, &plan, prefix).await?;
    disturbance::note_foreign(search, prefix, &activity, "A", report).await;
    report.a_cpu = outcome.best.cpu.clone();
    let source_index = outcome.best.index.clone();
    if outcome.best.docs != corpus.len() as u64 {
        report.warnings.push(format!(
            "FAILED: A acknowledged {} documents of {}",
            outcome.best.docs,
            corpus.len()
        ));
    }
    if args.runs(Part::A) {
        report.a_ceiling = Some(outcome);
    }
    Ok(source_index)
}
