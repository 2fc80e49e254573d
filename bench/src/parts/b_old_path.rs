//! B, the old path on loopback: one upsert per document, sequential,
//! time-boxed and extrapolated ([`crate::upsert`]), into an index with the
//! serving settings the old service wrote into.

use super::OnTheNode;
use crate::indices::{self, IndexSettings};
use crate::upsert::{self, OldPathResult};

/// Measures B on loopback.
pub async fn measure(node: &OnTheNode<'_>) -> anyhow::Result<OldPathResult> {
    let search = node.search;
    let index = format!("{}oldpath", node.prefix);
    let time_box = node.args.old_path_time_box();
    indices::create(search, node.template, &index, IndexSettings::Serving).await?;
    println!(
        "B: one upsert per document, sequential, time-boxed to {} s ...",
        time_box.as_secs()
    );
    let b = upsert::run(search, &index, node.corpus, time_box).await?;
    println!(
        "B: {} documents in {:.1} s = {:.1} docs/s; all {} would take {:.0} s (extrapolated).",
        b.sample_docs, b.sample_secs, b.docs_per_sec, b.all_docs, b.extrapolated_secs_for_all
    );
    indices::delete(search, &index).await?;
    Ok(b)
}
