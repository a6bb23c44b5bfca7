//! A component's own description of its HTTP API: the `edgeinfer:openapi` custom section its
//! build embeds (paths relative to its route, and the schemas they use).

use anyhow::{Context, Result};

/// Name of the custom section in which a component describes its HTTP API.
const OPENAPI_SECTION: &str = "edgeinfer:openapi";

/// The JSON of the first `edgeinfer:openapi` custom section anywhere in `bytes` (nested modules
/// and components included), if there is one.
pub fn api_description(bytes: &[u8]) -> Result<Option<serde_json::Value>> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::CustomSection(section) = payload?
            && section.name() == OPENAPI_SECTION
        {
            let value = serde_json::from_slice(section.data()).context("the section is not JSON")?;
            return Ok(Some(value));
        }
    }
    Ok(None)
}
