//! The operations behind each command: thin orchestration over the
//! library, with `anyhow` context and the report each prints.

pub mod config;
pub mod generations;
pub mod rollback;
pub mod run;
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
