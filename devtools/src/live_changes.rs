//! Live changes for the demo: TCS updates on the update queue and GMC
//! changes in `doctorsForDB`, made the way TCS and GMC make them, on local
//! servers only; then a check that each one is in the live index, or the
//! time each takes to arrive there.

use std::time::{Duration, Instant};

use anyhow::Context;
use bson::doc;
use lapin::options::ConfirmSelectOptions;
use opensearch::http::Method;
use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use rebuilder::sources::tcs::{declare_topology, json_properties, publish_confirmed};
use rebuilder::sources::{mongo_client, rabbit_connection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::datagen::{Category, DatasetSpec};
use crate::guard::{check_amqp_uri, check_mongo_uri, is_loopback_host};

/// One change made: which doctor, which field, which value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeChange {
    pub id: String,
    pub field: String,
    pub value: String,
}

/// Refuses servers off loopback (the changes are generated data).
fn guard(settings: &Settings) -> anyhow::Result<()> {
    check_mongo_uri(settings.mongodb.uri.expose())?;
    check_amqp_uri(settings.rabbitmq.uri.expose())?;
    let host = url::Url::parse(&settings.opensearch.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    anyhow::ensure!(
        is_loopback_host(&host),
        "refusing OpenSearch at {host:?}: the development aids only use servers on loopback"
    );
    Ok(())
}

/// Makes `count` changes, one every `interval`, alternating a TCS update
/// (a new programme name) and a GMC change (a new designated body), on
/// doctors of the generated data set that both sources know.
/// `tag` goes into every value, so runs of the demo differ.
pub async fn make_changes(
    settings: &Settings,
    spec: &DatasetSpec,
    count: usize,
    interval: Duration,
    tag: &str,
    mut each: impl FnMut(&MadeChange),
) -> anyhow::Result<Vec<MadeChange>> {
    guard(settings)?;
    let connection = rabbit_connection(&settings.rabbitmq).await?;
    declare_topology(&connection, &settings.rabbitmq).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mongo = mongo_client(&settings.mongodb).await?;
    let doctors = mongo
        .database(&settings.mongodb.database)
        .collection::<bson::Document>(&settings.mongodb.doctors_collection);
    let mut made = Vec::with_capacity(count);
    let candidates: Vec<_> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .collect();
    anyhow::ensure!(
        !candidates.is_empty(),
        "the data set has no doctor in both sources"
    );
    for k in 0..count {
        let doctor = &candidates[(k * 7919) % candidates.len()];
        let change = if k % 2 == 0 {
            let value = format!("Live {tag} {k}");
            let mut body = doctor.tcs_messages[0].clone();
            body["programmeName"] = json!(value);
            publish_confirmed(
                &channel,
                &settings.rabbitmq.exchange,
                &settings.rabbitmq.update_routing_key,
                body.to_string().as_bytes(),
                json_properties(),
            )
            .await?;
            MadeChange {
                id: doctor.gmc_number.clone(),
                field: "programmeName".into(),
                value,
            }
        } else {
            let value = format!("1-LIVE{k}{}", tag.to_uppercase());
            doctors
                .update_one(
                    doc! {"_id": &doctor.gmc_number},
                    doc! {"$set": {"designatedBodyCode": &value}},
                )
                .await
                .context("while changing a doctor in doctorsForDB")?;
            MadeChange {
                id: doctor.gmc_number.clone(),
                field: "designatedBody".into(),
                value,
            }
        };
        each(&change);
        made.push(change);
        tokio::time::sleep(interval).await;
    }
    let _ = connection.close(200, "live changes made".into()).await;
    Ok(made)
}

/// The changes whose latest value is not (or not yet) in the live index
/// (the last change of each doctor and field counts).
pub async fn missing_from_index(
    settings: &Settings,
    changes: &[MadeChange],
) -> anyhow::Result<Vec<MadeChange>> {
    guard(settings)?;
    let client = SearchClient::new(&settings.opensearch)?;
    let alias = settings.names.master_family();
    let _ = client
        .request(Method::Post, &format!("/{alias}/_refresh"), &[], None)
        .await;
    let mut latest: std::collections::BTreeMap<(String, String), &MadeChange> = Default::default();
    for c in changes {
        latest.insert((c.id.clone(), c.field.clone()), c);
    }
    let mut missing = Vec::new();
    for change in latest.values() {
        let (status, doc) = client
            .request(
                Method::Get,
                &format!("/{alias}/_doc/{}", change.id),
                &[],
                None,
            )
            .await?;
        let shown = doc["_source"][&change.field].as_str().unwrap_or("");
        if status != 200 || shown != change.value {
            missing.push((*change).clone());
        }
    }
    Ok(missing)
}

/// How long one change takes to reach the live index.
pub async fn arrival(
    settings: &Settings,
    change: &MadeChange,
    within: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    while started.elapsed() < within {
        if missing_from_index(settings, std::slice::from_ref(change))
            .await?
            .is_empty()
        {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(None)
}
