//! D, server-side `_reindex` ([`crate::reindex`]) of A's best index into a
//! fresh one with the build settings, with the CPU it used (a term of the
//! bound `L`).

use std::time::Duration;

use rebuilder::search::{IndexTemplate, SearchClient};

use crate::indices::{self, IndexSettings};
use crate::process::{CpuSnapshot, CpuUsage};
use crate::reindex;
use crate::report::Report;

/// Measures D into `report`, copying `source` (which holds `documents`).
pub async fn measure(
    search: &SearchClient,
    template: &IndexTemplate,
    source: &str,
    prefix: &str,
    documents: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dest = format!("{prefix}reindex-dest");
    indices::create(search, template, &dest, IndexSettings::Build).await?;
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
