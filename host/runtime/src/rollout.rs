//! Versions of a component in service: the stable one, the ones it replaced (rollback), and an
//! optional canary that gets a share of the traffic (split) or a copy of it (shadow). A request
//! takes its version when it starts and finishes on it, whatever is deployed meanwhile; switching
//! is one atomic pointer swap.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderMap;

use crate::component::LoadedComponent;

/// Replaced versions kept for rollback.
const KEPT_VERSIONS: usize = 4;

/// How a canary gets its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryMode {
    /// It answers `percent` of the requests.
    Split,
    /// Clients only ever get the stable answer; the canary runs on a copy of `percent` of the
    /// requests and how its answers differ is recorded.
    Shadow,
}

/// Which requests go to the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// A fixed share of requests, spread evenly (exact to one request).
    None,
    /// By a hash of this request header's value: the same value always gets the same version.
    Header(http::HeaderName),
    /// By a hash of the client's IP address.
    Client,
}

/// A version on trial.
pub struct Canary {
    pub version: Arc<LoadedComponent>,
    /// Share of the traffic, 0 to 100.
    pub percent: f64,
    pub mode: CanaryMode,
    pub sticky: Stickiness,
    /// Requests seen while this canary was set (for the even spread).
    seen: AtomicU64,
}

impl Canary {
    pub fn new(version: Arc<LoadedComponent>, percent: f64, mode: CanaryMode, sticky: Stickiness) -> Canary {
        Canary { version, percent: percent.clamp(0.0, 100.0), mode, sticky, seen: AtomicU64::new(0) }
    }

    /// Whether this request falls in the canary's share.
    fn takes(&self, headers: &HeaderMap, client: IpAddr) -> bool {
        let share = self.percent / 100.0;
        let key = match &self.sticky {
            Stickiness::None => {
                // Request n goes to the canary when floor((n + 1) * share) passes floor(n * share):
                // after any N requests the canary has had floor(N * share) of them.
                let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
                return ((n + 1.0) * share).floor() > (n * share).floor();
            }
            Stickiness::Header(name) => match headers.get(name) {
                Some(value) => stable_hash(value.as_bytes()),
                None => stable_hash(client.to_string().as_bytes()),
            },
            Stickiness::Client => stable_hash(client.to_string().as_bytes()),
        };
        ((key % 10_000) as f64) < share * 10_000.0
    }
}

/// FNV-1a then a 64-bit finaliser: the same key lands in the same bucket on every host.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Which versions serve one request.
pub struct Pick {
    /// Answers the client.
    pub serving: Arc<LoadedComponent>,
    /// Gets a copy of the request (shadow canary).
    pub shadow: Option<Arc<LoadedComponent>>,
}

/// A component's versions.
pub struct ComponentSlot {
    pub id: String,
    /// The version spin.toml's own source built to when the app started.
    manifest_version: Arc<LoadedComponent>,
    current: ArcSwap<LoadedComponent>,
    /// Most recent last; at most `KEPT_VERSIONS`.
    previous: Mutex<Vec<Arc<LoadedComponent>>>,
    canary: ArcSwapOption<Canary>,
}

impl ComponentSlot {
    pub fn new(loaded: LoadedComponent) -> ComponentSlot {
        let loaded = Arc::new(loaded);
        ComponentSlot {
            id: loaded.id.clone(),
            manifest_version: loaded.clone(),
            current: ArcSwap::new(loaded),
            previous: Mutex::default(),
            canary: ArcSwapOption::empty(),
        }
    }

    /// The version spin.toml's own source built to when the app started.
    pub fn manifest_version(&self) -> &Arc<LoadedComponent> {
        &self.manifest_version
    }

    /// Serves what a saved state names: `stable`, with `previous` kept for rollback (oldest
    /// first) and `canary` on trial.
    pub fn restore(
        &self,
        stable: Arc<LoadedComponent>,
        mut previous: Vec<Arc<LoadedComponent>>,
        canary: Option<Canary>,
    ) {
        let mut kept = self.previous.lock().expect("version history lock");
        let excess = previous.len().saturating_sub(KEPT_VERSIONS);
        previous.drain(..excess);
        *kept = previous;
        self.current.store(stable);
        self.canary.store(canary.map(Arc::new));
    }

    /// The stable version.
    pub fn current(&self) -> Arc<LoadedComponent> {
        self.current.load_full()
    }

    /// The canary, if one is set.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }

    /// Versions replaced so far, most recent last.
    pub fn previous(&self) -> Vec<Arc<LoadedComponent>> {
        self.previous.lock().expect("version history lock").clone()
    }

    /// The versions for one request.
    pub fn pick(&self, headers: &HeaderMap, client: IpAddr) -> Pick {
        let stable = self.current();
        let Some(canary) = self.canary.load_full() else { return Pick { serving: stable, shadow: None } };
        let takes = canary.takes(headers, client);
        match (canary.mode, takes) {
            (CanaryMode::Split, true) => Pick { serving: canary.version.clone(), shadow: None },
            (CanaryMode::Shadow, true) => Pick { serving: stable, shadow: Some(canary.version.clone()) },
            (_, false) => Pick { serving: stable, shadow: None },
        }
    }

    /// Serves `next` as the stable version from now on (any canary ends); returns the version
    /// it replaced.
    pub fn swap(&self, next: Arc<LoadedComponent>) -> Arc<LoadedComponent> {
        let mut previous = self.previous.lock().expect("version history lock");
        self.canary.store(None);
        let replaced = self.current.swap(next);
        previous.push(replaced.clone());
        if previous.len() > KEPT_VERSIONS {
            previous.remove(0);
        }
        replaced
    }

    /// Puts `canary` on trial (replacing any canary); returns the canary it replaced.
    pub fn set_canary(&self, canary: Canary) -> Option<Arc<Canary>> {
        self.canary.swap(Some(Arc::new(canary)))
    }

    /// Makes the canary the stable version; returns (promoted, replaced) or None without a canary.
    pub fn promote(&self) -> Option<(Arc<LoadedComponent>, Arc<LoadedComponent>)> {
        let canary = self.canary.load_full()?;
        let replaced = self.swap(canary.version.clone());
        Some((canary.version.clone(), replaced))
    }

    /// Ends the canary; the stable version takes all traffic again.
    pub fn abort_canary(&self) -> Option<Arc<Canary>> {
        self.canary.swap(None)
    }

    /// Serves the version before the current one again (any canary ends); returns (now serving,
    /// replaced).
    pub fn roll_back(&self) -> Option<(Arc<LoadedComponent>, Arc<LoadedComponent>)> {
        let mut previous = self.previous.lock().expect("version history lock");
        let restored = previous.pop()?;
        self.canary.store(None);
        let replaced = self.current.swap(restored.clone());
        Some((restored, replaced))
    }
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    #[test]
    fn stable_hash_spreads_keys_evenly() {
        let in_five_percent =
            (0..100_000u32).filter(|i| stable_hash(format!("user-{i}").as_bytes()) % 10_000 < 500).count();
        assert!(
            (4_700..=5_300).contains(&in_five_percent),
            "{in_five_percent} of 100,000 keys in a 5% share"
        );
    }
}
