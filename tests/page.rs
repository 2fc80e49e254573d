//! The operators' page in a real browser: Debian's headless Chromium,
//! driven through chromedriver (WebDriver), against `rebuilder serve` on
//! the real stack. The page must show what the API reports, start a run
//! with the token (and refuse without it, or while a run works), follow the
//! run live without a reload, and roll back. Screenshots go to
//! `target/page-screenshots/`.
//!
//! Needs the local stack (`scripts/stack start`) and the browser
//! (`scripts/install-chromium`; `scripts/test` installs it).

mod common;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use common::TestEnv;
use rebuilder_dev::datagen::DatasetSpec;
use run_helpers::*;
use serde_json::{json, Value};
use service_helpers::{Service, TOKEN};
use webdriver::Browser;

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/page-screenshots")
        .join(name)
}

/// The text of `#action-result` once it holds something new.
async fn action_answer(browser: &Browser, before: &str) -> String {
    browser
        .wait_for(
            "the answer of the action",
            Duration::from_secs(30),
            &format!(
                "const t = document.querySelector('#action-result').innerText.trim(); return t && t !== {} ? t : null;",
                json!(before)
            ),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Clicks an action button, then Confirm in its dialog; returns the answer.
async fn act(browser: &Browser, button: &str) -> String {
    let before = browser.text("#action-result").await;
    browser
        .eval(
            "document.querySelector('#action-result').textContent = '';",
            json!([]),
        )
        .await;
    browser.click(button).await;
    browser
        .wait_for(
            "the confirmation dialog",
            Duration::from_secs(5),
            "return document.querySelector('#confirm-dialog').open;",
        )
        .await;
    let says = browser.text("#confirm-dialog").await;
    assert!(
        !says.trim().is_empty(),
        "the confirmation says what will move"
    );
    browser.click("#confirm").await;
    let _ = before;
    action_answer(browser, "").await
}

/// The aliases the page shows for `generation` ("" when the row is absent).
const ALIASES_OF: &str = "const row = document.querySelector(`#generations tr[data-generation=\"${arguments[0]}\"] .aliases`); return row ? row.innerText : '';";

async fn page_aliases_of(browser: &Browser, generation: &str) -> String {
    browser
        .eval(ALIASES_OF, json!([generation]))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_page_alias(browser: &Browser, generation: &str, alias: &str) {
    let script = format!(
        "const row = document.querySelector('#generations tr[data-generation=\"{generation}\"] .aliases'); return row && row.innerText.split(/,\\s*/).includes({}) ;",
        json!(alias)
    );
    browser
        .wait_for(
            &format!("{alias} on {generation}"),
            Duration::from_secs(20),
            &script,
        )
        .await;
}

async fn docs_written(browser: &Browser) -> u64 {
    browser
        .eval(
            "const e = document.querySelector('#docs-written'); return e ? Number(e.dataset.value || 0) : 0;",
            json!([]),
        )
        .await
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_a_rebuild_refuses_what_it_must_and_rolls_back() {
    logs();
    let env = TestEnv::new("page");
    let first = DatasetSpec::new(41, 1500);
    seed(&env, &first).await;
    let tcs = simulator_once(&env, first);
    let a = rebuild(&env).await.expect("the first run");
    tcs.await.unwrap().unwrap();
    let generation_a = a.promotion.expect("promoted").master.to;
    let master_alias = env.name("masterdoctorindex");

    // The second data set is in place before the service (and its live
    // applier) starts. Small batches, one at a time: the second run lasts
    // long enough for the page to be seen following it.
    let second = DatasetSpec::new(41, 20_000).with_variant(1);
    seed(&env, &second).await;
    let service = Service::start(
        &env,
        &[
            ("REBUILDER_BULK__MAX_BATCH_DOCS", "200"),
            ("REBUILDER_BULK__CONCURRENCY", "1"),
        ],
    );
    // Tall enough that a screenshot holds the whole page, chart and tables.
    let browser = Browser::start(1280, 2400).await;
    browser.goto(&format!("{}/", service.base)).await;

    // The live generation and its aliases, as the API reports them.
    let (_, listed) = service.get("/api/generations").await;
    wait_page_alias(&browser, &generation_a, &master_alias).await;
    let shown = page_aliases_of(&browser, &generation_a).await;
    for alias in listed["master"][0]["aliases"].as_array().unwrap() {
        assert!(
            shown.contains(alias.as_str().unwrap()),
            "the page shows {alias} on {generation_a}: {shown}"
        );
    }
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "no console error on load"
    );
    // Every control is labelled and reachable by keyboard.
    let unlabelled = browser
        .eval(
            "return [...document.querySelectorAll('input, select, button')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.innerText.trim()).map(e => e.outerHTML);",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");

    // Without a token: refused in words, and nothing starts.
    let answer = act(&browser, "#rebuild").await;
    assert!(
        answer.to_lowercase().contains("token"),
        "the page says the token is required: {answer}"
    );
    let (_, status) = service.get("/api/sync/status").await;
    assert_eq!(status["running"], false, "{status}");
    assert_eq!(status["run"]["_id"], a.id.as_str(), "no new run: {status}");

    // With the token: a run starts and the page follows it.
    browser.type_into("#token", TOKEN).await;
    browser.click("#save-token").await;
    let tcs = simulator_once(&env, second);
    let answer = act(&browser, "#rebuild").await;
    let (_, status) = service.get("/api/sync/status").await;
    let run_id = status["run"]["_id"].as_str().unwrap().to_string();
    assert_ne!(run_id, a.id);
    assert!(
        answer.contains(&run_id),
        "the page names the started run {run_id}: {answer}"
    );

    // A second click while it works: already running, with its id.
    let again = act(&browser, "#rebuild").await;
    assert!(
        again.contains(&run_id) && again.to_lowercase().contains("running"),
        "the page says a run is already running: {again}"
    );

    // The phases advance and the count rises, without a reload.
    let mut counts = Vec::new();
    let mut phases_done = Vec::new();
    let mut shot = false;
    for _ in 0..600 {
        let (_, now) = service.get("/api/sync/status").await;
        let done = browser
            .eval(
                "return document.querySelectorAll('#phase-steps li[data-state=\"done\"]').length;",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap_or(0);
        let written = docs_written(&browser).await;
        if counts.last() != Some(&written) {
            counts.push(written);
        }
        if phases_done.last() != Some(&done) {
            phases_done.push(done);
        }
        if !shot && written > 2000 && now["running"] == true {
            browser.screenshot(&screenshot_path("during-run.png")).await;
            shot = true;
        }
        if now["running"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tcs.await.unwrap().unwrap();
    let rising: Vec<_> = counts.iter().filter(|c| **c > 0).collect();
    assert!(
        rising.len() >= 2 && rising.windows(2).all(|w| w[0] < w[1]),
        "the document count rose in steps on the page: {counts:?}"
    );
    assert!(
        phases_done.len() >= 3,
        "the phase list advanced on the page: {phases_done:?}"
    );
    assert!(shot, "a screenshot was taken during the run");
    let (_, run) = service.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(
        run["outcome"], "succeeded",
        "{}: {}",
        run["error"], run["gates"]
    );
    let finished = browser
        .wait_for(
            "the finished run in the table",
            Duration::from_secs(30),
            &format!(
                "const c = document.querySelector('#runs tr[data-run-id=\"{run_id}\"] .outcome'); return c && c.innerText.includes('succeeded') ? c.innerText : null;"
            ),
        )
        .await;
    assert!(finished.as_str().unwrap().contains("succeeded"));
    let (_, run) = service.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(run["outcome"], "succeeded", "{}", run["gates"]);
    let generation_b = run["promotion"]["master"]["to"]
        .as_str()
        .unwrap()
        .to_string();
    wait_page_alias(&browser, &generation_b, &master_alias).await;
    browser.screenshot(&screenshot_path("after-run.png")).await;
    assert!(
        run["progress"].as_array().is_some_and(|p| p.len() >= 2),
        "the run recorded its progress for the chart: {}",
        run["progress"]
    );

    // Roll back to the previous generation: the aliases move, the page says so.
    let answer = act(&browser, "#rollback").await;
    assert!(
        answer.contains(&generation_a),
        "the page names where the aliases went: {answer}"
    );
    let (_, listed) = service.get("/api/generations").await;
    assert_eq!(listed["aliases"][&master_alias], json!([generation_a]));
    wait_page_alias(&browser, &generation_a, &master_alias).await;
    assert!(!page_aliases_of(&browser, &generation_b)
        .await
        .contains(&master_alias));

    // A phone's width: the page stacks instead of overflowing.
    browser.set_size(390, 844).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let overflow: Value = browser
        .eval(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().unwrap_or(0) <= 1,
        "the page is wider than a phone by {overflow} px"
    );
    browser.screenshot(&screenshot_path("phone.png")).await;
    // Chromium itself logs every 401 and 409 answer as a failed resource:
    // those are the refusals this test asked for. Nothing else may appear.
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| {
            !(e.contains("the server responded with a status of 401")
                || e.contains("the server responded with a status of 409"))
        })
        .collect();
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "no console error during the run"
    );
    browser.quit().await;
    env.cleanup().await;
}
