//! Components as edgeinfer runs them, from a manifest and runtime config to handlers ready to
//! serve: dependencies flow one way, `compose` → `compile` → `instance` → `component` →
//! `rollout` → `app` (with `routes`) → `state` (what the admin API changed, kept across
//! restarts), and nothing here serves HTTP. Beside them, `builder` runs spin.toml's build commands
//! and `watch` rebuilds and swaps components whose sources changed (`up --watch`).

pub mod admission;
pub mod app;
pub mod builder;
pub mod compile;
pub mod component;
pub mod compose;
pub mod instance;
pub mod models;
pub mod openapi;
pub mod outbound;
pub mod rollout;
pub mod routes;
pub mod state;
pub mod trace;
pub mod watch;
