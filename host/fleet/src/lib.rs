//! Fleets of edge hosts without a cluster: the fleet file (`fleet`), calls to the hosts' admin
//! APIs and metrics with bounded retries (`admin`), per-version counts from `/metrics`
//! (`metrics`), progressive rollouts judged by those counts and rolled back on their own
//! (`rollout`), and one table of the fleet (`status`); besides, `deploy` sends one change to many
//! hosts at once, unjudged. Data flows one way: `fleet` and `metrics` → `admin` → `rollout`,
//! `status`, `deploy`.

pub mod admin;
pub mod client;
pub mod deploy;
pub mod fleet;
pub mod metrics;
pub mod rollout;
pub mod status;
