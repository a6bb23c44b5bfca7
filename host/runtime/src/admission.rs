//! Admission control per component: at most `max_concurrent_requests` run at once, at most
//! `max_queued_requests` wait for a slot; beyond that the host answers 503 with `Retry-After`
//! instead of letting latency grow without bound.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// One component's slots and waiting line.
pub struct Admission {
    slots: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    component: String,
}

/// Decrements the waiting count when a waiter leaves, admitted or not (e.g. its client left).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let left = self.0.waiting.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("edgeinfer_admission_waiting", "component" => self.0.component.clone())
            .set(left as f64);
    }
}

impl Admission {
    pub fn new(component: &str, max_concurrent: usize, max_waiting: usize) -> Admission {
        Admission {
            slots: Semaphore::new(max_concurrent),
            waiting: AtomicUsize::new(0),
            max_waiting,
            component: component.to_string(),
        }
    }

    /// A slot, waiting for one if the line is not full; `None` means overloaded.
    pub async fn admit(&self) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Some(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = Waiting(self);
        if waiting > self.max_waiting {
            return None;
        }
        metrics::gauge!("edgeinfer_admission_waiting", "component" => self.component.clone())
            .set(waiting as f64);
        let permit = self.slots.acquire().await.ok();
        drop(guard);
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_waiting_line_is_refused_at_once() {
        let admission = Admission::new("c", 1, 1);
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
    async fn a_waiter_that_gives_up_frees_its_place() {
        let admission = Admission::new("c", 1, 1);
        let _held = admission.admit().await.unwrap();
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), admission.admit()).await;
        assert!(gave_up.is_err());
        assert_eq!(admission.waiting.load(Ordering::Acquire), 0);
        let waiter = admission.admit();
        tokio::pin!(waiter);
        assert!(futures::poll!(waiter.as_mut()).is_pending(), "the place is free again");
    }
}
