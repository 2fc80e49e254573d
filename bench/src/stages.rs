//! The stage-alone baselines (issue 11), measured in the same run as C, on
//! the same data, each with the CPU it used:
//!
//! - `S_tcs`, the TCS sync alone: the simulator publishes the N records, a
//!   consumer takes and acks them (in the coalesced way the run does);
//!   nothing is written;
//! - `S_gmc`, the GMC reads alone: the latest-outcome aggregation and one
//!   full `_id`-ordered read of `doctorsForDB`, side by side as the run
//!   does them; nothing is written.
//!
//! With A and D they give the machine's bound for the run:
//! `L = max(A, S_tcs, S_gmc, (cpu(A) + cpu(S_tcs) + cpu(S_gmc) + cpu(D)) / cores)`
//! (no run is faster than its slowest stage, nor than the least CPU work
//! it needs spread over the cores), and the pipeline efficiency `E = L / C`.

use std::time::{Duration, Instant};

use anyhow::Context;
use rebuilder::config::Settings;
use rebuilder::sources::gmc::GmcSource;
use rebuilder::sources::tcs::{TcsEvent, TcsSync};
use serde::Serialize;

use crate::process::{CpuSnapshot, CpuUsage};
use crate::round3;

/// One stage measured alone.
#[derive(Clone, Debug, Serialize)]
pub struct StageFigures {
    pub name: String,
    pub secs: f64,
    /// Records the stage delivered (TCS messages, or doctors plus outcome groups).
    pub records: u64,
    pub cpu: CpuUsage,
}

impl StageFigures {
    /// CPU seconds of every process that worked for it.
    pub fn cpu_secs(&self) -> f64 {
        total_cpu(&self.cpu)
    }
}

/// CPU seconds of every role in a usage, foreign work excluded.
pub fn total_cpu(cpu: &CpuUsage) -> f64 {
    cpu.by_role
        .iter()
        .filter(|(role, _)| !role.starts_with("other"))
        .map(|(_, s)| s)
        .sum()
}

/// The TCS sync alone (a simulator must be listening for `syncStart`).
pub async fn tcs_alone(settings: &Settings) -> anyhow::Result<StageFigures> {
    let before = CpuSnapshot::take();
    let started = Instant::now();
    let mut sync = TcsSync::start(
        &settings.rabbitmq,
        rebuilder::retry::RetryPolicy::new(&settings.retry),
    )
    .await
    .context("while starting S_tcs's sync")?;
    let acks = sync.acks();
    let mut tags = Vec::new();
    let mut records = 0u64;
    loop {
        match sync
            .next_within(Duration::from_millis(500))
            .await
            .context("while receiving S_tcs's sync")?
        {
            Some(TcsEvent::Record { ticket, .. }) => {
                records += 1;
                tags.push(ticket.key());
                if tags.len() >= 1000 {
                    acks.settle(tags.drain(..)).await?;
                }
            }
            Some(TcsEvent::Rejected { .. }) => records += 1,
            Some(TcsEvent::End) => break,
            None => {
                acks.settle(tags.drain(..)).await?;
            }
        }
    }
    acks.settle(tags.drain(..)).await?;
    sync.close().await;
    let secs = started.elapsed().as_secs_f64();
    Ok(StageFigures {
        name: "S_tcs".into(),
        secs: round3(secs),
        records,
        cpu: CpuUsage::between(&before, &CpuSnapshot::take(), &[]),
    })
}

/// The GMC reads alone: the aggregation and one full read, side by side.
pub async fn gmc_alone(
    settings: &Settings,
    mongo: &mongodb::Client,
) -> anyhow::Result<StageFigures> {
    let before = CpuSnapshot::take();
    let started = Instant::now();
    let gmc = GmcSource::new(mongo, &settings.mongodb);
    let outcomes = async {
        gmc.latest_outcomes()
            .await
            .map(|(map, _)| map.len() as u64)
            .context("while aggregating the outcomes for S_gmc")
    };
    let expected = gmc.estimated_doctors().await.unwrap_or(0) as usize;
    let doctors = async {
        let read = gmc
            .read_doctors(expected, |_| {})
            .await
            .context("while reading doctorsForDB for S_gmc")?;
        anyhow::Ok(read.doctors.len() as u64)
    };
    let (outcomes, doctors) = tokio::try_join!(outcomes, doctors)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(StageFigures {
        name: "S_gmc".into(),
        secs: round3(secs),
        records: outcomes + doctors,
        cpu: CpuUsage::between(&before, &CpuSnapshot::take(), &[]),
    })
}

/// The machine's bound for the run, and which term sets it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bound {
    pub secs: f64,
    /// `A`, `S_tcs`, `S_gmc` or `cpu` (the least CPU work over the cores).
    pub term: String,
    pub terms: Vec<(String, f64)>,
}

/// `L` from the stages' seconds and CPU seconds.
pub fn bound(
    a: Option<(f64, f64)>,
    s_tcs: Option<(f64, f64)>,
    s_gmc: Option<(f64, f64)>,
    d_cpu: Option<f64>,
    cores: usize,
) -> Option<Bound> {
    let (a, s_tcs, s_gmc, d_cpu) = (a?, s_tcs?, s_gmc?, d_cpu?);
    let cpu = (a.1 + s_tcs.1 + s_gmc.1 + d_cpu) / cores.max(1) as f64;
    let terms = vec![
        ("A".to_string(), round3(a.0)),
        ("S_tcs".to_string(), round3(s_tcs.0)),
        ("S_gmc".to_string(), round3(s_gmc.0)),
        ("cpu".to_string(), round3(cpu)),
    ];
    let (term, secs) = terms
        .iter()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .cloned()
        .unwrap_or_default();
    Some(Bound { secs, term, terms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_slowest_stage_or_the_least_cpu_over_the_cores() {
        let l = bound(
            Some((3.4, 6.6)),
            Some((12.0, 20.0)),
            Some((31.0, 40.0)),
            Some(8.0),
            2,
        )
        .unwrap();
        assert_eq!(l.term, "cpu");
        assert_eq!(l.secs, 37.3);
        let l = bound(
            Some((3.4, 6.6)),
            Some((12.0, 2.0)),
            Some((31.0, 4.0)),
            Some(8.0),
            2,
        )
        .unwrap();
        assert_eq!((l.term.as_str(), l.secs), ("S_gmc", 31.0));
        assert!(bound(None, Some((1.0, 1.0)), Some((1.0, 1.0)), Some(1.0), 2).is_none());
    }
}
