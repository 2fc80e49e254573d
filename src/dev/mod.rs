//! Development and test aids that ship with the binary: the deterministic
//! data generator, the seeding of MongoDB, and the TCS simulator.

pub mod datagen;
pub mod seed;
pub mod simulator;
