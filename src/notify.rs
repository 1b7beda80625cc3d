//! systemd readiness (`sd_notify`): `READY=1` once the listener and the
//! control socket are up, `RELOADING=1` … `READY=1` around a SIGHUP policy
//! reload, `STOPPING=1` on the way out, each with a `STATUS=` line for
//! `systemctl status`. Without `NOTIFY_SOCKET` (not started by systemd, or
//! not `Type=notify`) every call does nothing.

use sd_notify::NotifyState;

/// Send `states` in one datagram; a failure is logged, never fatal: a
/// bastion that serves but cannot tell systemd is better than none.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// Serving: the listener is bound and the control socket is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; [`ready`] ends it. systemd ≥ 253 also wants the
/// monotonic time the reload started (`MONOTONIC_USEC`).
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading policies"),
    ];
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(e) => tracing::warn!("sd_notify: no monotonic clock: {e}"),
    }
    send(&states);
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
