//! The daemon's side of systemd's notify protocol (`Type=notify`): ready once
//! the model is loaded and the port bound, a status line and watchdog pings
//! from the accept loop while serving, stopping while sessions flush. Each
//! call is a no-op when systemd did not start the daemon (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

use super::Shared;

/// Serving: the model is loaded and the listener bound.
pub fn ready(shared: &Shared) {
    send(&[NotifyState::Ready, NotifyState::Status(&status(shared))]);
}

/// Alive (the accept loop turned) with the current figures.
pub fn alive(shared: &Shared) {
    send(&[NotifyState::Watchdog, NotifyState::Status(&status(shared))]);
}

/// SIGTERM: no new sessions; the open ones are flushing their finals.
pub fn stopping(active: u64) {
    send(&[NotifyState::Stopping, NotifyState::Status(&format!("stopping: flushing {active} sessions"))]);
}

/// How often the accept loop pings: half the watchdog period, as systemd
/// advises, or every 10 s for the status line alone.
pub fn ping_period() -> Duration {
    sd_notify::watchdog_enabled().map_or(Duration::from_secs(10), |d| (d / 2).max(Duration::from_millis(100)))
}

fn status(shared: &Shared) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let active = shared.metrics.sessions_active.load(Relaxed);
    let free = shared.slots.available_permits();
    let lag = shared.metrics.max_lag_ms() as f64 / 1000.0;
    format!("{active} sessions, {free} free slots, worst lag {lag:.1} s")
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
