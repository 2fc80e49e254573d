//! Turning a batch of changes into document updates: one `$in` lookup of
//! the GMC doctors the changes need (for the shared fields, for a doctor
//! that must be created whole, and for the documents a trainee filtered out
//! of TIS leaves), one aggregation for the latest outcomes, the connection
//! data of the doctors whose connection changed, a search of the target
//! for the documents holding each trainee filtered out and each un-hidden
//! discrepancy, then
//! [`update_for`] per change and document. Used by the live applier and by
//! a rebuild's catch-up alike.

use std::collections::HashMap;

use anyhow::Context;
use opensearch::http::Method;
use serde_json::json;

use crate::domain::{update_for, Change, GmcNumber, Known};
use crate::search::updates::{UpdateItem, UpdateResult};
use crate::search::SearchClient;
use crate::sources::connection::ConnectionSource;
use crate::sources::gmc::GmcSource;

/// Documents of one trainee looked up at most (a trainee has one document
/// per GMC number it ever had: a handful).
const HOLDERS_MAX: usize = 100;

/// Where the documents of a trainee filtered out of TIS are looked for:
/// the index (or alias) the updates go to.
#[derive(Clone, Copy)]
pub struct Finder<'a> {
    pub search: &'a SearchClient,
    pub target: &'a str,
}

