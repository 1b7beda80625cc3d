//! The tamper-evident audit log: every decision is an event, appended in
//! order, each carrying the SHA-256 of the one before it. `verify` walks
//! the chain and names the first event whose link or hash is wrong.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::ca::now_secs;
use crate::store::{Store, StoreError};

/// The hash the first event links to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    /// What happened, e.g. `request.created`, `login.refused`.
    pub kind: String,
    /// Who did it (user name, `ctl`, or `-` for the system).
    pub actor: String,
    /// Event-specific fields.
    pub data: Value,
    /// SHA-256 (hex) of the previous event.
    pub prev: String,
    /// SHA-256 (hex) of this event's other fields.
    pub hash: String,
}

impl Event {
    fn digest(&self) -> String {
        let body =
            serde_json::json!([self.seq, self.at, self.kind, self.actor, self.data, self.prev]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

/// Appends events; one per process, shared by every connection.
pub struct Audit {
    /// Serialises appends so the chain has no forks.
    tail: Mutex<(u64, String)>,
    /// The store the chain lives in.
    store: Store,
    /// Live followers (`audit --follow`); bounded, slow ones lag and lose.
    pub feed: broadcast::Sender<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("audit event {0} does not parse: {1}")]
    Corrupt(u64, String),
}

impl Audit {
    pub fn open(store: Store) -> Result<Audit, AuditError> {
        let tail = match store.audit_last()? {
            None => (0, GENESIS.to_string()),
            Some((seq, bytes)) => {
                let e: Event = serde_json::from_slice(&bytes)
                    .map_err(|e| AuditError::Corrupt(seq, e.to_string()))?;
                (seq + 1, e.hash)
            }
        };
        let (feed, _) = broadcast::channel(1024);
        Ok(Audit {
            tail: Mutex::new(tail),
            store,
            feed,
        })
    }

    /// Append an event; returns it once it is durable.
    pub fn record(&self, kind: &str, actor: &str, data: Value) -> Result<Event, AuditError> {
        let mut tail = match self.tail.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let mut e = Event {
            seq: tail.0,
            at: now_secs(),
            kind: kind.to_string(),
            actor: actor.to_string(),
            data,
            prev: tail.1.clone(),
            hash: String::new(),
        };
        e.hash = e.digest();
        let bytes = serde_json::to_vec(&e).map_err(StoreError::from)?;
        self.store.audit_put(e.seq, &bytes)?;
        *tail = (e.seq + 1, e.hash.clone());
        let _ = self.feed.send(e.clone());
        Ok(e)
    }

    /// Like [`Audit::record`], logging instead of failing: for callers that
    /// have already acted (a refusal stays a refusal either way).
    pub fn note(&self, kind: &str, actor: &str, data: Value) {
        if let Err(e) = self.record(kind, actor, data) {
            tracing::error!(kind, "audit write failed: {e}");
        }
    }

    /// Events with `at >= since`.
    pub fn list(&self, since: u64) -> Result<Vec<Event>, AuditError> {
        let mut out = Vec::new();
        for (seq, bytes) in self.store.audit_scan(0)? {
            let e: Event = serde_json::from_slice(&bytes)
                .map_err(|e| AuditError::Corrupt(seq, e.to_string()))?;
            if e.at >= since {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Walk the chain; `Ok(n)` events verified, or the first broken link.
    pub fn verify(&self) -> Result<u64, String> {
        let events = self.store.audit_scan(0).map_err(|e| e.to_string())?;
        let mut prev = GENESIS.to_string();
        for (expect_seq, (seq, bytes)) in (0u64..).zip(events.iter()) {
            let e: Event = serde_json::from_slice(bytes)
                .map_err(|err| format!("event {seq}: does not parse: {err}"))?;
            if e.seq != *seq || *seq != expect_seq {
                return Err(format!(
                    "event {seq}: out of sequence (expected {expect_seq})"
                ));
            }
            if e.prev != prev {
                return Err(format!("event {seq}: link to the previous event is broken"));
            }
            if e.digest() != e.hash {
                return Err(format!(
                    "event {seq}: contents do not match its hash (altered)"
                ));
            }
            prev = e.hash;
        }
        Ok(events.len() as u64)
    }
}
