//! Admission control per component: at most `max_concurrent_requests` run at once, at most
//! `max_queued_requests` wait for a slot; a request finding that line full waits up to
//! `admission_wait_ms` for a place in it, and is then answered 503 with `Retry-After` instead of
//! letting latency grow without bound.
//!
//! Why the wait: a refusal is cheap, but clients under overload (load balancers, retrying
//! clients, closed-loop load tools) send again as soon as they are refused. Refused at once,
//! 1,024 such clients made 25,000 refusals a second on 2 cores and took the CPU from the model
//! (62 good answers/s instead of ~370); held for a place first, they are refused at most once a
//! wait each and the model keeps the CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// One component's slots and waiting line.
pub struct Admission {
    slots: Semaphore,
    /// Places of the requests running or in line: `max_concurrent + max_waiting`.
    places: Semaphore,
    /// How long a request finding the line full waits for a place before it is refused.
    wait: Duration,
    waiting: AtomicUsize,
    component: String,
}

/// An admitted request's slot (and its place), held until it is answered.
pub struct Admitted<'a> {
    _slot: SemaphorePermit<'a>,
    _place: SemaphorePermit<'a>,
}

/// Counts a request waiting (for a place or a slot) while it waits, admitted or not (e.g. its
/// client left).
struct Waiting<'a>(&'a Admission);

impl<'a> Waiting<'a> {
    fn new(admission: &'a Admission) -> Waiting<'a> {
        let now = admission.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        admission.gauge(now);
        Waiting(admission)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let left = self.0.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.gauge(left);
    }
}

impl Admission {
    /// `max_concurrent` slots, `max_waiting` places in line, and `wait` for a place when the
    /// line is full (zero: refused at once).
    pub fn new(component: &str, max_concurrent: usize, max_waiting: usize, wait: Duration) -> Admission {
        Admission {
            slots: Semaphore::new(max_concurrent),
            places: Semaphore::new(max_concurrent + max_waiting),
            wait,
            waiting: AtomicUsize::new(0),
            component: component.to_string(),
        }
    }

    /// A slot, waiting in line for one; `None` means overloaded (no place in line within the
    /// admission wait). Places and slots are handed out in arrival order.
    pub async fn admit(&self) -> Option<Admitted<'_>> {
        let mut waiting = None;
        let place = match self.places.try_acquire() {
            Ok(place) => place,
            Err(_) if self.wait.is_zero() => return None,
            Err(_) => {
                waiting = Some(Waiting::new(self));
                tokio::time::timeout(self.wait, self.places.acquire()).await.ok()?.ok()?
            }
        };
        let slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                waiting.get_or_insert_with(|| Waiting::new(self));
                self.slots.acquire().await.ok()?
            }
        };
        Some(Admitted { _slot: slot, _place: place })
    }

    fn gauge(&self, waiting: usize) {
        metrics::gauge!("edgeinfer_admission_waiting", "component" => self.component.clone())
            .set(waiting as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_waiting_line_is_refused_at_once_without_a_wait() {
        let admission = Admission::new("c", 1, 1, Duration::ZERO);
        let first = admission.admit().await.expect("a free slot");
        // One may wait: it gets the slot when the first leaves.
        let waiter = admission.admit();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        // The line is full: refused without waiting.
        assert!(admission.admit().await.is_none());
        drop(first);
        assert!(waiter.await.is_some());
    }

    #[tokio::test]
    async fn over_the_line_waits_for_a_place_then_is_refused() {
        let admission = Admission::new("c", 1, 1, Duration::from_millis(100));
        let first = admission.admit().await.expect("a free slot");
        let in_line = admission.admit();
        tokio::pin!(in_line);
        assert!(futures::poll!(in_line.as_mut()).is_pending());
        // The line is full: this one waits the admission wait for a place, then is refused.
        let started = tokio::time::Instant::now();
        assert!(admission.admit().await.is_none());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(5), "{waited:?}");
        // One that gets a place within the wait is served in its turn, after the one in line.
        let held = admission.admit();
        tokio::pin!(held);
        assert!(futures::poll!(held.as_mut()).is_pending());
        drop(first);
        let second = in_line.await.expect("the one in line goes first");
        assert!(futures::poll!(held.as_mut()).is_pending(), "it has a place now, not yet a slot");
        drop(second);
        assert!(held.await.is_some());
        assert_eq!(admission.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_place() {
        let admission = Admission::new("c", 1, 1, Duration::ZERO);
        let _held = admission.admit().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), admission.admit()).await;
        assert!(gave_up.is_err());
        assert_eq!(admission.waiting.load(Ordering::Acquire), 0);
        let waiter = admission.admit();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending(), "the place is free again");
    }
}