impl Finder<'_> {
    /// The ids of the documents holding trainee `person` now.
    async fn holders_of(&self, person: i64) -> anyhow::Result<Vec<String>> {
        self.ids_matching(
            json!({"term": {"tcsPersonId": person}}),
            &format!("trainee {person}"),
        )
        .await
    }

    /// The ids of the documents holding the hidden discrepancy `id` now.
    async fn hiding(&self, id: &str) -> anyhow::Result<Vec<String>> {
        self.ids_matching(
            json!({"nested": {
                "path": "hiddenDiscrepancies",
                "query": {"term": {"hiddenDiscrepancies.id.keyword": id}},
                "ignore_unmapped": true,
            }}),
            &format!("hidden discrepancy {id}"),
        )
        .await
    }

    async fn ids_matching(
        &self,
        query: serde_json::Value,
        what: &str,
    ) -> anyhow::Result<Vec<String>> {
        let body = json!({
            "query": query,
            "size": HOLDERS_MAX,
            "_source": false,
        });
        let answer = self
            .search
            .json(
                Method::Post,
                &format!("/{}/_search", self.target),
                &[],
                Some(&body),
            )
            .await
            .with_context(|| format!("while looking for the documents of {what}"))?;
        Ok(answer["hits"]["hits"]
            .as_array()
            .map(|hits| {
                hits.iter()
                    .filter_map(|h| h["_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The updates of a batch, each with the position of its change.
#[derive(Debug, Default)]
pub struct Resolved {
    pub items: Vec<UpdateItem>,
    /// `owner[i]`: the change `items[i]` comes from.
    pub owner: Vec<usize>,
}

impl Resolved {
    /// One result per change from the items' results: a change with no
    /// document to update changed nothing; one with several (a trainee
    /// leaving TIS) failed when any failed, else says what its last did.
    pub fn per_change(&self, results: Vec<UpdateResult>, changes: usize) -> Vec<UpdateResult> {
        let mut out = vec![UpdateResult::Unchanged; changes];
        let mut failed = vec![false; changes];
        for (result, &owner) in results.into_iter().zip(&self.owner) {
            if failed[owner] {
                continue;
            }
            failed[owner] = matches!(result, UpdateResult::Failed { .. });
            out[owner] = result;
        }
        out
    }
}

/// The updates of `changes`, in their order. `connection`: where the
/// connection service's data is read (none: it is not kept in the index).
pub async fn resolve(
    gmc: &GmcSource,
    connection: Option<&ConnectionSource>,
    finder: Finder<'_>,
    changes: &[Change],
    updated_at: &str,
) -> anyhow::Result<Resolved> {
    // The documents holding each trainee filtered out of TIS: those the
    // target shows, and any an earlier change of this batch gives that
    // trainee (not written yet when the target was asked).
    let mut holders: HashMap<i64, Vec<GmcNumber>> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        let Change::TcsLeft { person } = change else {
            continue;
        };
        let mut numbers: Vec<GmcNumber> = finder
            .holders_of(*person)
            .await?
            .iter()
            .filter_map(|id| GmcNumber::parse(id).ok())
            .collect();
        numbers.extend(changes[..i].iter().filter_map(|earlier| match earlier {
            Change::Tcs { number, record } if record.tcs_person_id == Some(*person) => {
                Some(number.clone())
            }
            _ => None,
        }));
        numbers.sort_unstable();
        numbers.dedup();
        holders.insert(*person, numbers);
    }
    // The documents holding each un-hidden discrepancy.
    let mut hiding: HashMap<&str, Vec<GmcNumber>> = HashMap::new();
    for change in changes {
        if let Change::Unhidden { id } = change {
            let numbers = finder
                .hiding(id)
                .await?
                .iter()
                .filter_map(|n| GmcNumber::parse(n).ok())
                .collect();
            hiding.insert(id.as_str(), numbers);
        }
    }
    let mut need_connection: Vec<GmcNumber> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Connection { number } => Some(number.clone()),
            _ => None,
        })
        .chain(hiding.values().flatten().cloned())
        .collect();
    need_connection.sort_unstable();
    need_connection.dedup();
    let connections = match connection {
        Some(source) if !need_connection.is_empty() => source.of(&need_connection).await?,
        _ => Default::default(),
    };
    let mut need_doctor: Vec<GmcNumber> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Tcs { number, .. } => Some(number.clone()),
            _ => None,
        })
        .chain(holders.values().flatten().cloned())
        .collect();
    need_doctor.sort_unstable();
    need_doctor.dedup();
    let mut need_outcome: Vec<GmcNumber> = changes
        .iter()
        .filter(|c| !matches!(c, Change::DoctorLeft { .. }))
        .filter_map(|c| c.number().cloned())
        .collect();
    need_outcome.sort_unstable();
    need_outcome.dedup();
    let doctors: HashMap<GmcNumber, _> = gmc
        .doctors_by_number(&need_doctor)
        .await?
        .into_iter()
        .collect();
    let outcomes = gmc.outcomes_of(&need_outcome).await?;
    let known = |number: &GmcNumber| Known {
        doctor: doctors.get(number).cloned(),
        outcome: outcomes.get(number).copied(),
        connection: connections.get(number).cloned(),
    };
    let mut resolved = Resolved::default();
    for (i, change) in changes.iter().enumerate() {
        let targets: Vec<&GmcNumber> = match (change, change.number()) {
            (Change::TcsLeft { person }, _) => holders[person].iter().collect(),
            (Change::Unhidden { id }, _) => hiding[id.as_str()].iter().collect(),
            (_, Some(number)) => vec![number],
            (_, None) => Vec::new(),
        };
        for number in targets {
            resolved.items.push(UpdateItem {
                id: number.as_str().to_string(),
                update: update_for(change, &known(number), updated_at),
            });
            resolved.owner.push(i);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> UpdateResult {
        UpdateResult::Failed {
            kind: "mapper_parsing_exception".into(),
            reason: "no".into(),
        }
    }

    #[test]
    fn each_change_gets_one_result_from_its_documents() {
        let resolved = Resolved {
            items: Vec::new(),
            // Change 0 one document, change 1 none, change 2 three.
            owner: vec![0, 2, 2, 2],
        };
        let results = vec![
            UpdateResult::Created,
            UpdateResult::Updated,
            failed(),
            UpdateResult::Deleted,
        ];
        assert_eq!(
            resolved.per_change(results, 3),
            vec![UpdateResult::Created, UpdateResult::Unchanged, failed()]
        );
        let results = vec![
            UpdateResult::Updated,
            UpdateResult::Updated,
            UpdateResult::Unchanged,
            UpdateResult::Deleted,
        ];
        assert_eq!(
            resolved.per_change(results, 3)[2],
            UpdateResult::Deleted,
            "the last of the trainee's documents says what happened"
        );
    }
}
