//! The revalidation domain: GMC numbers, TCS records, GMC doctors, the
//! merged master document with the rules that combine them, and the live
//! changes with the updates they make.

pub mod change;
pub mod connection;
pub mod gmc;
pub mod gmc_number;
pub mod master;
pub mod tcs;

pub use change::{update_for, Change, DocUpdate, Known};
pub use connection::{ConnectionLog, DoctorConnection, HiddenDiscrepancy};
pub use gmc::{GmcDoctor, GmcStatus};
pub use gmc_number::{GmcNumber, GmcNumberError};
pub use master::{merge, MasterDoctor};
pub use tcs::{
    parse_tcs_message, parse_tcs_message_within, parse_tcs_update, RejectReason, TcsMessage,
    TcsRecord, TcsUpdate,
};
