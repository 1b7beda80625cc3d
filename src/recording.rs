//! Session recordings: one asciicast v2 file per session channel, written
//! by its own task from a bounded queue, so a slow disk slows a session
//! only once the queue is full and a fast session never waits on a write.
//! The encoding, hashing and writing run on low-priority threads
//! ([`crate::background`]), behind the relay for the CPU.
//! Each batch is flushed as soon as it is written (so a `kill -9` loses at
//! most the batch in flight), hashed as it goes, and fanned out to live
//! watchers over a bounded broadcast that drops for laggards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asciicast::Header;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::background;

/// Built with the `bench-recording-off` feature, for the benchmark's B3
/// only: session bytes are not recorded (the file holds the header and
/// markers). Never set in a normal build; `postern serve` warns loudly.
pub const UNRECORDED: bool = cfg!(feature = "bench-recording-off");

/// Queue depth between a session and its writer.
const QUEUE: usize = 256;
/// Live fan-out depth; a watcher further behind than this skips ahead.
const FANOUT: usize = 128;

/// What a session hands its recorder.
#[derive(Debug)]
enum Rec {
    Out(f64, Bytes),
    In(f64, Bytes),
    Resize(f64, u32, u32),
    Marker(f64, String),
    Bytes(f64, bool, Bytes),
    /// The file's first line, written as it is.
    Header(String),
}

impl Rec {
    /// About how many bytes the event adds to the file.
    fn size(&self) -> usize {
        match self {
            Rec::Out(_, d) | Rec::In(_, d) | Rec::Bytes(_, _, d) => d.len(),
            Rec::Marker(_, s) | Rec::Header(s) => s.len(),
            Rec::Resize(..) => 16,
        }
    }
}

/// One recorded line, numbered, for live watchers.
#[derive(Debug, Clone)]
pub struct Line {
    /// 0 for the first event line after the header.
    pub seq: u64,
    /// The asciicast line, without newline.
    pub text: Arc<str>,
}

/// Live fan-out of written lines to watchers. The broadcast buffer is
/// made when the first watcher subscribes: an idle session nobody watches
/// keeps none. Dropping every clone closes the feed.
#[derive(Clone, Default)]
pub struct Fanout(Arc<std::sync::OnceLock<broadcast::Sender<Line>>>);

impl Fanout {
    pub fn subscribe(&self) -> broadcast::Receiver<Line> {
        self.0
            .get_or_init(|| broadcast::channel(FANOUT).0)
            .subscribe()
    }

    /// The sender, if anyone is watching.
    fn watched(&self) -> Option<&broadcast::Sender<Line>> {
        self.0.get().filter(|s| s.receiver_count() > 0)
    }
}

/// The session-side handle of a recording.
#[derive(Clone)]
pub struct Recorder {
    /// Events to the writer task; dropping every clone ends the recording.
    tx: mpsc::Sender<Rec>,
    /// When the session started; event times are offsets from it.
    started: Instant,
    /// Set by the writer when the disk refused a write.
    pub failed: Arc<AtomicBool>,
    /// Live fan-out of written lines.
    pub live: Fanout,
    /// Where the file is.
    pub path: PathBuf,
}

/// What the writer reports when the recording is complete.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub size: u64,
    /// BLAKE3 of the whole file, hex (what `b3sum` prints); `None` when
    /// the writer was lost before it could finish.
    pub blake3: Option<String>,
    pub error: Option<String>,
    /// How many of the recording's bytes went straight to the device
    /// (`O_DIRECT`), past the page cache.
    pub direct: u64,
}

impl Recorder {
    /// Create `dir/ID.cast` and start its writer.
    pub async fn start(
        dir: &Path,
        id: &str,
        width: u32,
        height: u32,
        title: String,
    ) -> std::io::Result<(Recorder, tokio::task::JoinHandle<Summary>)> {
        let header = Header {
            version: 2,
            width: width.max(1),
            height: height.max(1),
            timestamp: chrono::DateTime::from_timestamp(crate::ca::now_secs() as i64, 0),
            duration: None,
            idle_time_limit: None,
            command: None,
            title: Some(title),
            env: None,
        };
        let header = serde_json::to_string(&header).map_err(std::io::Error::other)?;
        Recorder::open(dir, &format!("{id}.cast"), header).await
    }

