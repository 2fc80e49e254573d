//! Generations: the timestamped indices a rebuild creates, their names, the
//! record each keeps of what built it (`mappings._meta`), their build and
//! serving settings, and the listing of what exists.
//!
//! A generation is named `{prefix}{family}-YYYYMMDD-HHMMSS` (UTC), so names
//! sort by creation time. If that name is taken, creation steps forward to
//! the next free second; creation is a single `PUT`, so two creators can
//! never get the same name.
//!
//! `_meta.state` is the lifecycle marker: `building` from creation until
//! [`finish_load`] restores the serving settings, then `ready`.
//! `_meta.served_at` is set once a generation has held the aliases (at or
//! before the promotion or rollback that takes them away from it); rollback
//! and retention only count served generations as "previous" ones.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use opensearch::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::{debug, info};

use super::client::{SearchClient, SearchError};
use super::templates::{Family, IndexTemplate};
use crate::config::IndexNames;
use crate::text::clip;

/// Tries before creation gives up stepping forward to a free name.
const MAX_NAME_STEPS: i64 = 3600;
const NAME_TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// One generation: a concrete index of one family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Generation {
    pub family: Family,
    pub name: String,
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The lifecycle marker kept in `_meta.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// Created, loading with build settings. A building generation whose run
    /// is dead is an orphan.
    Building,
    /// Serving settings restored and refreshed: may be validated and promoted.
    Ready,
    /// An index with our name pattern but no state we wrote (made by hand or
    /// adopted); never deleted automatically.
    #[serde(other)]
    Unknown,
}

impl GenerationState {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationState::Building => "building",
            GenerationState::Ready => "ready",
            GenerationState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for GenerationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What built a generation, stored in the index mapping's `_meta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GenerationMeta {
    pub run_id: String,
    /// What each source delivered, as the run reports it (`null` until set).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub source_counts: Value,
    pub template_sha256: String,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created: String,
    #[serde(default = "unknown_state")]
    pub state: GenerationState,
    /// For a recommendation generation: the master generation it was reindexed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<String>,
    /// RFC 3339 time at which the generation was first known to hold the aliases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_at: Option<String>,
}

fn unknown_state() -> GenerationState {
    GenerationState::Unknown
}

impl GenerationMeta {
    /// Meta of a generation that is about to be created.
    pub fn building(run_id: &str, template: &IndexTemplate, built_from: Option<&str>) -> Self {
        Self {
            run_id: run_id.to_string(),
            source_counts: Value::Null,
            template_sha256: template.sha256.clone(),
            created: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            state: GenerationState::Building,
            built_from: built_from.map(str::to_string),
            served_at: None,
        }
    }

    /// Reads the meta from an index's `_meta` object; `None` when absent or foreign.
    pub fn from_value(meta: &Value) -> Option<Self> {
        serde_json::from_value(meta.clone()).ok()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// One generation as `rebuilder generations` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GenerationInfo {
    pub name: String,
    /// `masterdoctorindex` or `recommendationindex`.
    #[serde(serialize_with = "family_as_str")]
    #[schema(value_type = String)]
    pub family: Family,
    /// From `_meta.created`, else the index creation date (RFC 3339).
    pub created: String,
    pub docs: u64,
    pub size_bytes: u64,
    /// Real (prefixed) alias names this index holds, sorted.
    pub aliases: Vec<String>,
    /// `None` when the index has no meta we wrote.
    pub meta: Option<GenerationMeta>,
}

fn family_as_str<S: serde::Serializer>(family: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(family.as_str())
}

impl GenerationInfo {
    pub fn run_id(&self) -> Option<&str> {
        self.meta.as_ref().map(|m| m.run_id.as_str())
    }
    pub fn state(&self) -> GenerationState {
        self.meta
            .as_ref()
            .map_or(GenerationState::Unknown, |m| m.state)
    }
    pub fn holds_alias(&self) -> bool {
        !self.aliases.is_empty()
    }
    /// Served now or before: a candidate for rollback and a "previous" generation.
    pub fn was_served(&self) -> bool {
        self.holds_alias() || self.meta.as_ref().is_some_and(|m| m.served_at.is_some())
    }
    pub fn built_from(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.built_from.as_deref())
    }
    pub fn generation(&self) -> Generation {
        Generation {
            family: self.family,
            name: self.name.clone(),
        }
    }
}

