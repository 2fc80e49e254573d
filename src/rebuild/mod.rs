//! The rebuild: the blue/green engine that builds, validates, promotes, rolls
//! back and retires generations, and the validation gates it applies.

pub mod engine;
pub mod gates;
pub mod progress;
pub mod run;
