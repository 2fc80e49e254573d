//! The throughput benchmark (issue 5): the same merged documents written four
//! ways on the same OpenSearch node in one run, so that the figures compare
//! like with like.
//!
//! - A, the ceiling ([`ceiling`]): raw `_bulk` of pre-serialized NDJSON by a
//!   minimal loader, the best of a small sweep of batch sizes and concurrency.
//! - B, the old path ([`upsert`]): one `_update` with `doc_as_upsert` per
//!   document, sequential, time-boxed and extrapolated.
//! - C, the rebuilder ([`full_run`]): `rebuilder run` end to end as a child
//!   process, with the TCS simulator publishing and the GMC data in MongoDB,
//!   watched by the alias [`probe`] and the [`process`] samplers.
//! - D, server-side `_reindex` ([`reindex`]), for reference.
//! - `S_tcs` and `S_gmc`, the TCS stream alone and the GMC reads alone
//!   ([`stages`]), which with A and D give the machine's bound `L` for the
//!   run and the pipeline efficiency `E = L / C`.
//! - With `--latency-ms`, B and C again through latency proxies
//!   ([`network`]); with `--queues`, C again with every source over the
//!   queues ([`queues`]); both are [`rerun`]s of C.
//!
//! - The nightly flood ([`flood`], binary `rebuilder-flood`): the live
//!   applier under a whole-population change burst, alone and with a
//!   rebuild running through it.
//!
//! Everything lives under the names of [`isolation`], so a benchmark never
//! touches the demo's or the tests' indices, queues or database.
//!
//! The binary `rebuilder-bench` parses its flags ([`cli`]) and hands them to
//! [`benchmark`], which runs the parts in order ([`parts`]: each measures
//! one path into the report, printing as it goes), with the GMC data
//! seeded by [`seeding`], the machine described by [`machine`] and what
//! else used it noted by [`disturbance`]. [`report`] holds the figures, the
//! targets, the text summary and the JSON that `scripts/bench-chart.py`
//! draws; [`logging`] is shared by the binaries.

pub mod benchmark;
pub mod ceiling;
pub mod cli;
pub mod corpus;
pub mod disturbance;
pub mod flood;
pub mod full_run;
pub mod indices;
pub mod isolation;
pub mod logging;
pub mod machine;
pub mod network;
pub mod parts;
pub mod probe;
pub mod process;
pub mod queues;
pub mod raw;
pub mod reindex;
pub mod report;
pub mod rerun;
pub mod seeding;
pub mod stages;
pub mod upsert;

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A point of a time series: seconds since the measurement started, value.
pub type Point = (f64, f64);

/// Calls `sample` every `every` until `stop` turns true, and returns the
/// points, timed from `origin`. One last sample is taken when stopping, so a
/// series always ends at the moment the measurement ended.
pub async fn sample_until<F, Fut>(
    origin: Instant,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut sample: F,
) -> Vec<Point>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<f64>>,
{
    let mut points = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Some(v) = sample().await {
                    points.push((origin.elapsed().as_secs_f64(), v));
                }
                if *stop.borrow() {
                    break;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    if let Some(v) = sample().await {
                        points.push((origin.elapsed().as_secs_f64(), v));
                    }
                    break;
                }
            }
        }
    }
    points
}

/// Rounds to three decimals, for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
