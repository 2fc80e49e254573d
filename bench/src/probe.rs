//! The reader's probe: while C runs, it queries the `current_connections`
//! alias every 50 ms, as the Connections page does (a page of 20 sorted by
//! last name, with the total), and records each query's latency, the index
//! that answered and any error. An error is a failed request, a status other
//! than 200, a shard failure, or an empty answer while the alias held
//! documents before the run began (readers must never see an empty page).

use std::time::{Duration, Instant};

use opensearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::round3;
use rebuilder::search::SearchClient;

use crate::raw::raw_client;

/// Each query's own deadline; a slower answer counts as an error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One query of the probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeSample {
    /// Seconds since the measured run started.
    pub t: f64,
    pub latency_ms: f64,
    pub ok: bool,
    /// `hits.total.value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The index of the first hit: shows when the alias moved. Kept only
    /// where it changed from the previous answer (see [`thin_indices`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The probe's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeSummary {
    pub alias: String,
    pub interval_ms: u64,
    pub queries: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// When the answers first came from another index than at the start.
    pub swap_at_secs: Option<f64>,
    /// The indices that answered, in order of first appearance.
    pub indices_seen: Vec<String>,
    /// The first few errors, verbatim.
    pub first_errors: Vec<String>,
}

/// The Connections page's query.
pub fn page_query() -> Value {
    json!({
        "size": 20,
        "track_total_hits": true,
        "_source": ["gmcReferenceNumber", "doctorLastName", "designatedBody"],
        "sort": [{"doctorLastName": "asc"}, {"gmcReferenceNumber.keyword": "asc"}],
        "query": {"match_all": {}}
    })
}

/// Queries `alias` every `interval` until `stop` turns true. `expect_docs`:
/// the alias held documents when the run began, so an empty answer is an error.
pub async fn run(
    client: SearchClient,
    alias: String,
    interval: Duration,
    origin: Instant,
    expect_docs: bool,
    mut stop: watch::Receiver<bool>,
) -> Vec<ProbeSample> {
    let raw = match raw_client(&client) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::error!(error = %e, "The probe cannot build its transport.");
            return Vec::new();
        }
    };
    let body = Into::<bytes::Bytes>::into(serde_json::to_vec(&page_query()).expect("JSON"));
    let path = format!("/{alias}/_search");
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let t = origin.elapsed().as_secs_f64();
        let sent = Instant::now();
        let answer = raw
            .send(
                Method::Post,
                &path,
                headers.clone(),
                None::<&()>,
                Some(body.clone()),
                Some(QUERY_TIMEOUT),
            )
            .await;
        let outcome = match answer {
            Err(e) => Err(format!("request failed: {e}")),
            Ok(response) => {
                let status = response.status_code().as_u16();
                match response.text().await {
                    Err(e) => Err(format!("answer unreadable: {e}")),
                    Ok(text) => judge(status, &text, expect_docs),
                }
            }
        };
        let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
        samples.push(match outcome {
            Ok((total, index)) => ProbeSample {
                t: round3(t),
                latency_ms: round3(latency_ms),
                ok: true,
                total: Some(total),
                index,
                error: None,
            },
            Err(error) => ProbeSample {
                t: round3(t),
                latency_ms: round3(latency_ms),
                ok: false,
                total: None,
                index: None,
                error: Some(error),
            },
        });
    }
    samples
}

/// Drops each sample's index where it equals the previous answer's, once
/// [`summarize`] has used them: the report keeps the changes only.
pub fn thin_indices(samples: &mut [ProbeSample]) {
    let mut last: Option<String> = None;
    for s in samples {
        if let Some(index) = s.index.take() {
            if last.as_ref() != Some(&index) {
                last = Some(index.clone());
                s.index = Some(index);
            }
        }
    }
}

/// Total hits and the first hit's index, or why the answer is an error.
fn judge(status: u16, text: &str, expect_docs: bool) -> Result<(u64, Option<String>), String> {
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            rebuilder::text::clip(text, 300).into_owned()
        ));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let failed = v["_shards"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        return Err(format!(
            "{failed} shard(s) failed: {}",
            v["_shards"]["failures"]
        ));
    }
    let total = v["hits"]["total"]["value"]
        .as_u64()
        .ok_or_else(|| "no hits.total in the answer".to_string())?;
    if total == 0 && expect_docs {
        return Err("empty answer while the previous generation had documents".into());
    }
    let index = v["hits"]["hits"][0]["_index"].as_str().map(str::to_string);
    Ok((total, index))
}

/// Percentiles, errors and the swap moment of a probe's samples.
pub fn summarize(alias: &str, interval: Duration, samples: &[ProbeSample]) -> ProbeSummary {
    let mut latencies: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut indices_seen: Vec<String> = Vec::new();
    let mut swap_at_secs = None;
    for s in samples {
        if let Some(index) = &s.index {
            if !indices_seen.contains(index) {
                if !indices_seen.is_empty() && swap_at_secs.is_none() {
                    swap_at_secs = Some(s.t);
                }
                indices_seen.push(index.clone());
            }
        }
    }
    ProbeSummary {
        alias: alias.to_string(),
        interval_ms: interval.as_millis() as u64,
        queries: samples.len() as u64,
        errors: samples.iter().filter(|s| !s.ok).count() as u64,
        p50_ms: round3(percentile(&latencies, 0.50)),
        p99_ms: round3(percentile(&latencies, 0.99)),
        max_ms: round3(latencies.last().copied().unwrap_or(0.0)),
        swap_at_secs,
        indices_seen,
        first_errors: samples
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("t={:.2}s: {e}", s.t)))
            .take(5)
            .collect(),
    }
}

/// Nearest-rank percentile of sorted values (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, ms: f64, index: Option<&str>, ok: bool) -> ProbeSample {
        ProbeSample {
            t,
            latency_ms: ms,
            ok,
            total: ok.then_some(5),
            index: index.map(str::to_string),
            error: (!ok).then(|| "boom".to_string()),
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_swap_is_the_first_answer_from_another_index() {
        let samples = [
            sample(0.0, 3.0, Some("old"), true),
            sample(0.05, 4.0, None, false),
            sample(0.1, 9.0, Some("old"), true),
            sample(0.15, 2.0, Some("new"), true),
        ];
        let s = summarize("current_connections", Duration::from_millis(50), &samples);
        assert_eq!(s.swap_at_secs, Some(0.15));
        assert_eq!(s.indices_seen, ["old", "new"]);
        assert_eq!((s.queries, s.errors, s.max_ms), (4, 1, 9.0));
        assert_eq!(s.first_errors, ["t=0.05s: boom"]);
        let mut thinned = samples.to_vec();
        thin_indices(&mut thinned);
        let kept: Vec<Option<&str>> = thinned.iter().map(|s| s.index.as_deref()).collect();
        assert_eq!(kept, [Some("old"), None, None, Some("new")]);
    }

    #[test]
    fn an_empty_page_is_an_error_only_when_documents_were_expected() {
        let empty = r#"{"_shards":{"failed":0},"hits":{"total":{"value":0},"hits":[]}}"#;
        assert!(judge(200, empty, true).is_err());
        assert_eq!(judge(200, empty, false).unwrap(), (0, None));
        let full =
            r#"{"_shards":{"failed":0},"hits":{"total":{"value":3},"hits":[{"_index":"g1"}]}}"#;
        assert_eq!(judge(200, full, true).unwrap(), (3, Some("g1".into())));
        assert!(judge(404, "{}", false).is_err());
    }
}
