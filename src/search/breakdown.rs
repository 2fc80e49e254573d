//! One master generation's documents broken down by designated body (GMC's
//! `designatedBody` and TCS's `tcsDesignatedBody`) and by alias, in one
//! `_search` of aggregations: what the drift gate compares before a
//! promotion and what the operators' page shows side by side.

use std::collections::BTreeMap;

use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::aliases::AliasSpec;
use super::{Family, SearchClient, SearchError};

/// The bucket of documents without a designated body.
pub const NO_BODY: &str = "(none)";

/// More distinct bodies than this are not expected (there are 13); the
/// rest would be counted in `other_bodies`.
const MAX_BODIES: usize = 1000;

/// Document counts of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Breakdown {
    pub index: String,
    pub total: u64,
    /// By GMC's `designatedBody` (`(none)` for doctors GMC does not hold).
    pub by_designated_body: BTreeMap<String, u64>,
    /// By TCS's `tcsDesignatedBody` (`(none)` for doctors TCS did not send).
    pub by_tcs_designated_body: BTreeMap<String, u64>,
    /// By logical alias name: what each alias would serve from this generation.
    pub by_alias: BTreeMap<String, u64>,
    /// Documents in bodies beyond the first 1,000 (expected 0).
    pub other_bodies: u64,
}

/// Counts `index` by body and by each master alias of `specs` (its filter
/// applied), in one request.
pub async fn breakdown(
    client: &SearchClient,
    index: &str,
    specs: &[AliasSpec],
) -> Result<Breakdown, SearchError> {
    let mut filters = Map::new();
    for spec in specs.iter().filter(|s| s.family == Family::Master) {
        let filter = spec
            .filter()
            .cloned()
            .unwrap_or_else(|| json!({"match_all": {}}));
        filters.insert(spec.logical.clone(), filter);
    }
    let mut aggs = json!({
        "gmc": {"terms": {"field": "designatedBody.keyword", "size": MAX_BODIES, "missing": NO_BODY}},
        "tcs": {"terms": {"field": "tcsDesignatedBody.keyword", "size": MAX_BODIES, "missing": NO_BODY}},
    });
    if !filters.is_empty() {
        aggs["aliases"] = json!({"filters": {"filters": filters}});
    }
    let body = json!({"size": 0, "track_total_hits": true, "aggs": aggs});
    let path = format!("/{index}/_search");
    let answer = client.json(Method::Post, &path, &[], Some(&body)).await?;
    decode(index, &answer).ok_or_else(|| SearchError::Decode {
        path,
        message: "the aggregation answer lacks hits.total or its buckets".into(),
    })
}

fn decode(index: &str, answer: &Value) -> Option<Breakdown> {
    let total = answer["hits"]["total"]["value"].as_u64()?;
    let terms = |name: &str| -> Option<(BTreeMap<String, u64>, u64)> {
        let agg = &answer["aggregations"][name];
        let mut out = BTreeMap::new();
        for bucket in agg["buckets"].as_array()? {
            let key = match &bucket["key"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(key, bucket["doc_count"].as_u64()?);
        }
        Some((out, agg["sum_other_doc_count"].as_u64().unwrap_or(0)))
    };
    let (by_designated_body, other_gmc) = terms("gmc")?;
    let (by_tcs_designated_body, other_tcs) = terms("tcs")?;
    let mut by_alias = BTreeMap::new();
    if let Some(buckets) = answer["aggregations"]["aliases"]["buckets"].as_object() {
        for (alias, bucket) in buckets {
            by_alias.insert(alias.clone(), bucket["doc_count"].as_u64()?);
        }
    }
    Some(Breakdown {
        index: index.to_string(),
        total,
        by_designated_body,
        by_tcs_designated_body,
        by_alias,
        other_bodies: other_gmc.max(other_tcs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_buckets_of_both_fields_and_the_aliases() {
        let answer = json!({
            "hits": {"total": {"value": 5, "relation": "eq"}},
            "aggregations": {
                "gmc": {"sum_other_doc_count": 0, "buckets": [
                    {"key": "1-AIIDR8", "doc_count": 3}, {"key": "(none)", "doc_count": 2}]},
                "tcs": {"sum_other_doc_count": 0, "buckets": [{"key": "1-AIIDR8", "doc_count": 5}]},
                "aliases": {"buckets": {"discrepancies": {"doc_count": 2}}}
            }
        });
        let b = decode("g", &answer).unwrap();
        assert_eq!(b.total, 5);
        assert_eq!(b.by_designated_body["1-AIIDR8"], 3);
        assert_eq!(b.by_designated_body[NO_BODY], 2);
        assert_eq!(b.by_tcs_designated_body["1-AIIDR8"], 5);
        assert_eq!(b.by_alias["discrepancies"], 2);
    }

    #[test]
    fn an_answer_without_totals_is_refused() {
        assert!(decode("g", &json!({"aggregations": {}})).is_none());
    }
}
