//! The benchmark's own indices: creating them from the master template (with
//! the build settings the rebuilder loads with, or the serving settings the
//! old service wrote into), counting, refreshing, indexing totals, and
//! deleting every index under the benchmark's prefix.

use std::collections::BTreeMap;

use opensearch::http::Method;
use serde_json::{json, Value};

use rebuilder::search::{IndexTemplate, SearchClient, SearchError};

/// The settings an index is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexSettings {
    /// As a generation loads: no refresh, no replicas, async translog.
    Build,
    /// As a generation serves (and as the old single index was written).
    Serving,
}

/// Creates `name` from the master template with `settings`.
pub async fn create(
    client: &SearchClient,
    template: &IndexTemplate,
    name: &str,
    settings: IndexSettings,
) -> Result<(), SearchError> {
    let meta = json!({"created_by": "rebuilder-bench"});
    let body = match settings {
        IndexSettings::Build => template.create_body(meta),
        IndexSettings::Serving => {
            let mut mappings = template.mappings.clone();
            if let Value::Object(m) = &mut mappings {
                m.insert("_meta".into(), meta);
            }
            json!({"settings": template.settings, "mappings": mappings})
        }
    };
    client
        .json(Method::Put, &format!("/{name}"), &[], Some(&body))
        .await?;
    Ok(())
}

/// Deletes one index; a missing one is not an error.
pub async fn delete(client: &SearchClient, name: &str) -> Result<(), SearchError> {
    let (status, body) = client
        .request(Method::Delete, &format!("/{name}"), &[], None)
        .await?;
    if (200..300).contains(&status) || status == 404 {
        Ok(())
    } else {
        Err(SearchError::Status {
            method: "DELETE".into(),
            path: format!("/{name}"),
            status,
            body: body.to_string(),
        })
    }
}

/// The names of the indices matching `pattern` (open or closed), sorted.
pub async fn list(client: &SearchClient, pattern: &str) -> Result<Vec<String>, SearchError> {
    let rows = client
        .json(
            Method::Get,
            &format!("/_cat/indices/{pattern}"),
            &[
                ("format", "json"),
                ("h", "index"),
                ("expand_wildcards", "all"),
            ],
            None,
        )
        .await?;
    let mut names: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["index"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes every index whose name starts with `prefix`, one by one by name
/// (works where wildcard deletes are forbidden). Returns how many went.
pub async fn delete_prefixed(client: &SearchClient, prefix: &str) -> Result<usize, SearchError> {
    if prefix.is_empty() {
        return Err(SearchError::Invalid(
            "refusing to delete indices without a prefix".into(),
        ));
    }
    let names = list(client, &format!("{prefix}*")).await?;
    for name in &names {
        delete(client, name).await?;
    }
    Ok(names.len())
}

pub async fn refresh(client: &SearchClient, target: &str) -> Result<(), SearchError> {
    client
        .json(Method::Post, &format!("/{target}/_refresh"), &[], None)
        .await?;
    Ok(())
}

/// Searchable documents in an index or alias.
pub async fn count(client: &SearchClient, target: &str) -> Result<u64, SearchError> {
    let v = client
        .json(Method::Get, &format!("/{target}/_count"), &[], None)
        .await?;
    v["count"]
        .as_u64()
        .ok_or_else(|| SearchError::Invalid(format!("no count in the answer for {target}")))
}

/// Index operations done on the primaries of each index matching `pattern`
/// (counts writes before any refresh makes them searchable).
pub async fn index_totals(
    client: &SearchClient,
    pattern: &str,
) -> Result<BTreeMap<String, u64>, SearchError> {
    let v = client
        .json(
            Method::Get,
            &format!("/{pattern}/_stats/indexing"),
            &[
                ("level", "indices"),
                ("filter_path", "indices.*.primaries.indexing.index_total"),
            ],
            None,
        )
        .await?;
    Ok(parse_index_totals(&v))
}

fn parse_index_totals(v: &Value) -> BTreeMap<String, u64> {
    v["indices"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, stats)| {
            let total = stats["primaries"]["indexing"]["index_total"]
                .as_u64()
                .unwrap_or(0);
            (name.clone(), total)
        })
        .collect()
}

/// Indexing and query operations per index (primaries), for telling the
/// benchmark's own load from anyone else's on the same node.
pub async fn activity(client: &SearchClient) -> Result<BTreeMap<String, (u64, u64)>, SearchError> {
    let v = client
        .json(
            Method::Get,
            "/_stats/indexing,search",
            &[
                ("level", "indices"),
                (
                    "filter_path",
                    "indices.*.primaries.indexing.index_total,indices.*.primaries.search.query_total",
                ),
            ],
            None,
        )
        .await?;
    Ok(parse_activity(&v))
}

fn parse_activity(v: &Value) -> BTreeMap<String, (u64, u64)> {
    v["indices"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, stats)| {
            let p = &stats["primaries"];
            (
                name.clone(),
                (
                    p["indexing"]["index_total"].as_u64().unwrap_or(0),
                    p["search"]["query_total"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// Documents indexed and queries run between two [`activity`] snapshots on
/// indices whose name does not start with `prefix` (system indices aside).
pub fn foreign_activity(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    prefix: &str,
) -> (u64, u64) {
    after
        .iter()
        .filter(|(name, _)| !name.starts_with(prefix) && !name.starts_with('.'))
        .fold((0, 0), |(docs, queries), (name, (i, q))| {
            let (i0, q0) = before.get(name).copied().unwrap_or((0, 0));
            (docs + i.saturating_sub(i0), queries + q.saturating_sub(q0))
        })
}

/// The indices an alias points to (empty when the alias does not exist).
pub async fn alias_targets(client: &SearchClient, alias: &str) -> Result<Vec<String>, SearchError> {
    let (status, v) = client
        .request(Method::Get, &format!("/_alias/{alias}"), &[], None)
        .await?;
    if status == 404 {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_totals_are_read_per_index_from_filtered_stats() {
        let v = json!({"indices": {
            "bench_a": {"primaries": {"indexing": {"index_total": 12}}},
            "bench_b": {"primaries": {"indexing": {"index_total": 0}}}
        }});
        let totals = parse_index_totals(&v);
        assert_eq!(totals["bench_a"], 12);
        assert_eq!(totals["bench_b"], 0);
        assert!(parse_index_totals(&json!({})).is_empty());
    }

    #[test]
    fn foreign_activity_counts_only_other_indices() {
        let before = parse_activity(&json!({"indices": {
            "bench_x": {"primaries": {"indexing": {"index_total": 5}, "search": {"query_total": 1}}},
            "t1_master": {"primaries": {"indexing": {"index_total": 10}, "search": {"query_total": 2}}}
        }}));
        let after = parse_activity(&json!({"indices": {
            "bench_x": {"primaries": {"indexing": {"index_total": 500}, "search": {"query_total": 90}}},
            "t1_master": {"primaries": {"indexing": {"index_total": 40}, "search": {"query_total": 3}}},
            "t2_new": {"primaries": {"indexing": {"index_total": 7}, "search": {"query_total": 0}}},
            ".tasks": {"primaries": {"indexing": {"index_total": 9}, "search": {"query_total": 0}}}
        }}));
        assert_eq!(foreign_activity(&before, &after, "bench_"), (37, 1));
    }
}