    /// A port-forward's byte recording, `dir/ID.fwd.jsonl`: a JSON header
    /// line, then `[t, "c", base64]` (client → destination) and
    /// `[t, "s", base64]` (destination → client) lines.
    pub async fn start_forward(
        dir: &Path,
        id: &str,
        dest: &str,
    ) -> std::io::Result<(Recorder, tokio::task::JoinHandle<Summary>)> {
        let header = serde_json::json!({
            "version": 1, "kind": "port-forward", "destination": dest,
            "timestamp": crate::ca::now_secs(), "encoding": "base64",
        });
        Recorder::open(dir, &format!("{id}.fwd.jsonl"), header.to_string()).await
    }

    async fn open(
        dir: &Path,
        name: &str,
        header: String,
    ) -> std::io::Result<(Recorder, tokio::task::JoinHandle<Summary>)> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(name);
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        let direct = Direct::open(&path);
        let (tx, rx) = mpsc::channel(QUEUE);
        let live = Fanout::default();
        let failed = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(tracing::Instrument::in_current_span(write_all(
            file,
            direct,
            header,
            rx,
            live.clone(),
            failed.clone(),
        )));
        Ok((
            Recorder {
                tx,
                started: Instant::now(),
                failed,
                live,
                path,
            },
            writer,
        ))
    }

    /// Queue an event for the writer.
    async fn send(&self, rec: Rec) {
        let _ = self.tx.send(rec).await;
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub async fn output(&self, data: &Bytes) {
        if UNRECORDED {
            return;
        }
        self.send(Rec::Out(self.now(), data.clone())).await;
    }

    pub async fn input(&self, data: &Bytes) {
        if UNRECORDED {
            return;
        }
        self.send(Rec::In(self.now(), data.clone())).await;
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        self.send(Rec::Resize(self.now(), cols, rows)).await;
    }

    /// Raw forwarded bytes; `to_dest` is the client → destination side.
    pub async fn bytes(&self, to_dest: bool, data: &[u8]) {
        if UNRECORDED {
            return;
        }
        self.send(Rec::Bytes(
            self.now(),
            to_dest,
            Bytes::copy_from_slice(data),
        ))
        .await;
    }

    pub async fn marker(&self, label: String) {
        self.send(Rec::Marker(self.now(), label)).await;
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Decodes a byte stream into UTF-8 text, carrying a character split
/// across chunks to the next chunk. Bytes that can never be UTF-8 become
/// U+FFFD (asciicast is JSON text).
#[derive(Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
    /// Whether the last `push` had to replace bytes.
    pub replaced: bool,
}

impl Utf8Stream {
    /// As [`Utf8Stream::push`], without a copy when `data` is whole UTF-8
    /// (the common case).
    pub fn push_cow<'a>(&mut self, data: &'a [u8]) -> std::borrow::Cow<'a, str> {
        if self.carry.is_empty() {
            if let Ok(s) = std::str::from_utf8(data) {
                self.replaced = false;
                return std::borrow::Cow::Borrowed(s);
            }
        }
        std::borrow::Cow::Owned(self.push(data))
    }

    pub fn push(&mut self, data: &[u8]) -> String {
        self.replaced = false;
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut out = String::with_capacity(buf.len());
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            self.replaced = true;
                            out.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete character at the end: keep it.
                            self.carry = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

/// Encoded bytes per write: enough to batch, small enough that the two
/// buffers a busy session keeps stay small.
const BATCH_BYTES: usize = 512 * 1024;

/// How long a recording's writer waits for more output before it frees its
/// batch buffers.
const QUIET: Duration = Duration::from_secs(2);

/// The file side of a recording, owned by whichever thread is writing.
struct Disk {
    file: std::fs::File,
    /// The same file opened for direct I/O, while the file system takes it.
    direct: Option<Direct>,
    hash: blake3::Hasher,
    size: u64,
    /// Of `size`, the bytes written through `direct`.
    direct_bytes: u64,
    /// Output and input text split mid-character, carried to the next event.
    out_dec: Utf8Stream,
    in_dec: Utf8Stream,
    cache: Streamed,
}

impl Disk {
    /// A new recording's file, empty, and its direct side if it has one.
    fn new(file: std::fs::File, direct: Option<Direct>) -> Disk {
        Disk {
            file,
            direct,
            hash: blake3::Hasher::new(),
            size: 0,
            direct_bytes: 0,
            out_dec: Utf8Stream::default(),
            in_dec: Utf8Stream::default(),
            cache: Streamed::default(),
        }
    }

    /// Append `data` to the file, at `size`.
    ///
    /// The whole blocks go straight to the device when the file system
    /// takes direct I/O: a profile of the bastion carrying bulk output put
    /// a third of the recording threads' CPU in copying each batch into
    /// fresh page-cache pages and ext4's per-page work for them
    /// (`copy_folio_from_iter_atomic`, `ext4_da_get_block_prep`, ...), as
    /// much as the encoding and hashing together. A recording is written
    /// once and read rarely, so the cache bought nothing for it. The part
    /// of a block before the first boundary and after the last goes
    /// through the page cache, so every batch reaches the OS whole, as
    /// before (a `kill -9` loses nothing written), and direct I/O never
    /// touches a block the page cache holds. If the direct write fails the
    /// recording falls back to the page cache for good, and the bytes it
    /// did not take are written there: an error is the recording's only
    /// when the page cache refuses too.
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.size;
        let mut done = 0;
        if let Some(direct) = self.direct.as_mut() {
            let head = usize::try_from((BLOCK - at % BLOCK) % BLOCK)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let whole = (data.len() - head) / BLOCK_LEN * BLOCK_LEN;
            if whole > 0 {
                self.file.write_all_at(&data[..head], at)?;
                done = head;
                let (n, failed) = direct.write(&data[head..head + whole], at + head as u64);
                done += n;
                self.direct_bytes += n as u64;
                if let Some(e) = failed {
                    tracing::warn!("recording: direct I/O refused ({e}); writing through the page cache from here on");
                    self.direct = None;
                }
            }
        }
        self.file.write_all_at(&data[done..], at + done as u64)
    }
}

