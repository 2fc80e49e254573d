//! The operations behind each command: thin orchestration over the
//! library, with `anyhow` context and the report each prints.

pub mod adopt;
pub mod config;
pub mod generations;
pub mod healthcheck;
pub mod live;
pub mod mongo;
pub mod rollback;
pub mod run;
pub mod serve;
pub mod smoke;
pub mod status;

use crate::rebuild::is_refusal;

/// Exit codes: 1 for a failure, 3 when an operation was refused on purpose
/// (lease held, validation gate failed, nothing to roll back to, alias
/// conflict), so schedulers can tell them apart. (2 is bad usage, from the
/// argument parser.)
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if is_refusal(error) {
        3
    } else {
        1
    }
}

/// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C).
pub fn cancel_on_signals() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C stops gracefully.");
                let _ = tokio::signal::ctrl_c().await;
                cancel.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping at the next safe point."),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping at the next safe point."),
        }
        cancel.cancel();
    });
    token
}
