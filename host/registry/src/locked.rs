//! Spin's locked-app JSON (`spin.lock`), the document an app artifact carries as its
//! `application/vnd.fermyon.spin.application.v1+config` layer. Written from the format Spin
//! reads and writes (spin's `crates/locked-app/src/locked.rs`): components name their Wasm and
//! their files by content digest, and the triggers name components.
//!
//! Unknown fields are kept out of our way (ignored), but anything that changes what an app does and
//! that we cannot honour (host requirements, trigger dependencies, variables) is refused on pull.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The whole app: metadata, triggers, components.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedApp {
    /// 0 unless the app has host requirements (then 1).
    pub spin_lock_version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_understand: Vec<Value>,
    /// `name`, `version`, `description`, `trigger: {type}`, ...
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub host_requirements: Map<String, Value>,
    /// Spin application variables (`[variables]`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    pub triggers: Vec<LockedTrigger>,
    pub components: Vec<LockedComponent>,
}

impl LockedApp {
    /// The components the triggers route to, in trigger order.
    pub fn routed_components(&self) -> Vec<String> {
        let component = |t: &LockedTrigger| t.trigger_config.get("component")?.as_str().map(str::to_string);
        self.triggers.iter().filter_map(component).collect()
    }
}

/// One trigger; for HTTP, `trigger_config` is `{component, route}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedTrigger {
    pub id: String,
    pub trigger_type: String,
    pub trigger_config: Value,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub trigger_dependencies: Map<String, Value>,
}

/// One component: its Wasm, environment, files and dependencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedComponent {
    pub id: String,
    /// `allowed_outbound_hosts`, `ai_models`, `key_value_stores`, `build`, ...
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    pub source: LockedSource,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ContentPath>,
    /// Component variables (`[component.X.variables]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dependencies: BTreeMap<String, LockedDependency>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub trigger_dependencies: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub host_requirements: Map<String, Value>,
}

/// A Wasm source: `content_type` plus where the bytes are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedSource {
    pub content_type: String,
    #[serde(flatten)]
    pub content: ContentRef,
}

/// Where content is: a digest (a layer of the artifact), bytes inline (base64, for content of 128
/// bytes or less, which has no layer) or, in a lock file on disk, a `file://` source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A file of a component: its content and its path under the guest's root (`model/x.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPath {
    #[serde(flatten)]
    pub content: ContentRef,
    pub path: String,
}

/// A dependency composed into the component (by Spin at load, or by us).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedDependency {
    pub source: LockedSource,
    /// Which export of the dependency satisfies the import (Spin always writes the key).
    pub export: Option<String>,
    /// `"All"`, or `{"Some": [names]}`; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit: Option<Value>,
}

impl LockedComponent {
    /// A string-array metadata entry (`ai_models`, `allowed_outbound_hosts`).
    pub fn metadata_strings(&self, key: &str) -> Vec<String> {
        self.metadata
            .get(key)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

impl ContentRef {
    /// The content of this digest, with no inline copy.
    pub fn digest(digest: String) -> ContentRef {
        ContentRef { digest: Some(digest), ..ContentRef::default() }
    }
}

/// Inline content's base64: the standard alphabet without padding, as Spin writes it (padding
/// accepted on reading).
const INLINE_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `bytes` as a lock's `inline` string.
pub fn encode_inline(bytes: &[u8]) -> String {
    base64::Engine::encode(&INLINE_BASE64, bytes)
}

/// The bytes of a lock's `inline` string.
pub fn decode_inline(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::Engine::decode(&INLINE_BASE64, text)
}
