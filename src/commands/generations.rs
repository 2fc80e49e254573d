//! `rebuilder generations`: a table of every generation of both families:
//! name, created, document count, size, aliases held, state and the run
//! that built it.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::rebuild::engine::Engine;
use crate::search::GenerationInfo;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let engine = Engine::new(settings)
        .await
        .context("while connecting to OpenSearch")?;
    let listing = engine
        .list_generations()
        .await
        .context("while listing generations")?;
    if listing.is_empty() {
        println!("No generations (prefix {:?}).", settings.names.prefix);
    } else {
        print!("{}", table(&listing));
    }
    Ok(ExitCode::SUCCESS)
}

/// The listing as an aligned text table, newest first.
pub fn table(listing: &[GenerationInfo]) -> String {
    let header = ["NAME", "CREATED", "DOCS", "SIZE", "STATE", "ALIASES", "RUN"];
    let mut rows: Vec<[String; 7]> = listing
        .iter()
        .rev()
        .map(|g| {
            [
                g.name.clone(),
                g.created.clone(),
                g.docs.to_string(),
                human_bytes(g.size_bytes),
                g.state().to_string(),
                if g.aliases.is_empty() {
                    "-".into()
                } else {
                    g.aliases.join(",")
                },
                g.run_id().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    rows.insert(0, header.map(str::to_string));
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == 2 || i == 3 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Family;

    #[test]
    fn the_table_lists_newest_first_with_aliases_and_run() {
        let g = |n: u32, aliases: Vec<String>| GenerationInfo {
            name: format!("masterdoctorindex-20260101-00000{n}"),
            family: Family::Master,
            created: "2026-01-01T00:00:00Z".into(),
            docs: 1000 * n as u64,
            size_bytes: 2048,
            aliases,
            meta: None,
        };
        let t = table(&[
            g(1, vec![]),
            g(
                2,
                vec!["current_connections".into(), "masterdoctorindex".into()],
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(
            lines[1].contains("-000002")
                && lines[1].contains("current_connections,masterdoctorindex")
        );
        assert!(lines[2].contains("-000001") && lines[2].contains("2.0 KiB"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
