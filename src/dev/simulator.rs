//! The TCS simulator: answers `syncStart` on the real exchange by publishing
//! the generated trainees, then `syncEnd`. (Being written.)
