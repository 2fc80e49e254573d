//! B, the old path on loopback: one upsert per document, sequential,
//! time-boxed and extrapolated ([`crate::upsert`]), into an index with the
//! serving settings the old service wrote into.

use rebuilder::search::{IndexTemplate, SearchClient};

use crate::cli::Args;
use crate::corpus::Corpus;
use crate::indices::{self, IndexSettings};
use crate::upsert::{self, OldPathResult};

/// Measures B on loopback.
pub async fn measure(
    args: &Args,
    search: &SearchClient,
    template: &IndexTemplate,
    corpus: &Corpus,
    prefix: &str,
) -> anyhow::Result<OldPathResult> {
    let index = format!("{prefix}oldpath");
    let time_box = args.old_path_time_box();
    indices::create(search, template, &index, IndexSettings::Serving).await?;
    println!(
        "B: one upsert per document, sequential, time-boxed to {} s ...",
        time_box.as_secs()
    );
    let b = upsert::run(search, &index, corpus, time_box).await?;
    println!(
        "B: {} documents in {:.1} s = {:.1} docs/s; all {} would take {:.0} s (extrapolated).",
        b.sample_docs, b.sample_secs, b.docs_per_sec, b.all_docs, b.extrapolated_secs_for_all
    );
    indices::delete(search, &index).await?;
    Ok(b)
}
