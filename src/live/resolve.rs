//! Turning a batch of changes into document updates: one `$in` lookup of
//! the GMC doctors the TCS changes need (for the shared fields and for a
//! doctor that must be created whole) and one aggregation for the latest
//! outcomes, then [`update_for`] per change. Used by the live applier and
//! by a rebuild's catch-up alike.

use std::collections::HashMap;

use crate::domain::{update_for, Change, GmcNumber, Known};
use crate::search::updates::UpdateItem;
use crate::sources::gmc::GmcSource;
use crate::sources::SourceError;

/// The updates of `changes`, in their order.
pub async fn resolve(
    gmc: &GmcSource,
    changes: &[Change],
    updated_at: &str,
) -> Result<Vec<UpdateItem>, SourceError> {
    let mut need_doctor: Vec<GmcNumber> = changes
        .iter()
        .filter(|c| matches!(c, Change::Tcs { .. }))
        .map(|c| c.number().clone())
        .collect();
    need_doctor.sort_unstable();
    need_doctor.dedup();
    let mut need_outcome: Vec<GmcNumber> = changes
        .iter()
        .filter(|c| !matches!(c, Change::DoctorLeft { .. }))
        .map(|c| c.number().clone())
        .collect();
    need_outcome.sort_unstable();
    need_outcome.dedup();
    let doctors: HashMap<GmcNumber, _> = gmc
        .doctors_by_number(&need_doctor)
        .await?
        .into_iter()
        .collect();
    let outcomes = gmc.outcomes_of(&need_outcome).await?;
    Ok(changes
        .iter()
        .map(|change| {
            let number = change.number();
            let known = Known {
                doctor: doctors.get(number).cloned(),
                outcome: outcomes.get(number).copied(),
            };
            UpdateItem {
                id: number.as_str().to_string(),
                update: update_for(change, &known, updated_at),
            }
        })
        .collect())
}
