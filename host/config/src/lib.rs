//! What an edgeinfer app is made of, as files: the Spin manifest (`spin.toml`, the subset the host
//! serves) and the runtime config (`runtime-config/*.toml`: models, limits, what to fetch). Parsed
//! and validated once, with clear errors; nothing here runs anything.

pub mod manifest;
pub mod memory_budget;
pub mod precompiled;
pub mod runtime_config;
pub mod spin_models;

#[cfg(test)]
mod fuzz_tests;