/// Direct I/O's unit here: offsets, lengths and buffer addresses are
/// multiples of it. 4 KiB is ext4's and XFS's usual block and a multiple
/// of every device's logical block; a file system that needs more refuses
/// the first write, and the recording falls back to the page cache.
const BLOCK: u64 = 4096;
const BLOCK_LEN: usize = BLOCK as usize;

/// Bytes copied into the aligned buffer per direct write.
const STAGING: usize = 256 * 1024;

/// A recording's file opened with `O_DIRECT`, and the block-aligned
/// buffer its writes go through (made at the first write).
struct Direct {
    file: std::fs::File,
    staging: Vec<u8>,
}

impl Direct {
    /// The file at `path` opened again for direct writes, where the OS and
    /// the file system take it (tmpfs, for one, may not).
    fn open(path: &Path) -> Option<Direct> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()?;
            Some(Direct {
                file,
                staging: Vec::new(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }

    /// Write `data`, whole blocks, at the block-aligned offset `at`: how
    /// many bytes reached the file, and what stopped it short, if anything.
    fn write(&mut self, data: &[u8], at: u64) -> (usize, Option<std::io::Error>) {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::FileExt;
        if self.staging.is_empty() {
            self.staging = vec![0; STAGING + BLOCK_LEN];
        }
        // Where in the buffer a block-aligned address starts.
        let off = self.staging.as_ptr().align_offset(BLOCK_LEN);
        let mut done = 0;
        for piece in data.chunks(STAGING) {
            let Some(stage) = self.staging.get_mut(off..off + piece.len()) else {
                return (done, Some(Error::other("no aligned buffer")));
            };
            stage.copy_from_slice(piece);
            let mut put = 0;
            while put < piece.len() {
                match self.file.write_at(&stage[put..], at + (done + put) as u64) {
                    Ok(n) if n > 0 && n % BLOCK_LEN == 0 => put += n,
                    Ok(n) => {
                        let e = Error::new(ErrorKind::WriteZero, format!("short write of {n}"));
                        return (done + put + n, Some(e));
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return (done + put, Some(e)),
                }
            }
            done += piece.len();
        }
        (done, None)
    }
}

/// How much of a recording's newest bytes the page cache keeps: about two
/// steps of this, the one being written and the one being written back.
const CACHED: u64 = 8 << 20;

/// Where a file written front to back was last asked to start writeback,
/// and where its page cache was last dropped up to.
#[derive(Debug, Default)]
pub struct Streamed {
    flushed: u64,
    dropped: u64,
}

impl Streamed {
    /// Call after each write with the file's size. Keeps the file's page
    /// cache to about two [`CACHED`] steps: starts writeback of each step
    /// as it fills and, once the step before it is on the device, drops
    /// that one from the cache.
    ///
    /// A recording is written once and read rarely (replay, audit). Left
    /// to the page cache, every 4 KiB a session prints takes a fresh page
    /// and the kernel's flusher writes it back later; on a machine whose
    /// free memory goes back to its host (this VM: `recording_cost`'s
    /// plain write step measured 0.3 to 3.6 CPU s per GiB from one round
    /// to the next) a fresh page is dear. Streamed like this it measured
    /// 0.30 to 0.35 s per GiB every round, writeback included, and a
    /// recording never holds more than a few MiB of the page cache.
    ///
    /// Both calls are advice: an error here is not the recording's error
    /// (a write the device refused fails the next `fdatasync`, which does
    /// report it).
    pub fn wrote(&mut self, file: &std::fs::File, size: u64) {
        if size.saturating_sub(self.flushed) < CACHED {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            sync_range(file, self.flushed, size, libc::SYNC_FILE_RANGE_WRITE);
            if self.flushed > self.dropped {
                let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                sync_range(file, self.dropped, self.flushed, wait);
                let _ = rustix::fs::fadvise(
                    file,
                    self.dropped,
                    std::num::NonZeroU64::new(self.flushed - self.dropped),
                    rustix::fs::Advice::DontNeed,
                );
                self.dropped = self.flushed;
            }
        }
        self.flushed = size;
    }
}

/// `sync_file_range(2)` on `from..to` of `file`, its result ignored (see
/// [`Streamed::wrote`]). Neither rustix nor nix wraps it, hence libc.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn sync_range(file: &std::fs::File, from: u64, to: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from))) else {
        return;
    };
    // SAFETY: sync_file_range takes no pointers; the descriptor is this
    // open file's, borrowed for the call.
    unsafe { libc::sync_file_range(file.as_raw_fd(), at, len, flags) };
}

/// Encoded lines on their way to the disk, and where each event line starts.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

/// What a background job hands back: the disk, the written batch (for
/// watchers), the emptied event list (to reuse), and how the write went.
type Written = (Disk, Batch, Vec<Rec>, std::io::Result<()>);

/// The writer task. Events are gathered into one list while the previous
/// list is encoded, written and hashed on a low-priority thread
/// ([`crate::background`]: off the async workers that carry the sessions,
/// and behind them for the CPU); each batch reaches the OS before its lines
/// go to watchers.
async fn write_all(
    file: std::fs::File,
    direct: Option<Direct>,
    header: String,
    mut rx: mpsc::Receiver<Rec>,
    live: Fanout,
    failed: Arc<AtomicBool>,
) -> Summary {
    let mut disk = Some(Disk::new(file, direct));
    let mut seq = 0u64;
    let mut error: Option<String> = None;
    // Events taken from the queue, not yet handed to a background job.
    let mut events = vec![Rec::Header(header)];
    let mut spare = Batch::default();
    let mut writing: Option<background::Job<Written>> = None;
    let mut last_sync = Instant::now();
    let mut syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let fail = |error: &mut Option<String>, e: String| {
        tracing::error!("recording write failed: {e}");
        error.get_or_insert(e);
        failed.store(true, Ordering::SeqCst);
    };
    loop {
        if writing.is_none() && events.is_empty() {
            // Nothing in hand. A session gone quiet keeps no big buffers,
            // but one that is only between two reads keeps them: freeing
            // and growing them again every time the writer catches up cost
            // a realloc copy and fresh zeroed pages per batch.
            let received = if spare.bytes.capacity() > 64 * 1024 {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        spare = Batch::default();
                        events = Vec::new();
                        if let Some(direct) = disk.as_mut().and_then(|d| d.direct.as_mut()) {
                            direct.staging = Vec::new();
                        }
                        rx.recv().await
                    }
                }
            } else {
                rx.recv().await
            };
            match received {
                Some(r) => events.push(r),
                None => break,
            }
        }
        // The previous batch: done writing? Publish it, reuse its buffers.
        if let Some(w) = writing.take() {
            match w.await {
                Ok((d, mut done, emptied, res)) => {
                    disk = Some(d);
                    match res {
                        Ok(()) => {
                            if let Some(live) = live.watched() {
                                publish(live, &done, seq);
                            }
                            seq += done.starts.len() as u64;
                        }
                        Err(e) => fail(&mut error, e.to_string()),
                    }
                    done.bytes.clear();
                    done.starts.clear();
                    spare = done;
                    if events.is_empty() {
                        events = emptied;
                    }
                }
                Err(e) => fail(&mut error, format!("recording writer: {e}")),
            }
        }
        let mut taken = 0;
        while taken < BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    taken += r.size();
                    events.push(r);
                }
                Err(_) => break,
            }
        }
        // Flushed to the OS every batch (survives kill -9); synced to the
        // disk at most once a second (survives power loss), beside the
        // writes: an fdatasync can take a few hundred ms on a busy disk.
        if let Some(d) = disk.as_ref() {
            let sync_done = syncing.as_ref().is_none_or(|h| h.is_finished());
            if error.is_none() && sync_done && last_sync.elapsed() >= Duration::from_secs(1) {
                if let Some(h) = syncing.take() {
                    if let Ok(Err(e)) = h.await {
                        fail(&mut error, e.to_string());
                    }
                }
                if let Ok(f) = d.file.try_clone() {
                    syncing = Some(tokio::task::spawn_blocking(move || f.sync_data()));
                }
                last_sync = Instant::now();
            }
        }
        if events.is_empty() {
            continue;
        }
        if error.is_some() {
            events.clear();
            continue;
        }
        let Some(mut d) = disk.take() else {
            // Lost with a writer that died; already reported.
            events.clear();
            continue;
        };
        let mut evs = std::mem::take(&mut events);
        let mut batch = std::mem::take(&mut spare);
        writing = Some(background::spawn(move || {
            for r in evs.drain(..) {
                encode(r, &mut batch, &mut d.out_dec, &mut d.in_dec);
            }
            let began = Instant::now();
            let res = d.append(&batch.bytes);
            crate::metrics::global().record_write(began.elapsed().as_micros() as u64);
            if res.is_ok() {
                d.hash.update(&batch.bytes);
                d.size += batch.bytes.len() as u64;
                d.cache.wrote(&d.file, d.size);
            }
            (d, batch, evs, res)
        }));
    }
    if let Some(h) = syncing.take() {
        let _ = h.await;
    }
    let Some(d) = disk else {
        return Summary {
            size: 0,
            blake3: None,
            error: error.or(Some("recording writer thread lost".into())),
            direct: 0,
        };
    };
    let (d, synced) = match tokio::task::spawn_blocking(move || {
        let r = d.file.sync_data();
        (d, r)
    })
    .await
    {
        Ok(x) => x,
        Err(e) => {
            return Summary {
                size: 0,
                blake3: None,
                error: Some(format!("recording writer thread: {e}")),
                direct: 0,
            }
        }
    };
    if let Err(e) = synced {
        fail(&mut error, e.to_string());
    }
    Summary {
        size: d.size,
        blake3: Some(d.hash.finalize().to_hex().to_string()),
        error,
        direct: d.direct_bytes,
    }
}

