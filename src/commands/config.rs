//! `rebuilder config check`: loads the configuration as every command does
//! (defaults, the file, `REBUILDER_*` variables), validates it, loads the
//! index templates it names, and prints the effective configuration with
//! every secret redacted. Exits non-zero, naming the key, when it is invalid.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::search::{Family, IndexTemplate};

pub fn check(settings: &Settings) -> anyhow::Result<ExitCode> {
    let effective = toml::to_string_pretty(&settings.redacted())
        .context("while printing the effective configuration")?;
    println!("# The effective configuration (secrets redacted).");
    print!("{effective}");
    println!();
    for family in Family::ALL {
        let dir = settings.templates_dir.as_deref();
        let template = IndexTemplate::resolve(dir, family)
            .with_context(|| format!("while loading the {family} template"))?;
        let source = match dir {
            Some(dir) => format!("{}", dir.join(format!("{family}.json")).display()),
            None => "built into the binary".to_string(),
        };
        println!(
            "# template {family}: {source}, sha256 {}, {} aliases",
            &template.sha256[..12],
            template.aliases.len()
        );
    }
    println!("# MongoDB indexes: not checked here (config check connects to nothing); `rebuilder smoke` checks them, and `rebuilder mongo ensure-indexes` lists and creates them.");
    println!("# The configuration is valid.");
    Ok(ExitCode::SUCCESS)
}
