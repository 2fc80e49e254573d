//! B, the old path: one `POST /<index>/_update/<id>` with `doc_as_upsert`
//! per document, one after the other, as the old integration service wrote
//! (into an index with serving settings: refresh every second, a translog
//! fsync per request). It is time-boxed and extrapolated to the whole data
//! set; the result says so and carries its sample size.
//!
//! The old service actually made about two such requests per doctor (a TCS
//! pass, then a GMC pass); one per merged document flatters it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use opensearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use opensearch::http::Method;
use serde::Serialize;

use super::corpus::Corpus;
use super::round3;
use rebuilder::search::SearchClient;

use crate::raw::raw_client;

#[derive(Clone, Debug, Serialize)]
pub struct OldPathResult {
    pub index: String,
    /// Documents upserted within the time box (the sample).
    pub sample_docs: u64,
    pub sample_secs: f64,
    pub docs_per_sec: f64,
    pub time_box_secs: f64,
    /// Whether the time box ended the run before every document was written.
    pub time_boxed: bool,
    /// How long every document of the data set would take at this rate.
    pub extrapolated_secs_for_all: f64,
    pub all_docs: u64,
    pub mean_request_ms: f64,
}

/// The body of one upsert: `{"doc": <source>, "doc_as_upsert": true}`.
pub fn upsert_body(source: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(source.len() + 32);
    body.put_slice(b"{\"doc\":");
    body.put_slice(source);
    body.put_slice(b",\"doc_as_upsert\":true}");
    body.freeze()
}

/// Upserts documents of `corpus` into `index` (which must exist), one
/// request at a time, until every document is written or `time_box` ends.
pub async fn run(
    client: &SearchClient,
    index: &str,
    corpus: &Corpus,
    time_box: Duration,
) -> anyhow::Result<OldPathResult> {
    let raw = raw_client(client)?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let started = Instant::now();
    let mut written = 0u64;
    for i in 0..corpus.len() {
        if started.elapsed() >= time_box {
            break;
        }
        let (id, source) = corpus.document(i);
        let path = format!("/{index}/_update/{id}");
        let response = raw
            .send(
                Method::Post,
                &path,
                headers.clone(),
                None::<&()>,
                Some(upsert_body(&source)),
                None,
            )
            .await
            .with_context(|| format!("while sending POST {path}"))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            bail!(
                "POST {path} answered {status}: {}",
                rebuilder::text::clip(&text, 500).into_owned()
            );
        }
        written += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = written as f64 / secs.max(1e-9);
    let all = corpus.len() as u64;
    Ok(OldPathResult {
        index: index.to_string(),
        sample_docs: written,
        sample_secs: round3(secs),
        docs_per_sec: round3(rate),
        time_box_secs: time_box.as_secs_f64(),
        time_boxed: written < all,
        extrapolated_secs_for_all: round3(all as f64 / rate.max(1e-9)),
        all_docs: all,
        mean_request_ms: round3(secs * 1000.0 / (written.max(1) as f64)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_body_wraps_the_source_as_the_doc() {
        let body = upsert_body(br#"{"gmcReferenceNumber":"1000001"}"#);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["doc"]["gmcReferenceNumber"], "1000001");
        assert_eq!(v["doc_as_upsert"], true);
    }
}
