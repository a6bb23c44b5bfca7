//! Fleets of edge hosts without a cluster: the fleet file (`fleet`), calls to the hosts' admin
//! APIs and metrics with bounded retries (`admin`), per-version counts from `/metrics`
//! (`metrics`), progressive rollouts judged by those counts and rolled back on their own
//! (`rollout`), and one table of the fleet (`status`). Data flows one way: `fleet` and `metrics`
//! → `admin` → `rollout`, `status`.

pub mod admin;
pub mod fleet;
pub mod metrics;
pub mod rollout;
pub mod status;
