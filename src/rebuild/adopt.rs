//! Adopting the legacy layout. The old sync job kept `masterdoctorindex`
//! and `recommendationindex` as concrete indices, with `current_connections`
//! an alias of the first and `discrepancies` re-added by hand (or missing).
//! Adoption turns them into generations with every alias, once:
//!
//! 1. under the rebuild lease (no run interleaves), each concrete index is
//!    write-blocked and cloned into a new generation (`_clone` hard-links
//!    the segments: seconds, whatever the size), which gets our `_meta`
//!    (ready, served);
//! 2. one `_aliases` request removes the concrete indices and puts every
//!    alias, `discrepancies` with its filter from the template included, on
//!    the copies. Readers never see a name fail to resolve: the name is an
//!    index before the request and an alias after it.
//!
//! Why a clone and not a reindex with a catch-up: the clone is an exact copy
//! taken in seconds, so the write block is short and no write can fall
//! between a copy and its catch-up. A legacy writer sees the block (HTTP
//! 403, `cluster_block_exception`) from the first block until the
//! `_aliases` request; the report measures that window. The copies keep the
//! legacy (dynamic) mapping until the next rebuild replaces them with
//! generations built from the templates.

use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::engine::Engine;
use super::record::new_run_id;
use super::run::take_lease;
use super::Refused;
use crate::config::Settings;
use crate::search::aliases::{self, AliasSet, AliasSpec};
use crate::search::generations::{self, GenerationMeta, GenerationState};
use crate::search::{Family, SearchClient};
use crate::sources::mongo_client;

/// One concrete index and the generation it becomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LegacyCopy {
    #[serde(serialize_with = "family_name")]
    pub family: Family,
    pub from: String,
    pub to: String,
    pub docs: u64,
}

fn family_name<S: serde::Serializer>(family: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(family.as_str())
}

/// What adoption will do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdoptPlan {
    pub copies: Vec<LegacyCopy>,
    /// Aliases that exist now, and on which indices.
    pub aliases_now: AliasSet,
    /// Aliases the templates define that do not exist yet (`discrepancies`).
    pub aliases_missing: Vec<String>,
}

/// What adoption did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdoptReport {
    pub copies: Vec<LegacyCopy>,
    pub aliases: Vec<String>,
    /// From the first write block to the `_aliases` request's answer: the
    /// longest a legacy writer was refused.
    pub write_block_ms: u64,
    pub took_ms: u64,
}

impl AdoptPlan {
    /// The plan in words.
    pub fn describe(&self) -> String {
        let mut out = String::from("Adoption plan (nothing happens without --yes):\n");
        for c in &self.copies {
            out.push_str(&format!(
                "  write-block {} ({} documents), clone it into {}\n",
                c.from, c.docs, c.to
            ));
        }
        out.push_str("  in one _aliases request: remove the concrete indices");
        for c in &self.copies {
            out.push_str(&format!(" {}", c.from));
        }
        out.push_str(", and put every alias on the copies:\n");
        for (alias, holders) in &self.aliases_now.holders {
            out.push_str(&format!("    {alias} (now on {})\n", holders.join(", ")));
        }
        for alias in &self.aliases_missing {
            out.push_str(&format!(
                "    {alias} (missing now; added with its template filter)\n"
            ));
        }
        out.push_str(
            "  a legacy writer is refused (HTTP 403) from the first write block until that request; readers never see a name missing.\n",
        );
        out
    }
}

/// Looks at the cluster and plans the adoption; refuses when there is
/// nothing to adopt or a layout it does not know.
pub async fn plan(engine: &Engine, settings: &Settings) -> anyhow::Result<AdoptPlan> {
    let client = engine.client();
    let alias_names: Vec<String> = engine
        .alias_specs()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let concrete = aliases::concrete_indices_named(client, &alias_names)
        .await
        .context("while looking for concrete indices named like aliases")?;
    let master_name = settings.names.master_family();
    let reco_name = settings.names.recommendation_family();
    if !concrete.contains(&master_name) {
        return Err(anyhow!(Refused(format!(
            "nothing to adopt: {master_name} is not a concrete index (concrete indices named like aliases: {})",
            if concrete.is_empty() { "none".to_string() } else { concrete.join(", ") }
        ))));
    }
    if let Some(other) = concrete
        .iter()
        .find(|c| **c != master_name && **c != reco_name)
    {
        return Err(anyhow!(Refused(format!(
            "{other} is a concrete index named like an alias; adoption converts only {master_name} and {reco_name}"
        ))));
    }
    let now = chrono::Utc::now();
    let mut copies = vec![LegacyCopy {
        family: Family::Master,
        from: master_name.clone(),
        to: generations::generation_name(&settings.names, Family::Master, now),
        docs: engine.count(&master_name, None).await?,
    }];
    if concrete.contains(&reco_name) {
        copies.push(LegacyCopy {
            family: Family::Recommendation,
            from: reco_name.clone(),
            to: generations::generation_name(&settings.names, Family::Recommendation, now),
            docs: engine.count(&reco_name, None).await?,
        });
    }
    let others: Vec<String> = alias_names
        .iter()
        .filter(|a| !concrete.contains(a))
        .cloned()
        .collect();
    let aliases_now = aliases::current(client, &others).await?;
    let aliases_missing = others
        .into_iter()
        .filter(|a| aliases_now.holders_of(a).is_empty())
        .collect();
    Ok(AdoptPlan {
        copies,
        aliases_now,
        aliases_missing,
    })
}

