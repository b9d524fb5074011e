//! The report's published contract, `docs/report.schema.json`: every JSON report the end-to-end
//! tests read is checked against it.

use std::sync::OnceLock;

use serde_json::Value;

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).expect("docs/report.schema.json is a valid schema")
    })
}

/// Panics with every violation when `report` does not match the schema.
pub fn assert_valid(report: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "the report does not match docs/report.schema.json:\n{}",
        errors.join("\n")
    );
}
