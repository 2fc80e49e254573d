//! Aliases: which generation serves each alias, and the one `_aliases`
//! request that moves every alias of both families at once.
//!
//! A move is planned as a pure function of the aliases' definitions (from
//! the templates) and who holds each alias now: `remove` actions name the
//! current holders explicitly (never a wildcard) with `must_exist`, then
//! `add` actions put every alias on its new generation with its filter and
//! write flag. OpenSearch applies the list as one cluster-state change: if
//! anything changed since the plan was made, or any action fails, nothing
//! moves.

use std::collections::BTreeMap;

use opensearch::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::info;

use super::client::{SearchClient, SearchError};
use super::templates::{Family, IndexTemplate};
use crate::config::IndexNames;

/// One alias as the templates define it.
#[derive(Clone, Debug, PartialEq)]
pub struct AliasSpec {
    /// The real (prefixed) alias name.
    pub name: String,
    /// The logical name from the template.
    pub logical: String,
    /// The family whose generations carry it.
    pub family: Family,
    /// `filter`, `is_write_index`, routing: as in the template.
    pub definition: Map<String, Value>,
}

impl AliasSpec {
    pub fn filter(&self) -> Option<&Value> {
        self.definition.get("filter")
    }
    pub fn is_write_index(&self) -> bool {
        self.definition.get("is_write_index") == Some(&Value::Bool(true))
    }
}

/// Every alias of both templates, qualified.
pub fn alias_specs(names: &IndexNames, templates: &[&IndexTemplate]) -> Vec<AliasSpec> {
    let mut out = Vec::new();
    for template in templates {
        for (logical, definition) in &template.aliases {
            out.push(AliasSpec {
                name: names.qualify(logical),
                logical: logical.clone(),
                family: template.family,
                definition: definition.as_object().cloned().unwrap_or_default(),
            });
        }
    }
    out
}

/// The alias that says which generation of a family is live: its write
/// alias, else its first alias.
pub fn primary_alias(specs: &[AliasSpec], family: Family) -> Option<&AliasSpec> {
    let mut of_family = specs.iter().filter(|s| s.family == family);
    let first = of_family.clone().next();
    of_family.find(|s| s.is_write_index()).or(first)
}

/// Who holds each alias now: alias name to its indices, sorted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AliasSet {
    pub holders: BTreeMap<String, Vec<String>>,
}

impl AliasSet {
    pub fn holders_of(&self, alias: &str) -> &[String] {
        self.holders.get(alias).map_or(&[], Vec::as_slice)
    }
}

/// Reads who holds each of `aliases` (absent aliases have no holders).
pub async fn current(client: &SearchClient, aliases: &[String]) -> Result<AliasSet, SearchError> {
    let mut set = AliasSet::default();
    if aliases.is_empty() {
        return Ok(set);
    }
    // `_alias/{names}` answers 404 when one name is missing, and still lists
    // the others; the body is the same shape either way.
    let path = format!("/_alias/{}", aliases.join(","));
    let (status, body) = client.request(Method::Get, &path, &[], None).await?;
    if !(200..300).contains(&status) && status != 404 {
        return Err(SearchError::Status {
            method: "GET".into(),
            path,
            status,
            body: body.to_string(),
        });
    }
    if let Value::Object(indices) = body {
        for (index, entry) in indices {
            let Some(held) = entry["aliases"].as_object() else {
                continue;
            };
            for alias in held.keys() {
                if aliases.contains(alias) {
                    set.holders
                        .entry(alias.clone())
                        .or_default()
                        .push(index.clone());
                }
            }
        }
    }
    for holders in set.holders.values_mut() {
        holders.sort();
    }
    Ok(set)
}

/// The names among `names` that are concrete indices (not aliases).
pub async fn concrete_indices_named(
    client: &SearchClient,
    names: &[String],
) -> Result<Vec<String>, SearchError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let path = format!("/_resolve/index/{}", names.join(","));
    let body = client
        .json(
            Method::Get,
            &path,
            &[("expand_wildcards", "all"), ("ignore_unavailable", "true")],
            None,
        )
        .await?;
    let mut out: Vec<String> = body["indices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|i| i["name"].as_str())
        .filter(|n| names.iter().any(|x| x == n))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// One alias moving: from its current holders to its new generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct AliasMove {
    pub alias: String,
    pub from: Vec<String>,
    pub to: String,
}

/// The actions of one `_aliases` request and what they do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AliasPlan {
    pub actions: Vec<Value>,
    pub moves: Vec<AliasMove>,
}

