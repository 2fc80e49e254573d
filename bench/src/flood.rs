//! The nightly flood (issue 23), measured: with `rebuilder serve` running
//! its live applier over a built index, every doctor of `doctorsForDB` is
//! rewritten at once (as GMC's nightly refresh does), a tenth of them get a
//! new recommendation, and TCS updates are published meanwhile. Measured:
//! the applier's drain rate, the time from the last write to the live
//! index being current, the applier's peak RSS, and the same flood again
//! with a `rebuilder run` started in the middle of it (its catch-up rounds,
//! its backlog at the pause and its pause). Beside them, C: a full rebuild
//! of the same data on the same stack, the figure the drain is held to.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, Document};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::full_run::{self, RebuilderBin, SimulatedService, Simulator};
use crate::process::read_status;
use crate::round3;
use rebuilder::config::Settings;
use rebuilder::live::backlog;
use rebuilder::search::SearchClient;
use rebuilder::sources::tcs::{json_properties, publish_confirmed};
use rebuilder_dev::datagen::{Category, DatasetSpec};

/// One flood, as the applier took it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodFigures {
    /// GMC change events made (doctor rewrites and recommendations).
    pub gmc_changes: u64,
    /// TCS updates published.
    pub tcs_updates: u64,
    /// Seconds from the first write to the last.
    pub write_secs: f64,
    /// Seconds from the first write until the live index showed every
    /// doctor's and every updated trainee's latest value.
    pub current_secs: f64,
    /// Seconds from the last write until then.
    pub after_last_write_secs: f64,
    /// Changes per second over `current_secs`.
    pub drain_per_sec: f64,
    /// The largest stream lag and queue depth the applier reported.
    pub max_stream_lag_secs: f64,
    pub max_queue_depth: u64,
}

/// The flood with a rebuild started in the middle of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodRebuildFigures {
    pub flood: FloodFigures,
    /// The rebuild's wall time.
    pub run_secs: f64,
    /// Its catch-up, as its run record says.
    pub catch_up: Value,
}

/// Everything one `--flood` measurement gives.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodReport {
    pub doctors: usize,
    pub gmc_doctors: u64,
    /// C: a full rebuild of the same data, seconds.
    pub full_rebuild_secs: f64,
    pub flood: FloodFigures,
    pub with_rebuild: FloodRebuildFigures,
    /// The `rebuilder serve` process's peak RSS (its applier), MiB.
    pub serve_peak_rss_mib: f64,
    pub command: String,
}

impl FloodReport {
    /// The summary a person reads.
    pub fn summary(&self) -> String {
        let f = &self.flood;
        let r = &self.with_rebuild;
        let c = &r.catch_up;
        let num = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        format!(
            "\nFlood benchmark: {} doctors ({} in doctorsForDB)\n\
             C, a full rebuild of the same data: {:.1} s\n\
             Flood: {} GMC changes + {} TCS updates, written in {:.1} s; live index current {:.1} s after the first write ({:.1} s after the last); drain {:.0} changes/s\n\
             \x20 backlog reported: stream lag up to {:.1} s, queue depth up to {}\n\
             \x20 goal: drained within C: {}\n\
             Flood with a rebuild in the middle: {} GMC changes + {} TCS updates; current {:.1} s after the first write ({:.1} s after the last); drain {:.0} changes/s\n\
             \x20 rebuild {:.1} s; catch-up {} rounds, {} replayed ({} coalesced), {} left at the pause, applier paused {} ms\n\
             \x20 goal: pause under 1 s: {}\n\
             rebuilder serve peak RSS: {:.0} MiB\n\
             Command: {}\n",
            self.doctors,
            self.gmc_doctors,
            self.full_rebuild_secs,
            f.gmc_changes,
            f.tcs_updates,
            f.write_secs,
            f.current_secs,
            f.after_last_write_secs,
            f.drain_per_sec,
            f.max_stream_lag_secs,
            f.max_queue_depth,
            if f.current_secs <= self.full_rebuild_secs { "met" } else { "missed" },
            r.flood.gmc_changes,
            r.flood.tcs_updates,
            r.flood.current_secs,
            r.flood.after_last_write_secs,
            r.flood.drain_per_sec,
            r.run_secs,
            num("rounds"),
            num("replayed"),
            num("coalesced"),
            num("backlogAtPause"),
            num("pausedMs"),
            if num("pausedMs") < 1000 { "met" } else { "missed" },
            self.serve_peak_rss_mib,
            self.command,
        )
    }
}