/// Send a written batch's lines to live watchers.
fn publish(live: &broadcast::Sender<Line>, batch: &Batch, seq: u64) {
    for (i, &a) in batch.starts.iter().enumerate() {
        let b = batch
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or(batch.bytes.len());
        let text =
            String::from_utf8_lossy(batch.bytes.get(a..b.saturating_sub(1)).unwrap_or_default());
        let _ = live.send(Line {
            seq: seq + i as u64,
            text: Arc::from(text.as_ref()),
        });
    }
}

/// Append one event's line(s) to the batch, noting where each starts.
fn encode(rec: Rec, batch: &mut Batch, out_dec: &mut Utf8Stream, in_dec: &mut Utf8Stream) {
    let (chunk, starts) = (&mut batch.bytes, &mut batch.starts);
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let mut line = |t: f64, kind: &str, data: &str| {
        starts.push(chunk.len());
        // `[t, "kind", "data"]`, as serde_json writes a tuple (a finite f64
        // always serialises).
        chunk.push(b'[');
        let _ = serde_json::to_writer(&mut *chunk, &round(t));
        chunk.extend_from_slice(b",\"");
        chunk.extend_from_slice(kind.as_bytes());
        chunk.extend_from_slice(b"\",");
        push_json_str(chunk, data);
        chunk.extend_from_slice(b"]\n");
    };
    match rec {
        Rec::Out(t, d) => {
            let text = out_dec.push_cow(&d);
            if out_dec.replaced {
                // Players get U+FFFD (asciicast is JSON text); the exact
                // bytes follow in an `x` event for tools.
                line(t, "o", &text);
                line(t, "x", &b64(&d));
            } else if !text.is_empty() {
                line(t, "o", &text);
            }
        }
        Rec::In(t, d) => {
            let text = in_dec.push_cow(&d);
            if !text.is_empty() {
                line(t, "i", &text);
            }
        }
        Rec::Resize(t, c, r) => line(t, "r", &format!("{c}x{r}")),
        Rec::Marker(t, label) => line(t, "m", &label),
        Rec::Bytes(t, to_dest, d) => line(t, if to_dest { "c" } else { "s" }, &b64(&d)),
        Rec::Header(h) => {
            chunk.extend_from_slice(h.as_bytes());
            chunk.push(b'\n');
        }
    }
}

