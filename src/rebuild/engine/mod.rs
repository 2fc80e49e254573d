//! The blue/green engine: the OpenSearch half of a rebuild. It creates
//! generations, hands out bulk writers into them, restores their serving
//! settings, builds the recommendation generation by `_reindex`, validates
//! ([`validate`]), promotes both families in one `_aliases` request
//! ([`promote`]), rolls back ([`rollback`]), applies retention and cleans up
//! orphans. The run (`rebuild::run`) drives it; the `rollback` and
//! `generations` commands use it directly.
//!
//! Lifecycle markers (`_meta`, see `search::generations`): `state` is
//! `building` until [`Engine::finish_load`], then `ready`; `built_from`
//! pairs a recommendation generation with its master; `served_at` is set on
//! a generation once it is known to have held the aliases. An orphan is a
//! generation still `building`, holding no alias, that no live run claims:
//! [`Engine::delete_orphans`] removes those (call it with the lease held,
//! passing the generations of runs that are alive).
//!
//! Every one-shot call that a transient failure (a 503, a dropped
//! connection) can break is retried with the `retry` settings' policy.

pub mod promote;
pub mod rollback;
pub mod validate;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use promote::{GenerationChange, MoveKind, PlannedMove, PromoteError, PromotionReport};
pub use rollback::rollback_targets;

use crate::config::Settings;
use crate::retry::{with_retry, RetryPolicy};
use crate::search::aliases::{self, AliasSpec};
use crate::search::bulk::{spawn_writer, BulkOutcomes, BulkSender, BulkWriter};
use crate::search::generations::{
    self, Generation, GenerationInfo, GenerationMeta, GenerationState,
};
use crate::search::health::{self, GenerationHealth};
use crate::search::reindex::{self, ReindexOptions, ReindexReport};
use crate::search::retention::{self, RetentionReport};
use crate::search::{Family, IndexTemplate, SearchClient, SearchError};

/// The engine: a client, the settings and the loaded templates.
#[derive(Clone)]
pub struct Engine {
    client: SearchClient,
    settings: Settings,
    master_template: IndexTemplate,
    recommendation_template: IndexTemplate,
    specs: Vec<AliasSpec>,
    retry: RetryPolicy,
    reindex_options: ReindexOptions,
}

impl Engine {
    /// Loads the templates (built in, or from `settings.templates_dir`) and
    /// checks that OpenSearch answers.
    pub async fn new(settings: &Settings) -> Result<Engine, SearchError> {
        let client = SearchClient::connect(&settings.opensearch).await?;
        client.version().await?;
        Self::with_client(client, settings)
    }

    /// Like [`new`](Self::new) with a given client, without a network call.
    pub fn with_client(client: SearchClient, settings: &Settings) -> Result<Engine, SearchError> {
        let load = |family| {
            IndexTemplate::resolve(settings.templates_dir.as_deref(), family)
                .map(|t| t.shaped(&settings.index))
                .map_err(|e| SearchError::Invalid(e.to_string()))
        };
        let master_template = load(Family::Master)?;
        let recommendation_template = load(Family::Recommendation)?;
        let specs = aliases::alias_specs(
            &settings.names,
            &[&master_template, &recommendation_template],
        );
        let retry = RetryPolicy::new(&settings.retry);
        Ok(Engine {
            client,
            settings: settings.clone(),
            master_template,
            recommendation_template,
            specs,
            retry,
            reindex_options: ReindexOptions {
                retry,
                ..ReindexOptions::default()
            },
        })
    }

    pub fn client(&self) -> &SearchClient {
        &self.client
    }

    pub fn template(&self, family: Family) -> &IndexTemplate {
        match family {
            Family::Master => &self.master_template,
            Family::Recommendation => &self.recommendation_template,
        }
    }

    /// Every alias of both families, qualified.
    pub fn alias_specs(&self) -> &[AliasSpec] {
        &self.specs
    }