/// The real name of a family: prefix and the configured family name.
pub fn family_name(names: &IndexNames, family: Family) -> String {
    match family {
        Family::Master => names.master_family(),
        Family::Recommendation => names.recommendation_family(),
    }
}

/// The name of the generation of `family` created at `at`.
pub fn generation_name(names: &IndexNames, family: Family, at: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        family_name(names, family),
        at.format(NAME_TIME_FORMAT)
    )
    .to_lowercase()
}

/// The timestamp of a generation name of `family`, or `None` when `index` is
/// not one (another family, another prefix, or a name made by hand).
pub fn generation_time(names: &IndexNames, family: Family, index: &str) -> Option<NaiveDateTime> {
    let stem = format!("{}-", family_name(names, family));
    let rest = index.strip_prefix(&stem)?;
    if rest.len() != 15 {
        return None;
    }
    NaiveDateTime::parse_from_str(rest, NAME_TIME_FORMAT).ok()
}

/// The family a generation name belongs to, if any.
pub fn family_of(names: &IndexNames, index: &str) -> Option<Family> {
    Family::ALL
        .into_iter()
        .find(|f| generation_time(names, *f, index).is_some())
}

/// Creates a generation of `family` with the template's build settings and
/// `meta` in `_meta`, stepping forward one second while the name is taken.
pub async fn create(
    client: &SearchClient,
    names: &IndexNames,
    template: &IndexTemplate,
    meta: &GenerationMeta,
) -> Result<Generation, SearchError> {
    let family = template.family;
    let body = template.create_body(meta.to_value());
    let start = Utc::now();
    for step in 0..MAX_NAME_STEPS {
        let name = generation_name(names, family, start + TimeDelta::seconds(step));
        let (status, answer) = client
            .request(Method::Put, &format!("/{name}"), &[], Some(&body))
            .await?;
        if (200..300).contains(&status) {
            info!(generation = %name, %family, run_id = %meta.run_id, "Generation created.");
            return Ok(Generation { family, name });
        }
        if error_type(&answer) == Some("resource_already_exists_exception") {
            debug!(generation = %name, "Generation name taken, stepping forward.");
            continue;
        }
        return Err(SearchError::Status {
            method: "PUT".into(),
            path: format!("/{name}"),
            status,
            body: clip(&answer.to_string(), 2000).into_owned(),
        });
    }
    Err(SearchError::Invalid(format!(
        "no free generation name for {family} in the {MAX_NAME_STEPS} seconds after {start}"
    )))
}

/// The `error.type` of an OpenSearch error body.
pub(crate) fn error_type(answer: &Value) -> Option<&str> {
    answer["error"]["type"].as_str()
}

/// The settings that undo the build settings: every key the build settings
/// set gets the serving value from the template, or `null` (the default) when
/// the template's serving settings do not name it.
pub fn serving_settings_update(template: &IndexTemplate) -> Value {
    fn walk(build: &Value, serving: Option<&Value>) -> Value {
        match build {
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, value) in map {
                    let serving_value = serving.and_then(|s| s.get(key));
                    out.insert(key.clone(), walk(value, serving_value));
                }
                Value::Object(out)
            }
            _ => serving.cloned().unwrap_or(Value::Null),
        }
    }
    walk(&template.build_settings, Some(&template.settings))
}

/// Flushes the load, restores the serving settings (the replicas come back
/// and start recovering, from the flushed commit rather than by replaying
/// the translog), refreshes, and marks the generation `ready`. The wait for
/// the replicas is the finish's (`search::health::wait_green`), before the
/// aliases move.
pub async fn finish_load(
    client: &SearchClient,
    generation: &Generation,
    template: &IndexTemplate,
) -> Result<(), SearchError> {
    let name = &generation.name;
    let flushed = client
        .json(Method::Post, &format!("/{name}/_flush"), &[], None)
        .await?;
    if flushed["_shards"]["failed"].as_u64().unwrap_or(0) > 0 {
        // A shard not flushed is not durable: retried as a server failure.
        return Err(SearchError::Status {
            method: "POST".into(),
            path: format!("/{name}/_flush"),
            status: 503,
            body: clip(&flushed.to_string(), 2000).into_owned(),
        });
    }
    let update = serving_settings_update(template);
    client
        .json(
            Method::Put,
            &format!("/{name}/_settings"),
            &[],
            Some(&update),
        )
        .await?;
    client
        .json(Method::Post, &format!("/{name}/_refresh"), &[], None)
        .await?;
    update_meta(client, name, |meta| meta.state = GenerationState::Ready).await?;
    info!(generation = %name, "Generation loaded and flushed, serving settings restored.");
    Ok(())
}

