//! D, server-side `_reindex` ([`crate::reindex`]) of A's best index into a
//! fresh one with the build settings, with the CPU it used (a term of the
//! bound `L`).

use std::time::Duration;

use super::OnTheNode;
use crate::indices::{self, IndexSettings};
use crate::process::{CpuSnapshot, CpuUsage};
use crate::reindex;
use crate::report::Report;

/// Measures D into `report`, copying `source` (which holds the corpus).
pub async fn measure(
    node: &OnTheNode<'_>,
    source: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (search, documents) = (node.search, node.corpus.len());
    let dest = format!("{}reindex-dest", node.prefix);
    indices::create(search, node.template, &dest, IndexSettings::Build).await?;
    let before = CpuSnapshot::take();
    let d = reindex::run(search, source, &dest, Duration::from_secs(3600)).await?;
    report.d_cpu = Some(CpuUsage::between(&before, &CpuSnapshot::take(), &[]));
    println!(
        "D: _reindex of {} documents: {:.0} docs/s ({:.1} s).",
        d.docs, d.docs_per_sec, d.took_secs
    );
    if d.docs != documents as u64 {
        report.warnings.push(format!(
            "FAILED: _reindex copied {} documents of {}",
            d.docs, documents
        ));
    }
    indices::delete(search, &dest).await?;
    report.d_reindex = Some(d);
    Ok(())
}