/// Plans moving every alias in `specs` to the target of its family.
pub fn plan_moves(
    specs: &[AliasSpec],
    now: &AliasSet,
    target: impl Fn(Family) -> String,
) -> AliasPlan {
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut moves = Vec::new();
    for spec in specs {
        let to = target(spec.family);
        let from = now.holders_of(&spec.name).to_vec();
        for old in from.iter().filter(|old| **old != to) {
            removes.push(json!({"remove": {"index": old, "alias": spec.name, "must_exist": true}}));
        }
        let mut add = spec.definition.clone();
        add.insert("index".into(), Value::String(to.clone()));
        add.insert("alias".into(), Value::String(spec.name.clone()));
        adds.push(json!({ "add": add }));
        moves.push(AliasMove {
            alias: spec.name.clone(),
            from,
            to,
        });
    }
    removes.extend(adds);
    AliasPlan {
        actions: removes,
        moves,
    }
}

/// Sends the plan as one `_aliases` request: all of it happens, or none.
pub async fn apply(client: &SearchClient, plan: &AliasPlan) -> Result<(), SearchError> {
    let body = json!({ "actions": plan.actions });
    let answer = client
        .json(Method::Post, "/_aliases", &[], Some(&body))
        .await?;
    if answer["acknowledged"].as_bool() != Some(true) {
        return Err(SearchError::Invalid(format!(
            "OpenSearch did not acknowledge the alias change: {answer}"
        )));
    }
    for m in &plan.moves {
        info!(alias = %m.alias, from = ?m.from, to = %m.to, "Alias moved.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(prefix: &str) -> Vec<AliasSpec> {
        let m = IndexTemplate::builtin(Family::Master).unwrap();
        let r = IndexTemplate::builtin(Family::Recommendation).unwrap();
        let names = IndexNames {
            prefix: prefix.into(),
            ..IndexNames::default()
        };
        alias_specs(&names, &[&m, &r])
    }

    fn target(f: Family) -> String {
        match f {
            Family::Master => "p_masterdoctorindex-2".into(),
            Family::Recommendation => "p_recommendationindex-2".into(),
        }
    }

    #[test]
    fn the_write_aliases_say_which_generation_is_live() {
        let s = specs("p_");
        assert_eq!(
            primary_alias(&s, Family::Master).unwrap().name,
            "p_masterdoctorindex"
        );
        assert_eq!(
            primary_alias(&s, Family::Recommendation).unwrap().name,
            "p_recommendationindex"
        );
    }

    #[test]
    fn a_first_promotion_only_adds_every_alias() {
        let plan = plan_moves(&specs("p_"), &AliasSet::default(), target);
        assert_eq!(plan.actions.len(), 5);
        assert!(plan.actions.iter().all(|a| a.get("add").is_some()));
        let connections = plan
            .actions
            .iter()
            .find(|a| a["add"]["alias"] == "p_current_connections")
            .unwrap();
        assert_eq!(connections["add"]["index"], "p_masterdoctorindex-2");
        assert_eq!(connections["add"]["filter"]["term"]["existsInGmc"], true);
        let write = plan
            .actions
            .iter()
            .find(|a| a["add"]["alias"] == "p_masterdoctorindex")
            .unwrap();
        assert_eq!(write["add"]["is_write_index"], true);
        let reco = plan
            .actions
            .iter()
            .find(|a| a["add"]["alias"] == "p_recommendationindex")
            .unwrap();
        assert_eq!(reco["add"]["index"], "p_recommendationindex-2");
    }

    #[test]
    fn a_promotion_removes_from_the_named_old_holders_first_then_adds() {
        let mut now = AliasSet::default();
        for s in specs("p_") {
            let old = match s.family {
                Family::Master => "p_masterdoctorindex-1",
                Family::Recommendation => "p_recommendationindex-1",
            };
            now.holders.insert(s.name.clone(), vec![old.to_string()]);
        }
        let plan = plan_moves(&specs("p_"), &now, target);
        assert_eq!(plan.actions.len(), 10);
        let first_add = plan
            .actions
            .iter()
            .position(|a| a.get("add").is_some())
            .unwrap();
        assert!(plan.actions[..first_add]
            .iter()
            .all(|a| a.get("remove").is_some()));
        for r in &plan.actions[..first_add] {
            assert_eq!(r["remove"]["must_exist"], true);
            assert!(!r["remove"]["index"].as_str().unwrap().contains('*'));
        }
        assert!(plan.moves.iter().all(|m| m.from.len() == 1));
    }

    #[test]
    fn an_alias_already_on_its_target_is_re_added_not_removed() {
        let mut now = AliasSet::default();
        now.holders.insert(
            "p_recommendations".into(),
            vec!["p_masterdoctorindex-2".into()],
        );
        let plan = plan_moves(&specs("p_"), &now, target);
        assert!(plan.actions.iter().all(|a| a.get("remove").is_none()));
    }
}
