//! What a run leaves in its output folder: `latest.json`, the [`Report`]
//! as compact JSON (it carries thousands of samples; `scripts/bench-chart.py`
//! draws it), and `latest.txt` beside it, the summary for people.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Report;

/// The files written, and the summary that went into `latest.txt`.
pub struct Written {
    pub json: PathBuf,
    pub summary: String,
}

impl Report {
    /// Writes `latest.json` and `latest.txt` into `out` (which must exist).
    pub fn write_files(&self, out: &Path) -> anyhow::Result<Written> {
        let json = out.join("latest.json");
        std::fs::write(&json, serde_json::to_vec(self)?)
            .with_context(|| format!("while writing {}", json.display()))?;
        let summary = self.summary();
        std::fs::write(out.join("latest.txt"), summary.trim_start())?;
        Ok(Written { json, summary })
    }
}