    /// Creates a generation with build settings; its `_meta` says `building`.
    pub async fn create_generation(
        &self,
        family: Family,
        run_id: &str,
    ) -> Result<Generation, SearchError> {
        self.create(family, run_id, None).await
    }

    async fn create(
        &self,
        family: Family,
        run_id: &str,
        built_from: Option<&str>,
    ) -> Result<Generation, SearchError> {
        let template = self.template(family);
        let meta = GenerationMeta::building(run_id, template, built_from);
        generations::create(&self.client, &self.settings.names, template, &meta).await
    }

    /// A bulk writer into `generation` with the configured bulk settings.
    /// See `search::bulk`: drain the outcomes concurrently, or drop them.
    pub fn bulk_writer<T: Send + 'static>(
        &self,
        generation: &Generation,
    ) -> (BulkSender<T>, BulkOutcomes<T>, BulkWriter) {
        spawn_writer(
            self.client.clone(),
            generation.name.clone(),
            self.settings.bulk.clone(),
            self.retry,
        )
    }

    /// Serving settings back from the template, a refresh, state `ready`.
    /// Each step may be repeated, so the whole is retried.
    pub async fn finish_load(&self, generation: &Generation) -> Result<(), SearchError> {
        let template = self.template(generation.family);
        with_retry(&self.retry, "restoring the serving settings", || {
            generations::finish_load(&self.client, generation, template)
        })
        .await
    }

    /// Waits up to `index.green_timeout_secs` for `generations` to be green
    /// (see `search::health`).
    pub async fn wait_green(
        &self,
        generations: &[&Generation],
    ) -> Result<GenerationHealth, SearchError> {
        let names: Vec<&str> = generations.iter().map(|g| g.name.as_str()).collect();
        let timeout = std::time::Duration::from_secs(self.settings.index.green_timeout_secs);
        health::wait_green(&self.client, &names, timeout).await
    }

    /// Makes every write to `generation` visible to searches and counts.
    pub async fn refresh(&self, generation: &Generation) -> Result<(), SearchError> {
        let path = format!("/{}/_refresh", generation.name);
        with_retry(&self.retry, "a refresh", || {
            self.client
                .json(opensearch::http::Method::Post, &path, &[], None)
        })
        .await
        .map(|_| ())
    }

    /// Records what each source delivered in the generation's `_meta`.
    pub async fn set_source_counts(
        &self,
        generation: &Generation,
        source_counts: Value,
    ) -> Result<(), SearchError> {
        generations::update_meta(&self.client, &generation.name, |m| {
            m.source_counts = source_counts
        })
        .await
        .map(|_| ())
    }

    /// Builds the recommendation generation from a loaded master generation
    /// with server-side `_reindex`, restores its serving settings and checks
    /// that both hold the same number of documents.
    pub async fn build_recommendation_generation(
        &self,
        master: &Generation,
        run_id: &str,
    ) -> Result<(Generation, ReindexReport), SearchError> {
        self.build_recommendation_generation_until(master, run_id, &CancellationToken::new())
            .await
    }

    /// [`build_recommendation_generation`](Self::build_recommendation_generation),
    /// giving up (the reindex task cancelled and waited for) when `stop` is
    /// cancelled.
    pub async fn build_recommendation_generation_until(
        &self,
        master: &Generation,
        run_id: &str,
        stop: &CancellationToken,
    ) -> Result<(Generation, ReindexReport), SearchError> {
        self.expect_family(master, Family::Master)?;
        self.refresh(master).await?;
        let generation = self
            .create(Family::Recommendation, run_id, Some(&master.name))
            .await?;
        let mut report = reindex::reindex(
            &self.client,
            &master.name,
            &generation.name,
            self.reindex_options,
            stop,
        )
        .await?;
        self.finish_load(&generation).await?;
        (report.source_count, report.dest_count) =
            self.same_count_in_both(master, &generation).await?;
        info!(
            generation = %generation.name,
            master = %master.name,
            docs = report.dest_count,
            "Recommendation generation built."
        );
        Ok((generation, report))
    }

    /// Creates the recommendation generation of `master` empty, for a load
    /// that writes every document into both (`run.recommendation_build =
    /// "alongside"`); its `_meta` pairs it with `master`.
    pub async fn create_recommendation_generation(
        &self,
        master: &Generation,
        run_id: &str,
    ) -> Result<Generation, SearchError> {
        self.expect_family(master, Family::Master)?;
        self.create(Family::Recommendation, run_id, Some(&master.name))
            .await
    }

    /// Deletes a generation this run built and will not promote.
    pub async fn delete_generation(&self, generation: &Generation) -> Result<(), SearchError> {
        with_retry(&self.retry, "deleting a generation", || {
            generations::delete(&self.client, &generation.name)
        })
        .await
    }

    /// The recommendation generation's own count gate: after a refresh of
    /// both, it must hold as many documents as its master. Returns the two
    /// counts (master, recommendation).
    pub async fn same_count_in_both(
        &self,
        master: &Generation,
        recommendation: &Generation,
    ) -> Result<(u64, u64), SearchError> {
        self.refresh(master).await?;
        self.refresh(recommendation).await?;
        let in_master = self.count(&master.name, None).await?;
        let in_recommendation = self.count(&recommendation.name, None).await?;
        if in_master != in_recommendation {
            return Err(SearchError::Invalid(format!(
                "recommendation generation {} holds {in_recommendation} documents but master generation {} holds {in_master}",
                recommendation.name, master.name
            )));
        }
        Ok((in_master, in_recommendation))
    }

    fn expect_family(&self, generation: &Generation, family: Family) -> Result<(), SearchError> {
        if generation.family == family
            && generations::generation_time(&self.settings.names, family, &generation.name)
                .is_some()
        {
            Ok(())
        } else {
            Err(SearchError::Invalid(format!(
                "{} is not a {family} generation",
                generation.name
            )))
        }
    }

    /// Keeps the live and previous N generations of each family and deletes
    /// the rest (see `search::retention` for the exact rule).
    pub async fn apply_retention(
        &self,
        in_progress: &[String],
    ) -> Result<RetentionReport, SearchError> {
        let listing = self.list_generations().await?;
        let plan = retention::plan(&listing, self.settings.retention.keep_previous, in_progress);
        retention::apply(&self.client, plan).await
    }

    /// Every generation of both families, oldest first.
    pub async fn list_generations(&self) -> Result<Vec<GenerationInfo>, SearchError> {
        with_retry(&self.retry, "listing the generations", || {
            generations::list(&self.client, &self.settings.names)
        })
        .await
    }

    /// The master and recommendation generations behind the write aliases.
    pub async fn live_generations(&self) -> Result<(Option<String>, Option<String>), SearchError> {
        let primary: Vec<String> = Family::ALL
            .iter()
            .filter_map(|f| aliases::primary_alias(&self.specs, *f).map(|s| s.name.clone()))
            .collect();
        let now = with_retry(&self.retry, "reading the aliases", || {
            aliases::current(&self.client, &primary)
        })
        .await?;
        let live = |family| {
            aliases::primary_alias(&self.specs, family)
                .and_then(|s| now.holders_of(&s.name).last().cloned())
        };
        Ok((live(Family::Master), live(Family::Recommendation)))
    }

    /// Deletes generations still `building` that hold no alias and are not
    /// in `keep` (the generations of runs that are alive). Returns their names.
    pub async fn delete_orphans(&self, keep: &[String]) -> Result<Vec<String>, SearchError> {
        let orphans: Vec<String> = self
            .list_generations()
            .await?
            .into_iter()
            .filter(|g| {
                g.state() == GenerationState::Building
                    && !g.holds_alias()
                    && !keep.contains(&g.name)
            })
            .map(|g| g.name)
            .collect();
        let plan = retention::RetentionPlan {
            keep: Vec::new(),
            delete: orphans,
        };
        let report = retention::apply(&self.client, plan).await?;
        if !report.deleted.is_empty() {
            info!(deleted = ?report.deleted, "Orphan generations deleted.");
        }
        Ok(report.deleted)
    }
}
