//! The revalidation domain: GMC numbers, TCS records, GMC doctors and the
//! merged master document, with the rules that combine them.

pub mod gmc;
pub mod gmc_number;
pub mod master;
pub mod tcs;

pub use gmc::{GmcDoctor, GmcStatus};
pub use gmc_number::{GmcNumber, GmcNumberError};
pub use master::{merge, MasterDoctor};
pub use tcs::{parse_tcs_message, RejectReason, TcsMessage, TcsRecord};
