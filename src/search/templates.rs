//! Index templates: the JSON files in `index-templates/` that define each
//! family's serving settings, build settings, mappings and aliases. The
//! files are compiled into the binary (they stay the one source of truth),
//! so a release binary copied to a server needs no source tree; the
//! `templates_dir` setting can point to other files instead.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::IndexShape;

/// The two index families a rebuild produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Master,
    Recommendation,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Master, Family::Recommendation];

    /// The template built into the binary: `index-templates/<family>.json`
    /// as it was at build time.
    pub fn builtin_text(self) -> &'static str {
        match self {
            Family::Master => include_str!("../../index-templates/masterdoctorindex.json"),
            Family::Recommendation => {
                include_str!("../../index-templates/recommendationindex.json")
            }
        }
    }

    /// The template file name, also the logical family name.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Master => "masterdoctorindex",
            Family::Recommendation => "recommendationindex",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read index template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index template {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("index template {path} lacks `{key}` (an object)")]
    Missing { path: PathBuf, key: &'static str },
}

/// A loaded template. Alias names in it are logical; callers qualify them.
#[derive(Clone, Debug)]
pub struct IndexTemplate {
    pub family: Family,
    /// Settings a generation serves with.
    pub settings: Value,
    /// Settings a generation loads with (no refresh, no replicas).
    pub build_settings: Value,
    pub mappings: Value,
    /// Logical alias name to its definition (`filter`, `is_write_index`).
    pub aliases: Map<String, Value>,
    /// Hash of the file's content, recorded in each generation's `_meta`.
    pub sha256: String,
}

impl IndexTemplate {
    /// The template of `family`: from `dir` when given, else the one built
    /// into the binary.
    pub fn resolve(dir: Option<&Path>, family: Family) -> Result<Self, TemplateError> {
        match dir {
            Some(dir) => Self::load(dir, family),
            None => Self::builtin(family),
        }
    }

    /// The template built into the binary.
    pub fn builtin(family: Family) -> Result<Self, TemplateError> {
        let path = PathBuf::from(format!(
            "(built in) index-templates/{}.json",
            family.as_str()
        ));
        Self::parse(&path, family, family.builtin_text())
    }

