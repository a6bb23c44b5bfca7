//! The component's settings, read from its environment (spin.toml `environment`).

/// Per-component settings with the defaults of the default app.
pub struct Config {
    /// Where the `files` mount puts tokenizer.json.
    pub tokenizer_path: String,
    /// wasi:nn graph name (must be listed in the component's `ai_models`).
    pub model: String,
    /// The model output holding per-token hidden states.
    pub output: String,
    /// Longest input accepted, in tokens (special tokens included).
    pub max_input_tokens: u32,
    /// Most inputs accepted in one request.
    pub max_batch_inputs: usize,
}

impl Config {
    pub fn from_env() -> Config {
        Config {
            tokenizer_path: var("TOKENIZER_PATH", "/model/tokenizer.json"),
            model: var("MODEL", "minilm"),
            output: var("MODEL_OUTPUT", "last_hidden_state"),
            max_input_tokens: var("MAX_INPUT_TOKENS", "256").parse().unwrap_or(256),
            max_batch_inputs: var("MAX_BATCH_INPUTS", "32").parse().unwrap_or(32),
        }
    }
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}