/// Append `s` as a JSON string, escaped exactly as serde_json escapes it.
///
/// Written by hand because it is the recorder's hottest loop: serde_json's
/// escaper looks at every byte on its own (callgrind: ~19 instructions per
/// recorded byte), while terminal output is mostly runs that need no
/// escaping. [`next_special`] finds the end of each run sixteen bytes at a
/// time, the run is copied whole, and the escape written inline
/// (`benches/recording_cost.rs` measures it against serde_json).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 2);
    out.push(b'"');
    loop {
        // Escapes come in runs (`\r\n`, `\u001b[`): look at the next byte
        // before scanning.
        let at = if rest.first().copied().is_some_and(needs_escape) {
            0
        } else {
            next_special(rest)
        };
        let Some((&c, after)) = rest.get(at..).and_then(<[u8]>::split_first) else {
            out.extend_from_slice(rest);
            break;
        };
        out.extend_from_slice(&rest[..at]);
        // The letter after the backslash, or 0 for a `\u00XX` escape.
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            _ => 0,
        };
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            let hex = |n: u8| HEX[usize::from(n & 0xf)];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(c >> 4), hex(c)]);
        }
        rest = after;
    }
    out.push(b'"');
}

/// Whether JSON needs `c` escaped: `"`, `\` and the C0 controls.
fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// Where the first byte of `b` that needs escaping is, or `b.len()`.
///
/// Sixteen bytes at a time as two words whose flag bits are set where a
/// byte is below 0x20, `"` or `\`. A flag can also be set wrongly above a
/// rightly flagged byte (a borrow carries upward), never below one, so the
/// lowest flag is always right and it is the only one used.
fn next_special(b: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |w: u64| w.wrapping_sub(LO) & !w & HI;
    let flags = |w: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let w = u64::from_le_bytes(a);
        (w.wrapping_sub(LO * 0x20) & !w & HI)
            | zero(w ^ (LO * u64::from(b'"')))
            | zero(w ^ (LO * u64::from(b'\\')))
    };
    let mut blocks = b.chunks_exact(16);
    let mut at = 0;
    for block in &mut blocks {
        let (x, y) = (flags(&block[..8]), flags(&block[8..]));
        if x | y != 0 {
            // Little-endian: the lowest flag is the earliest byte.
            let first = if x != 0 {
                x.trailing_zeros() / 8
            } else {
                8 + y.trailing_zeros() / 8
            };
            return at + first as usize;
        }
        at += 16;
    }
    let tail = blocks.remainder();
    at + tail
        .iter()
        .position(|&c| needs_escape(c))
        .unwrap_or(tail.len())
}