    /// The template file `<dir>/<family>.json`.
    pub fn load(dir: &Path, family: Family) -> Result<Self, TemplateError> {
        let path = dir.join(format!("{}.json", family.as_str()));
        let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, family, &text)
    }

    pub fn parse(path: &Path, family: Family, text: &str) -> Result<Self, TemplateError> {
        let root: Value = serde_json::from_str(text).map_err(|source| TemplateError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let object = |key: &'static str| -> Result<Value, TemplateError> {
            match root.get(key) {
                Some(v @ Value::Object(_)) => Ok(v.clone()),
                _ => Err(TemplateError::Missing {
                    path: path.to_path_buf(),
                    key,
                }),
            }
        };
        let aliases = match object("aliases")? {
            Value::Object(map) => map,
            _ => unreachable!("object() returns objects"),
        };
        Ok(Self {
            family,
            settings: object("settings")?,
            build_settings: object("build_settings")?,
            mappings: object("mappings")?,
            aliases,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// The body that creates a generation: build settings over serving
    /// settings, the mappings with `meta` in `_meta`, and no aliases (those
    /// move only at promotion).
    pub fn create_body(&self, meta: Value) -> Value {
        let mut settings = self.settings.clone();
        merge_json(&mut settings, &self.build_settings);
        let mut mappings = self.mappings.clone();
        if let Value::Object(m) = &mut mappings {
            m.insert("_meta".into(), meta);
        }
        serde_json::json!({ "settings": settings, "mappings": mappings })
    }

    /// This template with the shards and replicas of the configuration in
    /// its serving settings, over whatever the file says: the deployment
    /// decides them (`index.number_of_shards`, `index.number_of_replicas`).
    /// The build settings keep no replicas while loading either way.
    pub fn shaped(mut self, shape: &IndexShape) -> Self {
        let mut index = shape.number_of_replicas.index_settings();
        index["number_of_shards"] = shape.number_of_shards.into();
        if let Some(Value::Object(serving)) = self.settings.get_mut("index") {
            serving.remove("number_of_replicas");
            serving.remove("auto_expand_replicas");
        }
        merge_json(&mut self.settings, &serde_json::json!({ "index": index }));
        self
    }

    /// The names of the mapped fields.
    pub fn field_names(&self) -> Vec<String> {
        self.mappings
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Deep-merges `overlay` into `base` (objects merge, other values replace).
pub fn merge_json(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge_json(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/index-templates"))
    }

    #[test]
    fn the_configured_shards_and_replicas_replace_the_templates_and_loading_keeps_none() {
        use crate::config::Replicas;
        use crate::search::generations::serving_settings_update;
        let shape = |replicas| IndexShape {
            number_of_shards: 2,
            number_of_replicas: replicas,
            ..IndexShape::default()
        };
        let fixed = IndexTemplate::builtin(Family::Master)
            .unwrap()
            .shaped(&shape(Replicas::Fixed(1)));
        let index = &fixed.settings["index"];
        assert_eq!(index["number_of_shards"], 2);
        assert_eq!(index["number_of_replicas"], 1);
        assert_eq!(index["auto_expand_replicas"], false);
        let created = fixed.create_body(Value::Null);
        assert_eq!(created["settings"]["index"]["number_of_replicas"], 0);
        assert_eq!(created["settings"]["index"]["number_of_shards"], 2);
        let finish = serving_settings_update(&fixed);
        assert_eq!(finish["index"]["number_of_replicas"], 1);
        assert_eq!(finish["index"]["auto_expand_replicas"], false);
        let auto = IndexTemplate::builtin(Family::Recommendation)
            .unwrap()
            .shaped(&shape(Replicas::AutoExpand("0-all".into())));
        assert_eq!(auto.settings["index"]["auto_expand_replicas"], "0-all");
        assert!(auto.settings["index"].get("number_of_replicas").is_none());
        let finish = serving_settings_update(&auto);
        assert_eq!(finish["index"]["auto_expand_replicas"], "0-all");
        assert_eq!(finish["index"]["number_of_replicas"], Value::Null);
    }

    #[test]
    fn the_built_in_templates_are_the_files_of_index_templates() {
        for family in Family::ALL {
            let built_in = IndexTemplate::builtin(family).unwrap();
            let file = IndexTemplate::load(&dir(), family).unwrap();
            assert_eq!(built_in.sha256, file.sha256, "{family}");
            let resolved = IndexTemplate::resolve(None, family).unwrap();
            assert_eq!(resolved.sha256, file.sha256);
        }
    }

    /// DESIGN.md §3, the field table of a master document.
    const DESIGN_FIELDS: &[&str] = &[
        "gmcReferenceNumber",
        "doctorFirstName",
        "doctorLastName",
        "submissionDate",
        "tcsPersonId",
        "programmeName",
        "membershipType",
        "membershipStartDate",
        "membershipEndDate",
        "curriculumEndDate",
        "programmeOwner",
        "tcsDesignatedBody",
        "placementGrade",
        "designatedBody",
        "tisStatus",
        "gmcStatus",
        "underNotice",
        "admin",
        "existsInGmc",
        "lastUpdatedDate",
        "updatedAt",
    ];

    #[test]
    fn both_templates_parse_and_map_every_design_field() {
        for family in Family::ALL {
            let t = IndexTemplate::load(&dir(), family).unwrap();
            let fields = t.field_names();
            for f in DESIGN_FIELDS {
                assert!(fields.iter().any(|x| x == f), "{family}: {f} is not mapped");
            }
        }
    }

    #[test]
    fn master_template_defines_the_four_aliases_with_their_filters() {
        let t = IndexTemplate::load(&dir(), Family::Master).unwrap();
        let names: Vec<_> = t.aliases.keys().map(String::as_str).collect();
        for a in [
            "masterdoctorindex",
            "current_connections",
            "discrepancies",
            "recommendations",
        ] {
            assert!(names.contains(&a), "missing alias {a}");
        }
        assert_eq!(t.aliases["masterdoctorindex"]["is_write_index"], true);
        assert!(t.aliases["current_connections"]["filter"].is_object());
        assert_eq!(
            t.aliases["discrepancies"]["filter"]["script"]["script"]["lang"],
            "painless"
        );
        let reco = IndexTemplate::load(&dir(), Family::Recommendation).unwrap();
        assert!(reco.aliases.contains_key("recommendationindex"));
    }

    #[test]
    fn string_fields_keep_their_keyword_sub_field_and_sortable_text() {
        let t = IndexTemplate::load(&dir(), Family::Master).unwrap();
        let p = &t.mappings["properties"];
        for f in [
            "designatedBody",
            "tcsDesignatedBody",
            "underNotice",
            "membershipType",
        ] {
            assert_eq!(p[f]["type"], "text", "{f}");
            assert_eq!(p[f]["fields"]["keyword"]["type"], "keyword", "{f}");
        }
        for f in [
            "doctorLastName",
            "doctorFirstName",
            "gmcReferenceNumber",
            "programmeName",
        ] {
            assert_eq!(p[f]["fielddata"], true, "{f} must stay sortable");
        }
        assert_eq!(p["submissionDate"]["type"], "date");
    }

    #[test]
    fn create_body_uses_build_settings_and_records_meta() {
        let t = IndexTemplate::load(&dir(), Family::Master).unwrap();
        let body = t.create_body(serde_json::json!({"run_id": "r1"}));
        assert_eq!(body["settings"]["index"]["refresh_interval"], "-1");
        assert_eq!(body["settings"]["index"]["number_of_replicas"], 0);
        assert_eq!(body["settings"]["index"]["number_of_shards"], 1);
        assert_eq!(body["mappings"]["_meta"]["run_id"], "r1");
        assert!(body.get("aliases").is_none());
    }
}
