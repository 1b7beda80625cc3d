//! postern: an SSH bastion for temporary, approved, recorded production
//! access.
//!
//! # Layout
//! - [`config`]: `postern.toml`, defaults and clear errors.
//! - [`policy`]: users, targets and roles from `policies/*.toml`.
//! - [`ca`]: key files, issuing user certificates, checking presented ones.
//! - [`audit`]: the hash-chained audit log.
//! - [`auditing`]: the auditor's verbs: sessions, export, kill, audit.
//! - [`replay`]: replay and live watch to an auditor's terminal.
//! - [`store`]: the only module that talks to sled.
//! - [`access`]: requests → approvals → grants → certificates.
//! - [`control`]: the verbs shared by `ssh access@bastion` and `postern ctl`.
//! - [`socket`]: the local control socket behind `postern ctl`.
//! - [`app`]: the shared state of a running bastion.
//! - [`server`]: the user-facing russh server (authentication, channels).
//! - [`sessions`]: session records, the live registry, crash recovery.
//! - [`session`]: one session channel: listing, gate, or proxied session.
//! - [`relay`]: a client channel joined to a target channel, with the grant watchdog.
//! - [`prompt`]: the interactive read-only gate prompt.
//! - [`recording`]: asciicast writer per session, live fan-out, reader.
//! - [`upstream`]: the target-facing russh client with pinned host keys.
//! - [`forward`]: local port-forwards.
//! - [`gulp`]: sockets read in large gulps under russh's small reads.
//! - [`krl`]: OpenSSH KRL of revoked serials.
//! - [`limits`]: pre-authentication limits (startups, grace time, failures).
//! - [`metrics`]: Prometheus text metrics on a loopback listener.
//! - [`notify`]: systemd readiness notifications (`sd_notify`).
//! - [`gate`]: the read-only command gate.
//! - [`memory`]: freed memory handed back to the system after connections close.
//! - [`background`]: low-priority threads for recording work.
//!
//! No unsafe code but one call, allowed where it is by name (`deny`
//! rather than `forbid` so that an `allow` can exist): `malloc_trim` in
//! [`memory`].
#![deny(unsafe_code)]

pub mod access;
pub mod app;
pub mod audit;
pub mod auditing;
pub mod background;
pub mod ca;
pub mod config;
pub mod control;
pub mod forward;
pub mod gate;
pub mod gulp;
pub mod krl;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod prompt;
pub mod recording;
pub mod relay;
pub mod replay;
pub mod server;
pub mod session;
pub mod sessions;
pub mod socket;
pub mod store;
pub mod upstream;