/// Plans, and with `yes` adopts, under the rebuild lease.
pub async fn adopt(
    settings: &Settings,
    yes: bool,
) -> anyhow::Result<(AdoptPlan, Option<AdoptReport>)> {
    let engine = Engine::new(settings)
        .await
        .context("while connecting to OpenSearch")?;
    let plan = plan(&engine, settings).await?;
    if !yes {
        return Ok((plan, None));
    }
    let mongo = mongo_client(&settings.mongodb)
        .await
        .context("while connecting to MongoDB")?;
    let holder = format!("adopt-{}", new_run_id());
    let lease = take_lease(settings, &mongo, &holder).await?;
    let done = execute(&engine, &plan, &holder).await;
    if let Err(e) = lease.release().await {
        warn!(error = %e, "Could not release the lease; it expires by itself.");
    }
    let report = match done {
        Ok(report) => report,
        Err(e) => {
            unblock(engine.client(), &plan).await;
            return Err(e);
        }
    };
    Ok((plan, Some(report)))
}

async fn execute(engine: &Engine, plan: &AdoptPlan, holder: &str) -> anyhow::Result<AdoptReport> {
    let client = engine.client();
    let started = Instant::now();
    let mut blocked_at = None;
    for copy in &plan.copies {
        client
            .json(
                Method::Put,
                &format!("/{}/_settings", copy.from),
                &[],
                Some(&json!({"index": {"blocks": {"write": true}}})),
            )
            .await
            .with_context(|| format!("while write-blocking {}", copy.from))?;
        blocked_at.get_or_insert_with(Instant::now);
        client
            .json(
                Method::Post,
                &format!("/{}/_clone/{}", copy.from, copy.to),
                &[("wait_for_active_shards", "1")],
                Some(&json!({"settings": {"index": {"blocks": {"write": false}}}})),
            )
            .await
            .with_context(|| format!("while cloning {} into {}", copy.from, copy.to))?;
        let health = client
            .json(
                Method::Get,
                &format!("/_cluster/health/{}", copy.to),
                &[("wait_for_status", "yellow"), ("timeout", "60s")],
                None,
            )
            .await?;
        if health["timed_out"] == true {
            bail!("the copy {} did not become available within 60 s", copy.to);
        }
        let master = plan.copies.first().map(|c| c.to.as_str());
        let meta = GenerationMeta {
            run_id: holder.to_string(),
            source_counts: json!({"adopted_from": copy.from, "docs": copy.docs}),
            template_sha256: format!("legacy:{}", copy.from),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            state: GenerationState::Ready,
            built_from: (copy.family == Family::Recommendation)
                .then(|| master.unwrap_or_default().to_string()),
            served_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        };
        client
            .json(
                Method::Put,
                &format!("/{}/_mapping", copy.to),
                &[],
                Some(&json!({"_meta": meta.to_value()})),
            )
            .await
            .with_context(|| format!("while recording the generation meta of {}", copy.to))?;
        info!(from = %copy.from, to = %copy.to, "Legacy index cloned.");
    }
    let target = |family: Family| {
        plan.copies
            .iter()
            .find(|c| c.family == family)
            .or_else(|| plan.copies.first())
            .map(|c| c.to.clone())
            .unwrap_or_default()
    };
    let legacy = |name: &str| plan.copies.iter().any(|c| c.from == name);
    // First the aliases that are aliases already (or missing): a plain move,
    // the legacy indices stay, so a search in flight on them finishes.
    let (renamed, moved): (Vec<AliasSpec>, Vec<AliasSpec>) = engine
        .alias_specs()
        .iter()
        .cloned()
        .partition(|spec| legacy(&spec.name));
    let first = aliases::plan_moves(&moved, &plan.aliases_now, target);
    apply_actions(client, first.actions).await?;
    // Searches resolved against the legacy indices before the move finish.
    tokio::time::sleep(DRAIN).await;
    // Then the names that are the legacy indices themselves: the index goes
    // and the alias comes in one request.
    let mut actions: Vec<Value> = plan
        .copies
        .iter()
        .map(|c| json!({"remove_index": {"index": c.from}}))
        .collect();
    let second = aliases::plan_moves(&renamed, &AliasSet::default(), target);
    actions.extend(second.actions);
    apply_actions(client, actions).await?;
    let write_block_ms = blocked_at.map_or(0, |t| t.elapsed().as_millis() as u64);
    info!(write_block_ms, "Legacy layout adopted.");
    Ok(AdoptReport {
        copies: plan.copies.clone(),
        aliases: first
            .moves
            .iter()
            .chain(&second.moves)
            .map(|m| m.alias.clone())
            .collect(),
        write_block_ms,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// How long the first alias move is left to settle before the legacy
/// indices go: searches that resolved to them before the move finish.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(300);

async fn apply_actions(client: &SearchClient, actions: Vec<Value>) -> anyhow::Result<()> {
    let answer = client
        .json(
            Method::Post,
            "/_aliases",
            &[],
            Some(&json!({"actions": actions})),
        )
        .await
        .context("while moving the names onto the copies")?;
    if answer["acknowledged"] != true {
        bail!("OpenSearch did not acknowledge the alias change: {answer}");
    }
    Ok(())
}

/// After a failure: the legacy indices take writes again.
async fn unblock(client: &SearchClient, plan: &AdoptPlan) {
    for copy in &plan.copies {
        let body = json!({"index": {"blocks": {"write": null}}});
        match client
            .request(
                Method::Put,
                &format!("/{}/_settings", copy.from),
                &[],
                Some(&body),
            )
            .await
        {
            Ok((status, _)) if (200..300).contains(&status) || status == 404 => {}
            other => {
                warn!(index = %copy.from, answer = ?other.map(|(s, _)| s), "Could not lift the write block; lift it by hand.")
            }
        }
    }
}
