//! B and C again on the slower network of `--latency-ms`: every client
//! reaches every server through the Toxiproxy proxies of
//! [`crate::network`], beside the loopback figures.

use rebuilder::search::{IndexTemplate, SearchClient};

use crate::cli::Args;
use crate::corpus::Corpus;
use crate::full_run::SimulatedService;
use crate::indices::{self, IndexSettings};
use crate::network::LatencyNetwork;
use crate::rerun::{Rerun, RerunFigures};
use crate::upsert::{self, OldPathResult};

/// B through the latency proxy, time-boxed like B.
pub async fn old_path_through(
    args: &Args,
    net: &LatencyNetwork,
    template: &IndexTemplate,
    corpus: &Corpus,
) -> anyhow::Result<OldPathResult> {
    let search = SearchClient::new(&net.settings.opensearch)?;
    let index = format!("{}oldpath-latency", net.settings.names.prefix);
    let time_box = args.old_path_time_box();
    indices::create(&search, template, &index, IndexSettings::Serving).await?;
    println!(
        "B on the {} ms network: one upsert per document through the proxy, time-boxed to {} s ...",
        net.latency_ms,
        time_box.as_secs()
    );
    let b = upsert::run(&search, &index, corpus, time_box).await;
    indices::delete(&search, &index).await?;
    let b = b?;
    println!(
        "B on the {} ms network: {} documents in {:.1} s = {:.1} docs/s ({:.2} ms each).",
        net.latency_ms, b.sample_docs, b.sample_secs, b.docs_per_sec, b.mean_request_ms
    );
    Ok(b)
}

/// C again, every process (the rebuilder and the simulator) reaching every
/// server through the latency proxies; the probe reads directly, as the
/// readers' view is not what is measured here.
pub async fn c_through(rerun: &Rerun<'_>, net: &LatencyNetwork) -> anyhow::Result<RerunFigures> {
    println!(
        "C on the {} ms network: measured run through the proxies ...",
        net.latency_ms
    );
    let figures = rerun
        .measure(
            &rerun.bin_with(net.child_env()),
            &[SimulatedService::Tcs],
            "c-latency-run",
            &format!("the run on the {} ms network", net.latency_ms),
        )
        .await?;
    println!(
        "{}.",
        figures.line(
            &format!("C on the {} ms network", net.latency_ms),
            "loopback's time"
        )
    );
    Ok(figures)
}
