//! The only module that talks to sled. Records are JSON values in named
//! trees; every write is flushed before the caller is answered, so what a
//! user was told survives a crash.

use std::path::Path;

use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const REQUESTS: &str = "requests";
pub const GRANTS: &str = "grants";
pub const SESSIONS: &str = "sessions";
/// Certificate serial (big-endian u64) → grant id.
const SERIALS: &str = "serials";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: record {tree}/{id} is corrupt: {message}")]
    Corrupt {
        tree: String,
        id: String,
        message: String,
    },
    #[error("store: cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Handle to the embedded database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The sled database; held for the life of the server.
    db: sled::Db,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Store { db })
    }

    pub fn put<T: Serialize>(&self, tree: &str, id: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        self.db.open_tree(tree)?.insert(id.as_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&self, tree: &str, id: &str) -> Result<Option<T>, StoreError> {
        match self.db.open_tree(tree)?.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(tree, id.as_bytes(), &bytes).map(Some),
        }
    }

    /// Every record of a tree, in key order.
    pub fn all<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.open_tree(tree)?.iter() {
            let (k, v) = item?;
            out.push(decode(tree, &k, &v)?);
        }
        Ok(out)
    }

    /// A fresh id `PREFIX-xxxxxxxx` not yet used in `tree`.
    pub fn new_id(&self, tree: &str, prefix: &str) -> Result<String, StoreError> {
        let t = self.db.open_tree(tree)?;
        loop {
            let id = format!("{prefix}-{:08x}", rand::rngs::OsRng.next_u32());
            if !t.contains_key(id.as_bytes())? {
                return Ok(id);
            }
        }
    }

    /// Reserve a fresh, non-zero certificate serial for `grant_id`.
    pub fn new_serial(&self, grant_id: &str) -> Result<u64, StoreError> {
        let t = self.db.open_tree(SERIALS)?;
        loop {
            let serial = rand::rngs::OsRng.next_u64() >> 1;
            if serial == 0 {
                continue;
            }
            let cas = t.compare_and_swap(
                serial.to_be_bytes(),
                None as Option<&[u8]>,
                Some(grant_id.as_bytes()),
            )?;
            if cas.is_ok() {
                self.db.flush()?;
                return Ok(serial);
            }
        }
    }

    /// The grant a certificate serial was issued for.
    pub fn grant_for_serial(&self, serial: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .open_tree(SERIALS)?
            .get(serial.to_be_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree: tree.to_string(),
        id: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// The audit chain lives in its own tree, keyed by sequence number.
const AUDIT: &str = "audit";

impl Store {
    /// The last audit event (sequence, bytes), if any.
    pub fn audit_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let t = self.db.open_tree(AUDIT)?;
        Ok(t.last()?.map(|(k, v)| (seq_of(&k), v.to_vec())))
    }

    /// Append one encoded audit event at `seq` and flush before returning.
    pub fn audit_put(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(AUDIT)?.insert(seq.to_be_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// Audit events from `from_seq` on, in order.
    pub fn audit_scan(&self, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.db.open_tree(AUDIT)?;
        let mut out = Vec::new();
        for item in t.range(from_seq.to_be_bytes()..) {
            let (k, v) = item?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    /// Overwrite a stored audit event as-is (tests use it to corrupt one).
    #[doc(hidden)]
    pub fn audit_overwrite(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.audit_put(seq, bytes)
    }
}

fn seq_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}

impl Store {
    /// Write index entries, then the record (so a crash between the two
    /// leaves an index entry to a missing record, which readers skip,
    /// never a record the indexes cannot find). `flush` waits for disk.
    pub fn put_indexed<T: Serialize>(
        &self,
        tree: &str,
        id: &str,
        value: &T,
        index: &[(&str, Vec<u8>)],
        flush: bool,
    ) -> Result<(), StoreError> {
        for (name, key) in index {
            self.db
                .open_tree(name)?
                .insert(key.as_slice(), id.as_bytes())?;
        }
        let bytes = serde_json::to_vec(value)?;
        self.db.open_tree(tree)?.insert(id.as_bytes(), bytes)?;
        if flush {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Remove one index entry.
    pub fn index_remove(&self, index: &str, key: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(index)?.remove(key)?;
        Ok(())
    }

    /// Ids in `index` with keys in `[lo, hi)`, highest key first.
    pub fn index_rev(
        &self,
        index: &str,
        lo: Vec<u8>,
        hi: Vec<u8>,
    ) -> Result<impl Iterator<Item = Result<String, StoreError>>, StoreError> {
        let t = self.db.open_tree(index)?;
        Ok(t.range(lo..hi).rev().map(|item| {
            item.map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                .map_err(StoreError::from)
        }))
    }

    /// Every id in `index`.
    pub fn index_all(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.open_tree(index)?.iter() {
            let (_, v) = item?;
            out.push(String::from_utf8_lossy(&v).into_owned());
        }
        Ok(out)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