/// The meta of one index, `None` when it carries none of ours.
pub async fn read_meta(
    client: &SearchClient,
    index: &str,
) -> Result<Option<GenerationMeta>, SearchError> {
    let mapping = client
        .json(Method::Get, &format!("/{index}/_mapping"), &[], None)
        .await?;
    Ok(mapping
        .get(index)
        .and_then(|m| m["mappings"].get("_meta"))
        .and_then(GenerationMeta::from_value))
}

/// Reads, changes and writes back an index's meta (the whole `_meta`
/// object is replaced, so unknown keys are carried over).
pub async fn update_meta(
    client: &SearchClient,
    index: &str,
    change: impl FnOnce(&mut GenerationMeta),
) -> Result<GenerationMeta, SearchError> {
    let mapping = client
        .json(Method::Get, &format!("/{index}/_mapping"), &[], None)
        .await?;
    let raw = mapping
        .get(index)
        .and_then(|m| m["mappings"].get("_meta"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut meta = GenerationMeta::from_value(&raw).ok_or_else(|| {
        SearchError::Invalid(format!(
            "index {index} carries no generation meta of rebuilder; it was not built by it"
        ))
    })?;
    change(&mut meta);
    let mut merged = raw;
    if let (Value::Object(target), Value::Object(ours)) = (&mut merged, meta.to_value()) {
        for (k, v) in ours {
            target.insert(k, v);
        }
    }
    client
        .json(
            Method::Put,
            &format!("/{index}/_mapping"),
            &[],
            Some(&json!({ "_meta": merged })),
        )
        .await?;
    Ok(meta)
}

/// Deletes one generation.
pub async fn delete(client: &SearchClient, index: &str) -> Result<(), SearchError> {
    let (status, answer) = client
        .request(Method::Delete, &format!("/{index}"), &[], None)
        .await?;
    if (200..300).contains(&status) || status == 404 {
        info!(generation = %index, "Generation deleted.");
        Ok(())
    } else {
        Err(SearchError::Status {
            method: "DELETE".into(),
            path: format!("/{index}"),
            status,
            body: clip(&answer.to_string(), 2000).into_owned(),
        })
    }
}

/// Every generation of both families, oldest first, with counts, sizes,
/// aliases and meta.
pub async fn list(
    client: &SearchClient,
    names: &IndexNames,
) -> Result<Vec<GenerationInfo>, SearchError> {
    let patterns = Family::ALL
        .iter()
        .map(|f| format!("{}-*", family_name(names, *f)))
        .collect::<Vec<_>>()
        .join(",");
    let cat = client
        .json(
            Method::Get,
            &format!("/_cat/indices/{patterns}"),
            &[
                ("format", "json"),
                ("bytes", "b"),
                ("h", "index,docs.count,store.size,creation.date"),
                ("expand_wildcards", "all"),
            ],
            None,
        )
        .await?;
    let rows = cat.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // `_mapping` and `_alias` over the same patterns; a wildcard that matches
    // nothing answers `{}`, never 404.
    let mappings = client
        .json(
            Method::Get,
            &format!("/{patterns}/_mapping"),
            &[("expand_wildcards", "all")],
            None,
        )
        .await?;
    let aliases = client
        .json(
            Method::Get,
            &format!("/{patterns}/_alias"),
            &[("expand_wildcards", "all")],
            None,
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let Some(index) = row["index"].as_str() else {
            continue;
        };
        let Some(family) = family_of(names, index) else {
            continue;
        };
        let meta = mappings
            .get(index)
            .and_then(|m| m["mappings"].get("_meta"))
            .and_then(GenerationMeta::from_value);
        let mut held: Vec<String> = aliases
            .get(index)
            .and_then(|a| a["aliases"].as_object())
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        held.sort();
        let created = meta
            .as_ref()
            .map(|m| m.created.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| {
                cat_number(&row["creation.date"])
                    .and_then(|ms| DateTime::from_timestamp_millis(ms as i64))
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            })
            .unwrap_or_default();
        // `_cat`'s `docs.count` counts Lucene documents, the entries of a
        // `nested` field (`hiddenDiscrepancies`) included; readers see
        // `_count`'s. A closed index has no `_count`: `_cat`'s then.
        let docs = match count(client, index).await {
            Ok(n) => n,
            Err(_) => cat_number(&row["docs.count"]).unwrap_or(0),
        };
        out.push(GenerationInfo {
            name: index.to_string(),
            family,
            created,
            docs,
            size_bytes: cat_number(&row["store.size"]).unwrap_or(0),
            aliases: held,
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `_cat` answers numbers as strings (or null for a closed index).
fn cat_number(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Documents in an index (its last refresh).
pub async fn count(client: &SearchClient, index: &str) -> Result<u64, SearchError> {
    count_matching(client, index, None).await
}

/// Documents of `index` matching `query` (all when `None`).
pub async fn count_matching(
    client: &SearchClient,
    index: &str,
    query: Option<&Value>,
) -> Result<u64, SearchError> {
    let body = query.map(|q| json!({ "query": q }));
    let answer = client
        .json(
            Method::Post,
            &format!("/{index}/_count"),
            &[],
            body.as_ref(),
        )
        .await?;
    answer["count"].as_u64().ok_or_else(|| SearchError::Decode {
        path: format!("/{index}/_count"),
        message: format!("no count in {}", clip(&answer.to_string(), 200)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn names(prefix: &str) -> IndexNames {
        IndexNames {
            prefix: prefix.into(),
            ..IndexNames::default()
        }
    }

    #[test]
    fn generation_names_carry_prefix_family_and_utc_second() {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 22, 15, 0).unwrap();
        assert_eq!(
            generation_name(&names(""), Family::Master, at),
            "masterdoctorindex-20261128-221500"
        );
        assert_eq!(
            generation_name(&names("t1_"), Family::Recommendation, at),
            "t1_recommendationindex-20261128-221500"
        );
    }

    #[test]
    fn generation_names_sort_by_time() {
        let a = Utc.with_ymd_and_hms(2026, 1, 9, 23, 59, 59).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let n = names("");
        assert!(generation_name(&n, Family::Master, a) < generation_name(&n, Family::Master, b));
    }

    #[test]
    fn only_names_of_the_pattern_are_generations() {
        let n = names("t1_");
        assert!(
            generation_time(&n, Family::Master, "t1_masterdoctorindex-20261128-221500").is_some()
        );
        assert_eq!(
            family_of(&n, "t1_recommendationindex-20261128-221500"),
            Some(Family::Recommendation)
        );
        for other in [
            "masterdoctorindex-20261128-221500",
            "t1_masterdoctorindex",
            "t1_masterdoctorindex-2026",
            "t1_masterdoctorindex-20261128-221500-old",
            "t1_masterdoctorindex-20261399-221500",
        ] {
            assert_eq!(family_of(&n, other), None, "{other}");
        }
    }

    #[test]
    fn serving_update_undoes_every_build_setting() {
        let t = IndexTemplate::builtin(Family::Master).unwrap();
        let u = serving_settings_update(&t);
        assert_eq!(u["index"]["refresh_interval"], "1s");
        assert_eq!(u["index"]["auto_expand_replicas"], "0-1");
        assert_eq!(u["index"]["number_of_replicas"], Value::Null);
        // The load keeps the serving translog (fsynced before each answer):
        // what a bulk request was told is written survives a node lost.
        assert!(u["index"].get("translog").is_none());
        assert!(u["index"].get("number_of_shards").is_none());
    }

    #[test]
    fn meta_round_trips_and_foreign_meta_is_none() {
        let t = IndexTemplate::builtin(Family::Master).unwrap();
        let m = GenerationMeta::building("run-1", &t, None);
        let back = GenerationMeta::from_value(&m.to_value()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.state, GenerationState::Building);
        assert!(GenerationMeta::from_value(&json!({"owner": "someone"})).is_none());
        let odd = json!({"run_id": "r", "template_sha256": "x", "state": "frozen"});
        assert_eq!(
            GenerationMeta::from_value(&odd).unwrap().state,
            GenerationState::Unknown
        );
    }
}
