//! The machine a report was measured on: cores, memory, OpenSearch's
//! version and heap, and the commit of the checkout (`git describe`).

use opensearch::http::Method;
use rebuilder::search::SearchClient;

use crate::report::Machine;

/// Describes this machine; a fact that cannot be read is 0 or empty.
pub async fn describe(search: &SearchClient, version: &str) -> Machine {
    let heap = search
        .json(
            Method::Get,
            "/_nodes/stats/jvm",
            &[("filter_path", "nodes.*.jvm.mem.heap_max_in_bytes")],
            None,
        )
        .await
        .ok()
        .and_then(|v| {
            v["nodes"]
                .as_object()?
                .values()
                .next()?
                .pointer("/jvm/mem/heap_max_in_bytes")?
                .as_u64()
        })
        .unwrap_or(0);
    let memory_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let git = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mb: memory_kb / 1024,
        opensearch_version: version.to_string(),
        opensearch_heap_mb: heap / 1_048_576,
        git_commit: git,
    }
}
