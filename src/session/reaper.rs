//! Frees a worker's admission slot only once its OS thread is gone.
//!
//! A worker that dropped its slot as its last act would let a new session
//! start while the old thread is still exiting (and, on a loaded machine,
//! preempted there): for a moment more threads than `max_sessions` exist.
//! So a finished worker hands its own `JoinHandle` and slot to one reaper
//! thread, which joins it and only then drops the slot.

use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use super::SlotLease;

type Finished = (JoinHandle<()>, SlotLease);

/// The reaper's inbox, started on first use; `None` if its thread could not
/// be started (the slot is then dropped by the worker itself).
fn inbox() -> Option<&'static Sender<Finished>> {
    static INBOX: OnceLock<Option<Sender<Finished>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (tx, rx) = channel::<Finished>();
            let started = std::thread::Builder::new().name("scribed-reaper".into()).spawn(move || {
                for (thread, slot) in rx {
                    let _ = thread.join();
                    drop(slot);
                }
            });
            started.ok().map(|_| tx)
        })
        .as_ref()
}

/// Called by a worker thread as its last act, with its own handle.
pub(super) fn release_after_exit(me: JoinHandle<()>, slot: SlotLease) {
    if let Some(inbox) = inbox() {
        // Should the reaper be gone, the slot is dropped with the message.
        let _ = inbox.send((me, slot));
    }
}
