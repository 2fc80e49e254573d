//! The operations behind each command: thin orchestration over the library,
//! with `anyhow` context and the report each prints.

pub mod generations;
pub mod rollback;
pub mod run;
pub mod seed;
pub mod simulator;
pub mod smoke;
pub mod status;

/// Exit codes: 1 for a failure, 3 when a run was refused (lease held,
/// validation gate failed, alias conflict), so schedulers can tell them apart.
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.downcast_ref::<Refused>().is_some()) {
        3
    } else {
        1
    }
}

/// A run that was refused on purpose, as opposed to one that broke.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);
