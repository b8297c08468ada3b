//! The committed `openapi/openapi.json` must be exactly what the code generates.

use std::path::Path;

#[test]
fn the_committed_openapi_document_is_fresh() {
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let generated = mpl_api::openapi::document_json();
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();

    assert!(
        committed == generated,
        "{} is stale or missing; refresh it with:\n\n    \
         cargo run -p mpl-api --bin mpl-server -- openapi > openapi/openapi.json\n",
        committed_path.display()
    );
}

#[test]
fn every_v1_operation_requires_the_bearer_token_and_health_does_not() {
    let document: serde_json::Value =
        serde_json::from_str(&mpl_api::openapi::document_json()).expect("valid JSON");

    assert_eq!(document["security"][0]["bearer"], serde_json::json!([]));
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/datasets"));
    assert!(paths.contains_key("/v1/checkpoints/{id}/files/{name}"));
    assert!(paths.contains_key("/v1/tokens"));
    assert_eq!(
        document["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
}