/// The `rebuilder serve` child: its applier is the one measured.
struct Serve {
    child: tokio::process::Child,
    pid: u32,
}

impl Serve {
    async fn start(bin: &RebuilderBin, settings: &Settings) -> anyhow::Result<Self> {
        let mut extra = bin.clone();
        extra.env.extend(
            [
                ("REBUILDER_SERVICE__LISTEN", "127.0.0.1:0"),
                ("REBUILDER_SERVICE__ALLOW_UNAUTHENTICATED", "true"),
                ("REBUILDER_SCHEDULE__ENABLED", "false"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut child = extra.spawn(&["serve"], "flood-serve.log")?;
        let pid = child.id().context("rebuilder serve exited at once")?;
        // Active once it has stored its first backlog report.
        let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("rebuilder serve exited ({status}); see target/bench-logs/flood-serve.log");
            }
            if backlog::read(&mongo, settings).await?.is_some() {
                return Ok(Self { child, pid });
            }
            if Instant::now() > deadline {
                bail!("the live applier of rebuilder serve did not report within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn peak_rss_mib(&self) -> f64 {
        read_status(self.pid).map_or(0.0, |m| m.hwm_kb as f64 / 1024.0)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// What one flood writes, and how to tell the live index shows it.
struct Flood<'a> {
    settings: &'a Settings,
    search: &'a SearchClient,
    spec: &'a DatasetSpec,
    /// Tells this flood's values from the last one's.
    mark: u32,
}

impl Flood<'_> {
    fn body(&self) -> String {
        format!("1-FLOOD{}", self.mark)
    }

    fn programme(&self) -> String {
        format!("Flood programme {}", self.mark)
    }

    /// Writes the flood: every doctor rewritten in one `updateMany`, a
    /// recommendation for every tenth doctor, TCS updates for every
    /// twentieth trainee, at once. Returns the change counts and when the
    /// last write ended.
    async fn write(&self) -> anyhow::Result<(u64, u64, Instant)> {
        let mongo = rebuilder::sources::mongo_client(&self.settings.mongodb).await?;
        let db = mongo.database(&self.settings.mongodb.database);
        let doctors = db.collection::<Document>(&self.settings.mongodb.doctors_collection);
        let recommendations =
            db.collection::<Document>(&self.settings.mongodb.recommendation_collection);
        let body = self.body();
        let rewrite = async {
            let r = doctors
                .update_many(doc! {}, doc! {"$set": {"designatedBodyCode": &body}})
                .await?;
            anyhow::Ok(r.modified_count)
        };
        let numbers: Vec<String> = self
            .spec
            .doctors()
            .filter(|d| d.gmc_doctor.is_some())
            .map(|d| d.gmc_number)
            .step_by(10)
            .collect();
        let mark = self.mark;
        let recommend = async {
            let mut n = 0u64;
            for chunk in numbers.chunks(1000) {
                let docs: Vec<Document> = chunk
                    .iter()
                    .map(|number| {
                        let submitted = bson::DateTime::from_millis(
                            1_893_456_000_000 + i64::from(mark) * 86_400_000,
                        );
                        doc! {
                            "gmcNumber": number,
                            "outcome": "REJECTED",
                            "recommendationType": "REVALIDATE",
                            "recommendationStatus": "SUBMITTED_TO_GMC",
                            "gmcSubmissionDate": submitted,
                            "actualSubmissionDate": submitted,
                        }
                    })
                    .collect();
                n += recommendations.insert_many(docs).await?.inserted_ids.len() as u64;
            }
            anyhow::Ok(n)
        };
        let publish = self.publish_tcs();
        let (rewritten, recommended, published) = tokio::join!(rewrite, recommend, publish);
        Ok((rewritten? + recommended?, published?, Instant::now()))
    }

    /// The trainees this flood updates: every twentieth with one message.
    fn trainees(&self) -> Vec<(String, Value)> {
        self.spec
            .doctors()
            .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
            .step_by(20)
            .map(|d| (d.gmc_number.clone(), d.tcs_messages[0].clone()))
            .collect()
    }

    async fn publish_tcs(&self) -> anyhow::Result<u64> {
        let r = &self.settings.rabbitmq;
        let connection = rebuilder::sources::rabbit_connection(r).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(Default::default())
            .await
            .context("while asking the broker for publisher confirms")?;
        let mut n = 0;
        for (_, mut body) in self.trainees() {
            body["programmeName"] = json!(self.programme());
            publish_confirmed(
                &channel,
                &r.exchange,
                &r.update_routing_key,
                body.to_string().as_bytes(),
                json_properties(),
            )
            .await?;
            n += 1;
        }
        let _ = connection.close(200, "bench: flood published".into()).await;
        Ok(n)
    }

    /// Whether the live index shows every rewritten doctor's body and every
    /// updated trainee's programme.
    async fn current(&self, gmc_doctors: u64, trainees: u64) -> anyhow::Result<bool> {
        let (bodies, programmes) = self.counts().await?;
        Ok(bodies >= gmc_doctors && programmes >= trainees)
    }

    /// What the live index shows of the flood, in words.
    async fn shown(&self, gmc_doctors: u64, trainees: u64) -> anyhow::Result<String> {
        let (bodies, programmes) = self.counts().await?;
        Ok(format!(
            "{bodies} of {gmc_doctors} doctors with the flood's designated body, {programmes} of {trainees} trainees with its programme"
        ))
    }

    /// Documents with this flood's designated body, and with its programme.
    async fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let alias = self.settings.names.master_family();
        let count = |field: &str, value: String| {
            let body = json!({"query": {"term": {field: value}}});
            let path = format!("/{alias}/_count");
            async move {
                let v = self
                    .search
                    .json(Method::Post, &path, &[], Some(&body))
                    .await?;
                anyhow::Ok(v["count"].as_u64().unwrap_or(0))
            }
        };
        Ok((
            count("designatedBody.keyword", self.body()).await?,
            count("programmeName.keyword", self.programme()).await?,
        ))
    }

    /// Writes the flood and waits until the live index is current; polls
    /// the applier's backlog report meanwhile.
    async fn measure(&self, gmc_doctors: u64) -> anyhow::Result<FloodFigures> {
        let mongo = rebuilder::sources::mongo_client(&self.settings.mongodb).await?;
        let trainees = self.trainees().len() as u64;
        let started = Instant::now();
        let written = self.write();
        tokio::pin!(written);
        let mut figures = FloodFigures::default();
        let mut last_write = None;
        let mut caught_up_since: Option<Instant> = None;
        let deadline = started + Duration::from_secs(7200);
        loop {
            let poll = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                done = &mut written, if last_write.is_none() => {
                    let (gmc, tcs, at) = done?;
                    figures.gmc_changes = gmc;
                    figures.tcs_updates = tcs;
                    figures.write_secs = round3((at - started).as_secs_f64());
                    last_write = Some(at);
                }
                _ = poll => {}
            }
            let mut idle = false;
            if let Ok(Some(report)) = backlog::read(&mongo, self.settings).await {
                figures.max_stream_lag_secs = figures
                    .max_stream_lag_secs
                    .max(round3(report.stream_lag_secs));
                figures.max_queue_depth =
                    figures.max_queue_depth.max(report.queue_depth.unwrap_or(0));
                idle = report.stream_lag_secs == 0.0 && report.queue_depth == Some(0);
            }
            if let Some(at) = last_write {
                // Caught up by its own account for a minute, yet not
                // current: changes were lost (say so rather than wait).
                caught_up_since = if idle {
                    caught_up_since.or(Some(Instant::now()))
                } else {
                    None
                };
                if caught_up_since.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                    bail!(
                        "the applier reports nothing waiting for 60 s, yet the live index does not show the flood: {}",
                        self.shown(gmc_doctors, trainees).await?
                    );
                }
                if self.current(gmc_doctors, trainees).await? {
                    let now = Instant::now();
                    figures.current_secs = round3((now - started).as_secs_f64());
                    figures.after_last_write_secs = round3((now - at).as_secs_f64());
                    figures.drain_per_sec = round3(
                        (figures.gmc_changes + figures.tcs_updates) as f64 / figures.current_secs,
                    );
                    return Ok(figures);
                }
            }
            if Instant::now() > deadline {
                bail!("the live index was not current two hours after the flood began");
            }
        }
    }
}

/// Measures the flood on `spec` (MongoDB seeded, nothing else built yet).
pub async fn measure(
    bin: &RebuilderBin,
    settings: &Settings,
    search: &SearchClient,
    spec: &DatasetSpec,
    run_timeout: Duration,
    command: String,
) -> anyhow::Result<FloodReport> {
    let mut report = FloodReport {
        doctors: spec.doctors,
        command,
        ..FloodReport::default()
    };
    let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;
    rebuilder_dev::seed::seed_mongo(&mongo, &settings.mongodb, spec)
        .await
        .context("while seeding MongoDB")?;
    report.gmc_doctors = mongo
        .database(&settings.mongodb.database)
        .collection::<Document>(&settings.mongodb.doctors_collection)
        .count_documents(doc! {})
        .await?;
    let simulator = Simulator::start(
        bin,
        settings,
        SimulatedService::Tcs,
        spec.doctors,
        spec.seed,
        "flood-simulator.log",
    )
    .await?;
    println!("C: a full rebuild of {} doctors ...", spec.doctors);
    let (baseline, _) = full_run::run_once(
        bin,
        search,
        settings,
        "flood-baseline",
        None,
        Duration::from_millis(50),
        run_timeout,
    )
    .await?;
    report.full_rebuild_secs = baseline.wall_secs;
    println!("   {:.1} s", baseline.wall_secs);

    let serve = Serve::start(bin, settings).await?;
    let result = async {
        println!("Flood: every doctor rewritten, a tenth recommended, TCS updates ...");
        let flood = Flood {
            settings,
            search,
            spec,
            mark: 1,
        };
        report.flood = flood.measure(report.gmc_doctors).await?;
        println!("   current after {:.1} s", report.flood.current_secs);

        println!("Flood again, with a rebuild running through it ...");
        let flood = Flood {
            settings,
            search,
            spec,
            mark: 2,
        };
        let run = {
            let (mut bin, search, settings) = (bin.clone(), search.clone(), settings.clone());
            // The flood moves every doctor to a new designated body while the
            // live index catches up, so against it the new generation shows
            // the old body emptied: the body-drift gate rightly refuses such a
            // mass move (it did once the merge ran beside the GMC read, when
            // the read saw the flood before the live applier had applied
            // it). This run measures the drain through a rebuild, not the
            // gate, so it allows the move.
            bin.env
                .push(("REBUILDER_GATES__MAX_BODY_LOSS".into(), "1.0".into()));
            tokio::spawn(async move {
                full_run::run_once(
                    &bin,
                    &search,
                    &settings,
                    "flood-rebuild",
                    None,
                    Duration::from_millis(50),
                    run_timeout,
                )
                .await
            })
        };
        // The flood begins once the run records live changes: TCS updates
        // made before would be lost to the new generation only because the
        // simulator's sync sends the generated records, not TCS's current
        // ones. The flood then outlasts the run, so its catch-up and its
        // pause happen in the middle of it.
        wait_recording(settings).await?;
        report.with_rebuild.flood = flood.measure(report.gmc_doctors).await?;
        let (run, _) = run.await.context("the rebuild task")??;
        report.with_rebuild.run_secs = run.wall_secs;
        let status = bin.status_json().await?;
        report.with_rebuild.catch_up = full_run::find_key(&status, "catchUp")
            .cloned()
            .unwrap_or(Value::Null);
        anyhow::Ok(())
    }
    .await;
    report.serve_peak_rss_mib = round3(serve.peak_rss_mib());
    serve.stop().await;
    simulator.stop().await;
    result?;
    Ok(report)
}

/// Waits until a run is under way (its record has a phase).
async fn wait_recording(settings: &Settings) -> anyhow::Result<()> {
    let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;
    let history = rebuilder::state::history::RunHistory::new(&mongo, &settings.mongodb);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let current = history.current_or_last().await?;
        if current.is_some_and(|r: rebuilder::rebuild::record::RunRecord| {
            r.outcome == rebuilder::rebuild::record::RunOutcome::Running && !r.phases.is_empty()
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the rebuild did not start within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
