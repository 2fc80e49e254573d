//! Measures the bulk writer: documents per second for N generated master
//! documents written into a fresh generation (build settings) of the local
//! node, for one or several batch sizes and concurrencies.
//!
//! ```text
//! cargo run --release -p rebuilder-bench --bin bulk-throughput -- --docs 200000
//! cargo run --release -p rebuilder-bench --bin bulk-throughput -- --docs 200000 \
//!     --batch-docs 500,1000,2000,5000 --concurrency 2,4,8 --repeat 2
//! ```
//!
//! The documents are generated and serialized before the clock starts; the
//! timed window runs from the first `send` to the writer's final stats, so it
//! measures the writer and the node, not the generator. Each run checks that
//! the generation then holds exactly N documents, and deletes it.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use rebuilder::config::Settings;
use rebuilder::rebuild::engine::Engine;
use rebuilder::search::{generations, BulkItem, Family};
use rebuilder_dev::datagen::DatasetSpec;

#[derive(Debug, Parser)]
struct Args {
    /// Generated documents per run.
    #[arg(long, default_value_t = 200_000)]
    docs: usize,
    /// Data set seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Documents per batch (comma-separated for a sweep); default: the settings' value.
    #[arg(long, value_delimiter = ',')]
    batch_docs: Vec<usize>,
    /// Requests in flight (comma-separated for a sweep); default: the settings' value.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Bytes per batch; default: the settings' value.
    #[arg(long)]
    batch_bytes: Option<usize>,
    /// Runs per combination.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// OpenSearch URL; default: the settings' value.
    #[arg(long)]
    url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::load(None).context("while loading settings")?;
    if let Some(url) = &args.url {
        settings.opensearch.url = url.clone();
    }
    settings.names.prefix = format!("bench{}_", std::process::id());
    if let Some(bytes) = args.batch_bytes {
        settings.bulk.max_batch_bytes = bytes;
    }
    let batch_list = if args.batch_docs.is_empty() {
        vec![settings.bulk.max_batch_docs]
    } else {
        args.batch_docs.clone()
    };
    let concurrency_list = if args.concurrency.is_empty() {
        vec![settings.bulk.concurrency]
    } else {
        args.concurrency.clone()
    };

    eprintln!("Generating {} documents (seed {})...", args.docs, args.seed);
    let started = Instant::now();
    let docs: Vec<(String, Vec<u8>)> = DatasetSpec::new(args.seed, args.docs)
        .doctors()
        .map(|d| {
            let source = serde_json::to_vec(&d.expected).expect("a document serializes");
            (d.gmc_number, source)
        })
        .collect();
    let total_bytes: usize = docs.iter().map(|(_, s)| s.len()).sum();
    eprintln!(
        "Generated in {:.1} s, {:.1} MB of JSON ({} bytes per document).",
        started.elapsed().as_secs_f64(),
        total_bytes as f64 / 1e6,
        total_bytes / docs.len().max(1)
    );

    println!(
        "{:>10} {:>11} {:>12} {:>8} {:>11} {:>9} {:>9} {:>9}",
        "batch", "concurrency", "batch_bytes", "seconds", "docs/s", "requests", "MB sent", "429s"
    );
    for &batch in &batch_list {
        for &concurrency in &concurrency_list {
            for _ in 0..args.repeat {
                let mut s = settings.clone();
                s.bulk.max_batch_docs = batch;
                s.bulk.concurrency = concurrency;
                s.validate()?;
                let engine = Engine::new(&s)
                    .await
                    .context("while connecting to OpenSearch")?;
                let generation = engine.create_generation(Family::Master, "bench").await?;
                let items: Vec<BulkItem<()>> = docs
                    .iter()
                    .map(|(id, source)| BulkItem {
                        id: id.clone(),
                        source: source.clone().into(),
                        version: None,
                        ticket: (),
                    })
                    .collect();
                let (sender, outcomes, writer) = engine.bulk_writer::<()>(&generation);
                // Only the stats matter here: dropping the outcomes is allowed.
                drop(outcomes);
                let clock = Instant::now();
                for item in items {
                    sender
                        .send(item)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                drop(sender);
                let stats = writer.await?;
                let seconds = clock.elapsed().as_secs_f64();
                engine.finish_load(&generation).await?;
                let stored = generations::count(engine.client(), &generation.name).await?;
                generations::delete(engine.client(), &generation.name).await?;
                if stored != args.docs as u64 || stats.failed > 0 {
                    bail!(
                        "{} holds {stored} documents of {}; {} failed: {:?}",
                        generation.name,
                        args.docs,
                        stats.failed,
                        stats.failed_by_reason
                    );
                }
                println!(
                    "{:>10} {:>11} {:>12} {:>8.2} {:>11.0} {:>9} {:>9.1} {:>9}",
                    batch,
                    concurrency,
                    s.bulk.max_batch_bytes,
                    seconds,
                    args.docs as f64 / seconds,
                    stats.requests,
                    stats.bytes as f64 / 1e6,
                    stats.throttled_429
                );
            }
        }
    }
    Ok(())
}