fn round(t: f64) -> f64 {
    (t * 1_000_000.0).round() / 1_000_000.0
}

/// One parsed line of a recording, for replay and search.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: f64,
    pub kind: String,
    pub data: String,
}

/// Read a recording: its header and events. A torn last line (a crash
/// mid-write) is dropped; any other bad line is an error naming it.
pub fn read(path: &Path) -> Result<(serde_json::Value, Vec<Event>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_text(&text, &path.display().to_string())
}

/// Parse the text of an asciicast v2 recording; `name` (the file's path)
/// starts every error, followed by the line that is wrong.
pub fn parse_text(text: &str, name: &str) -> Result<(serde_json::Value, Vec<Event>), String> {
    let mut lines = text.split('\n').enumerate().peekable();
    let header = match lines.next() {
        Some((_, h)) => serde_json::from_str::<serde_json::Value>(h)
            .map_err(|e| format!("{name}: line 1: bad header: {e}"))?,
        None => return Err(format!("{name}: empty recording")),
    };
    if header.get("version").and_then(|v| v.as_u64()) != Some(2) {
        return Err(format!("{name}: line 1: not an asciicast v2 header"));
    }
    let mut events = Vec::new();
    while let Some((i, line)) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let last = lines.peek().is_none_or(|(_, l)| l.is_empty());
        match serde_json::from_str::<(f64, String, String)>(line) {
            Ok((time, kind, data)) if time.is_finite() && time >= 0.0 => {
                events.push(Event { time, kind, data })
            }
            Ok(_) => return Err(format!("{name}: line {}: bad event time", i + 1)),
            Err(_) if last && !text.ends_with('\n') => break,
            Err(e) => return Err(format!("{name}: line {}: {e}", i + 1)),
        }
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        push_json_str(&mut out, s);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn json_strings_match_serde_json_byte_for_byte() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii text that is long enough for words".into(),
            "a\"b\\c\n\r\t\u{8}\u{c}\u{1b}[0m\u{0}\u{1f}\u{7f}".into(),
            "héllo → ✓ 𝄞 \u{fffd}".into(),
        ];
        // Every ASCII byte at every offset of a 35-byte string: both words
        // of two 16-byte blocks and the bytes after them.
        for c in 0u8..0x80 {
            for at in 0..35 {
                let mut v = vec![b'x'; 35];
                v[at] = c;
                cases.push(String::from_utf8(v).expect("ascii"));
            }
        }
        // Two bytes at every pair of offsets, from those on either side of
        // each boundary the word tests draw (a borrow from one flagged byte
        // can flag the next one wrongly; the escaper must still be exact).
        let edges = [
            0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, 0x5b, b'\\', 0x5d, 0x7f,
        ];
        for &c1 in &edges {
            for &c2 in &edges {
                for at1 in 0..17 {
                    for at2 in at1 + 1..17 {
                        let mut v = vec![b'x'; 17];
                        v[at1] = c1;
                        v[at2] = c2;
                        cases.push(String::from_utf8(v).expect("ascii"));
                    }
                }
            }
        }
        for s in &cases {
            let want = serde_json::to_string(s).expect("serde_json");
            assert_eq!(json(s), want, "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn json_strings_match_serde_json_for_any_text(s in "\\PC*|[\\x00-\\x7f]*") {
            proptest::prop_assert_eq!(json(&s), serde_json::to_string(&s).expect("serde_json"));
        }
    }

    #[test]
    fn split_multibyte_characters_come_out_whole() {
        let mut d = Utf8Stream::default();
        let s = "héllo → ✓ 𝄞";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(1) {
            out.push_str(&d.push(chunk));
        }
        assert_eq!(out, s);
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert!(d.replaced);
        assert_eq!(d.push(b"ok"), "ok");
        assert!(!d.replaced);
    }

    #[tokio::test]
    async fn recording_round_trips_and_is_hashed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (rec, done) = Recorder::start(dir.path(), "s1", 80, 24, "t".into())
            .await
            .expect("start");
        rec.output(&Bytes::from_static(b"hello \xe2\x9c")).await;
        rec.output(&Bytes::from_static(b"\x93\r\n")).await;
        rec.resize(100, 40).await;
        rec.marker("cmd".into()).await;
        let path = rec.path.clone();
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none());
        let bytes = std::fs::read(&path).expect("file");
        assert_eq!(summary.size, bytes.len() as u64);
        assert_eq!(
            summary.blake3.as_deref(),
            Some(blake3::hash(&bytes).to_hex().as_str())
        );
        let (h, ev) = read(&path).expect("parses");
        assert_eq!(h["width"], 80);
        let text: String = ev
            .iter()
            .filter(|e| e.kind == "o")
            .map(|e| e.data.clone())
            .collect();
        assert_eq!(text, "hello ✓\r\n");
        assert!(ev.iter().any(|e| e.kind == "r" && e.data == "100x40"));
        assert!(ev.iter().any(|e| e.kind == "m" && e.data == "cmd"));
    }

    /// A long recording does not pile up in the page cache: what is on
    /// the device is dropped from it as the recording goes on.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_long_recording_keeps_little_of_itself_in_the_page_cache() {
        // On the disk the build is on: tmpfs (a common /tmp) has no device
        // to write back to and keeps every page.
        let near = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(near).expect("target/ exists");
        let dir = tempfile::tempdir_in(near).expect("tmp under target/");
        let (rec, done) = Recorder::start(dir.path(), "long", 80, 24, "t".into())
            .await
            .expect("start");
        let chunk = Bytes::from("some log line with words 1234567890\n".repeat(900));
        let total = 48 << 20;
        for _ in 0..total / chunk.len() {
            rec.output(&chunk).await;
        }
        let path = rec.path.clone();
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none(), "{:?}", summary.error);
        assert!(
            summary.size >= total as u64,
            "{} bytes recorded",
            summary.size
        );
        // fincore (util-linux) counts the file's pages in the page cache.
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(&path)
            .output()
            .expect("fincore runs (util-linux-extra)");
        let cached: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count");
        assert!(
            cached <= 3 * CACHED,
            "{cached} of {} bytes still in the page cache",
            summary.size
        );
        if Direct::open(&path).is_some() {
            assert!(
                summary.direct * 10 >= summary.size * 9,
                "{} of {} bytes written direct",
                summary.direct,
                summary.size
            );
        }
    }

    /// A Disk on a new file in `dir`, with `direct` as its direct side.
    fn disk_in(dir: &Path, direct: impl FnOnce(&Path) -> Option<Direct>) -> (Disk, PathBuf) {
        let path = dir.join("d.cast");
        let file = std::fs::File::create_new(&path).expect("create");
        let direct = direct(&path);
        (Disk::new(file, direct), path)
    }

    /// Batches of every alignment, appended as the writer appends them.
    fn append_all(d: &mut Disk, sizes: &[usize]) -> Vec<u8> {
        let mut all = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let batch: Vec<u8> = (0..n).map(|k| b'a' + ((i * 7 + k) % 26) as u8).collect();
            d.append(&batch).expect("append");
            d.size += n as u64;
            all.extend_from_slice(&batch);
        }
        all
    }

    const SIZES: &[usize] = &[10, 5000, 4086, 8192, 70_000, 3, 300_000, 4096, 1];

    #[cfg(target_os = "linux")]
    #[test]
    fn direct_writes_land_byte_for_byte_whatever_their_alignment() {
        // On the build's disk: tmpfs may refuse O_DIRECT.
        let near = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(near).expect("target/ exists");
        let dir = tempfile::tempdir_in(near).expect("tmp under target/");
        let (mut d, path) = disk_in(dir.path(), Direct::open);
        let took_direct = d.direct.is_some();
        let all = append_all(&mut d, SIZES);
        assert_eq!(std::fs::read(&path).expect("read"), all);
        if took_direct {
            assert!(d.direct.is_some(), "direct I/O was given up");
            // Everything but the ends of blocks went past the page cache.
            assert!(
                d.direct_bytes * 10 >= all.len() as u64 * 9,
                "{} of {} bytes direct",
                d.direct_bytes,
                all.len()
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache_losing_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        // A descriptor that cannot write stands in for a file system that
        // refuses direct I/O mid-recording.
        let (mut d, path) = disk_in(dir.path(), |p| {
            Some(Direct {
                file: std::fs::File::open(p).expect("open read-only"),
                staging: Vec::new(),
            })
        });
        let all = append_all(&mut d, SIZES);
        assert!(d.direct.is_none(), "still trying direct I/O");
        assert_eq!(d.direct_bytes, 0);
        assert_eq!(std::fs::read(&path).expect("read"), all);
    }

    #[test]
    fn torn_last_line_is_dropped_other_damage_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.cast");
        std::fs::write(
            &p,
            "{\"version\":2,\"width\":1,\"height\":1}\n[0.1,\"o\",\"a\"]\n[0.2,\"o\",\"b",
        )
        .expect("w");
        assert_eq!(read(&p).expect("torn tail ok").1.len(), 1);
        std::fs::write(
            &p,
            "{\"version\":2,\"width\":1,\"height\":1}\n[0.1,\"o\"\n[0.2,\"o\",\"b\"]\n",
        )
        .expect("w");
        assert!(read(&p).unwrap_err().contains("line 2"));
        std::fs::write(&p, "not json\n").expect("w");
        assert!(read(&p).unwrap_err().contains("line 1"));
    }
}
