//! What else the machine did while a part was measured, kept in the report
//! and warned about when it is more than noise: the documents and queries
//! OpenSearch served for indices outside the benchmark's prefix (during A
//! and C), and the CPU that went to processes outside the measurement.

use std::collections::BTreeMap;

use rebuilder::search::SearchClient;

use crate::indices;
use crate::process::CpuUsage;
use crate::report::{ForeignLoad, Report};

/// Above this share of the machine spent on other work, a figure is flagged.
pub const FOREIGN_WARNING_SHARE: f64 = 0.10;

/// Records what the node did for others since `before`, and warns when it
/// is more than noise.
pub async fn note_foreign(
    search: &SearchClient,
    prefix: &str,
    before: &BTreeMap<String, (u64, u64)>,
    during: &str,
    report: &mut Report,
) {
    let Ok(after) = indices::activity(search).await else {
        return;
    };
    let (docs_indexed, queries) = indices::foreign_activity(before, &after, prefix);
    if docs_indexed > 1000 || queries > 1000 {
        report.warnings.push(format!(
            "{during} shared the node: OpenSearch indexed {docs_indexed} documents and ran {queries} \
             queries for others meanwhile; rerun on a quiet stack"
        ));
    }
    report.foreign_opensearch.push(ForeignLoad {
        during: during.to_string(),
        docs_indexed,
        queries,
    });
}

/// Warns when A or C lost more than [`FOREIGN_WARNING_SHARE`] of the
/// machine to other work. A needs OpenSearch alone; C needs the whole
/// stack. CPU anything else used meanwhile was taken from the measurement.
pub fn warn_of_foreign_cpu(report: &mut Report) {
    let busy = [
        (
            "A",
            report.a_cpu.as_ref(),
            report
                .a_cpu
                .as_ref()
                .map(|c| c.share_outside(&["opensearch", "bench"])),
        ),
        (
            "C",
            report.c_rebuilder.as_ref().and_then(|c| c.cpu.as_ref()),
            report
                .c_rebuilder
                .as_ref()
                .and_then(|c| c.cpu.as_ref())
                .map(CpuUsage::foreign_share),
        ),
    ];
    let mut warnings = Vec::new();
    for (part, cpu, share) in busy {
        if let (Some(cpu), Some(share)) = (cpu, share) {
            if share > FOREIGN_WARNING_SHARE {
                warnings.push(format!(
                    "{part} was disturbed: {:.0}% of the machine went to work outside it ({}); \
                     rerun on a quiet machine",
                    share * 100.0,
                    cpu.line()
                ));
            }
        }
    }
    report.warnings.extend(warnings);
}
