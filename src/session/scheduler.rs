//! The compute scheduler: one queue of hypotheses for every session.
//!
//! A session worker asks for a turn before each hypothesis. At most `slots`
//! hypotheses run at once (each uses the backend's own threads: on the CPU,
//! rayon's pool over all cores); the others wait, the most urgent first:
//! a flush (endpoint, cut, `Finalize`, close), whose words become final at
//! once, before a step, whose words are interim; within each, the one that
//! asked first, which holds the oldest untranscribed audio. A waiting
//! worker leaves its audio in the ring and takes all of it into the step
//! when its turn comes, so under load steps coalesce; flushes are never
//! skipped.
//!
//! Without it, sessions compete blindly for the cores, and a `Finalize`
//! waits behind every other session's interim step. It knows nothing of
//! the device: a GPU engine, whose sessions each have their own stream,
//! would give it as many slots as it runs streams at once.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::decode::Cancel;

/// How soon a hypothesis is needed. Ordered most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// Its words become final now: an endpoint, a cut, `Finalize`, close.
    Flush,
    /// An interim step.
    Step,
}

/// The queue shared by all sessions of a daemon.
#[derive(Debug)]
pub struct Scheduler {
    slots: usize,
    queue: Mutex<Queue>,
    turn_over: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    running: usize,
    /// Waiting tickets: urgency, then the order they were taken in.
    waiting: Vec<(Urgency, u64)>,
    next: u64,
}

/// The right to run one hypothesis; the slot is free again when dropped.
#[derive(Debug)]
pub struct Grant(Arc<Scheduler>);

impl Drop for Grant {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.turn_over.notify_all();
    }
}

/// How often a waiting worker looks at its session's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl Scheduler {
    /// A queue that runs at most `slots` hypotheses at once (at least one).
    pub fn new(slots: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler { slots: slots.max(1), queue: Mutex::default(), turn_over: Condvar::new() })
    }

    /// Waits for a grant; `None` if the session is cancelled first.
    pub fn acquire(self: &Arc<Self>, urgency: Urgency, cancel: &Cancel) -> Option<Grant> {
        let mut q = self.lock();
        let ticket = (urgency, q.next);
        q.next += 1;
        q.waiting.push(ticket);
        loop {
            let first = q.waiting.iter().min() == Some(&ticket);
            if first && q.running < self.slots {
                q.waiting.retain(|t| *t != ticket);
                q.running += 1;
                return Some(Grant(self.clone()));
            }
            if cancel.is_cancelled() {
                q.waiting.retain(|t| *t != ticket);
                drop(q);
                // The next in line may be able to go now.
                self.turn_over.notify_all();
                return None;
            }
            q = self.turn_over.wait_timeout(q, CANCEL_POLL).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Hypotheses waiting for a turn.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent between statements: a panic elsewhere
        // while it was locked leaves nothing half-done.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// Starts a thread that waits for a turn and reports `name` once it has it.
    fn waiter(s: &Arc<Scheduler>, urgency: Urgency, name: &'static str, tx: &mpsc::Sender<&'static str>) {
        let before = s.waiting();
        let (s2, tx) = (s.clone(), tx.clone());
        thread::spawn(move || {
            let _turn = s2.acquire(urgency, &Cancel::default());
            tx.send(name).unwrap();
        });
        // Tickets are taken in the order the threads reach the queue.
        wait_for(s, before + 1);
    }

    fn wait_for(s: &Scheduler, n: usize) {
        while s.waiting() != n {
            thread::yield_now();
        }
    }

    #[test]
    fn flushes_go_first_then_steps_in_order() {
        let s = Scheduler::new(1);
        let busy = s.acquire(Urgency::Step, &Cancel::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        waiter(&s, Urgency::Step, "step 1", &tx);
        waiter(&s, Urgency::Step, "step 2", &tx);
        waiter(&s, Urgency::Flush, "flush", &tx);
        drop(busy);
        let order: Vec<_> = rx.iter().take(3).collect();
        assert_eq!(order, ["flush", "step 1", "step 2"]);
    }

    #[test]
    fn slots_bound_what_runs_at_once() {
        let s = Scheduler::new(2);
        let a = s.acquire(Urgency::Step, &Cancel::default()).unwrap();
        let _b = s.acquire(Urgency::Step, &Cancel::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        waiter(&s, Urgency::Flush, "third", &tx);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "a third ran beside two");
        drop(a);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("third"));
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let s = Scheduler::new(1);
        let _busy = s.acquire(Urgency::Step, &Cancel::default()).unwrap();
        let cancel = Cancel::default();
        let (s2, c2) = (s.clone(), cancel.clone());
        let t = thread::spawn(move || s2.acquire(Urgency::Flush, &c2).is_none());
        wait_for(&s, 1);
        cancel.cancel();
        assert!(t.join().unwrap(), "a cancelled waiter got a turn");
        assert_eq!(s.waiting(), 0);
    }
}
