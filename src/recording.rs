//! Session recordings: one asciicast v2 file per session channel.
//!
//! A session encodes each event into its recording's inbox, under a lock
//! it holds for the encoding, while the bytes are still in its core's
//! cache, and goes on: no queue per event, no task woken per event. A job
//! on a low-priority thread ([`crate::background`]) takes the whole inbox
//! at a time, writes and hashes it, and goes on taking it while there is
//! more; a session wakes one only when the
//! inbox holds a batch's worth ([`BATCH_BYTES`]) and none is running, and
//! otherwise tells the recording's writer task, which starts one after
//! [`LINGER`]. So a busy session costs a wake-up per batch, not per
//! chunk, and russh's buffers go back to the thread that made them at
//! once. A full inbox ([`INBOX_MAX`]) makes the session wait: a slow disk
//! slows its session (once [`UNSYNCED_MAX`] bytes wait for the device),
//! never loses its bytes.
//!
//! Each batch reaches the OS as soon as a job takes it (a `kill -9` loses
//! what arrived in the last [`LINGER`] and the batch in flight), is synced
//! to the device at most once a second, is hashed as it goes, and is fanned
//! out to live watchers over a bounded broadcast that drops for laggards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use asciicast::Header;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, Notify};

use crate::background;

/// Built with the `bench-recording-off` feature, for the benchmark's B3
/// only: session bytes are not recorded (the file holds the header and
/// markers). Never set in a normal build; `postern serve` warns loudly.
pub const UNRECORDED: bool = cfg!(feature = "bench-recording-off");

/// Live fan-out depth; a watcher further behind than this skips ahead.
const FANOUT: usize = 128;

/// Encoded bytes in an inbox that make the session start a job itself
/// (so about the most a job writes at once): 1 MiB batches against
/// 256 KiB took bulk output 190 → 233 MiB/s (session 9, then with direct
/// writes, one device request each; 2 MiB measured no better:
/// docs/BENCHMARKS.md).
const BATCH_BYTES: usize = 1 << 20;

/// Encoded bytes an inbox takes before its sessions wait for the job.
const INBOX_MAX: usize = 2 << 20;

/// How long the first event after the job went idle waits for company
/// before the writer task starts a job for it: the most a live watcher or
/// a `kill -9` waits on the inbox.
const LINGER: Duration = Duration::from_millis(8);

/// How long a recording waits with nothing written before it frees its
/// buffers (a session between two reads keeps them: freeing and growing
/// them again cost a realloc copy and fresh zeroed pages per batch).
const QUIET: Duration = Duration::from_secs(2);

/// How often a recording being written is synced to the device (sooner
/// once [`SYNC_STEP`] bytes wait).
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Bytes written and not yet synced that start a sync before the second
/// is up. Not much less than a second of bulk output: a sync every 64 MiB
/// measured 0.91x of one a second (each `fsync` commits ext4's journal,
/// and the writes behind it wait for the commit).
const SYNC_STEP: u64 = 256 << 20;

/// How often a recording being written starts writeback and drops what
/// it wrote before from the page cache ([`Disk::stream`]), and how much
/// it leaves there for the writeback to finish.
const STREAM_STEP: u64 = 8 << 20;
const STREAM_KEEP: u64 = 16 << 20;

/// Bytes written and not yet synced that make the job sync the
/// file itself before it writes more, so that its recording (and so its
/// session) waits for the device. Writes into the page cache return at
/// memory speed; without this a slow or failing disk would let a session
/// run on with gigabytes of its recording only in memory, up to the
/// kernel's dirty-page limit, and its error would wait for a sync that
/// might not return.
const UNSYNCED_MAX: u64 = 1 << 30;

/// One event, as a session hands it to its recording with its payload
/// (if it has one) beside it.
#[derive(Debug)]
enum Ev {
    Out(f64),
    In(f64),
    /// Forwarded bytes; `true` for client → destination.
    Bytes(f64, bool),
    Resize(f64, u32, u32),
    Marker(f64, String),
    /// The file's first line, written as it is.
    Header(String),
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

/// What the sessions have handed a recording that no job has taken yet,
/// and who holds the file.
#[derive(Default)]
struct Inbox {
    /// The events' lines, encoded by the sessions as they hand them over
    /// (what [`INBOX_MAX`] and [`BATCH_BYTES`] count: a flood of resizes
    /// or markers fills the inbox as surely as output does).
    batch: Batch,
    /// Output and input text split mid-character, carried to the next event.
    out_dec: Utf8Stream,
    in_dec: Utf8Stream,
    /// A job holds the writer (queued or running) and will take what
    /// arrives before it ends.
    busy: bool,
    /// The writer task has been told to start a job after [`LINGER`].
    armed: bool,
    /// Every handle is gone: the job tells the writer task when it ends.
    closing: bool,
    /// The file side, while no job holds it; `None` for good once a job
    /// was lost (`lost`), when nothing more is kept.
    writer: Option<Writer>,
    lost: bool,
    /// The disk refused a write: nothing more is written, so nothing more
    /// is encoded (the recording has failed, and its session is ended).
    stopped: bool,
}

impl Inbox {
    /// Encoded bytes waiting for a job.
    fn held(&self) -> usize {
        self.batch.bytes.len()
    }

    /// Whether nothing waits for a job.
    fn is_empty(&self) -> bool {
        self.batch.bytes.is_empty()
    }

    /// Encode an event into the inbox, on the session's thread while its
    /// payload is still in that core's cache: no copy of the payload to
    /// encode from later. (Session 6 measured encoding here as level with
    /// a recording thread doing it, when each event then still went
    /// through a queue and a wake-up; session 13's profile put the copy
    /// into the inbox at 0.05 CPU s per 256 MiB run.)
    fn put(&mut self, ev: Ev, payload: &[u8]) {
        let Inbox {
            batch,
            out_dec,
            in_dec,
            ..
        } = self;
        encode(ev, payload, batch, out_dec, in_dec);
    }

    /// Drop what waits and free the buffer that held it (unlike
    /// [`Batch::clear`], which keeps it for the next batch).
    fn discard(&mut self) {
        self.batch = Batch::default();
    }
}

/// A recording as its handles, its writer task and its jobs share it.
struct Shared {
    inbox: Mutex<Inbox>,
    /// To the writer task: events came while no job ran; or, closing,
    /// the job ended.
    wake: Notify,
    /// To sessions waiting on a full inbox: a job took it.
    room: Notify,
    /// Set when the disk refused a write or a job was lost.
    failed: AtomicBool,
    live: Fanout,
    /// Bytes of the file handed to the OS so far.
    written: AtomicU64,
    /// Bytes of the file known to be on the device (synced).
    durable: AtomicU64,
    /// To the writer task: [`SYNC_STEP`] bytes wait to be synced.
    sync_now: Notify,
    /// Microseconds the sessions waited on a full inbox.
    waited: AtomicU64,
    /// The session's span, for what the jobs log.
    span: tracing::Span,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // A panic under this lock cannot leave the inbox half-changed
        // (nothing in the critical sections panics, `encode` included: a
        // panic there would leave half a line behind); go on with it.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Log `e` and mark the recording failed.
    fn fail(&self, error: &mut Option<String>, e: String) {
        tracing::error!(parent: &self.span, "recording write failed: {e}");
        error.get_or_insert(e);
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// The session-side handle of a recording.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// Never sent on: the writer task sees the recording end when every
    /// clone is dropped.
    _alive: mpsc::Sender<()>,
    /// When the session started; event times are offsets from it.
    started: Instant,
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
    /// How long the session waited, in all, for the recording to take its
    /// bytes: a recording slower than its session slows the session.
    pub waited: Duration,
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
        let sync = Arc::new(file.try_clone()?);
        let live = Fanout::default();
        let mut inbox = Inbox {
            writer: Some(Writer::new(Disk::new(file))),
            // The header goes to the file at once.
            busy: true,
            ..Inbox::default()
        };
        inbox.put(Ev::Header(header), &[]);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(inbox),
            wake: Notify::new(),
            room: Notify::new(),
            failed: AtomicBool::new(false),
            live: live.clone(),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            sync_now: Notify::new(),
            waited: AtomicU64::new(0),
            span: tracing::Span::current(),
        });
        Job::start(&shared);
        let (alive, gone) = mpsc::channel(1);
        let writer = tokio::spawn(tracing::Instrument::in_current_span(write_all(
            shared.clone(),
            gone,
            sync,
        )));
        Ok((
            Recorder {
                shared,
                _alive: alive,
                started: Instant::now(),
                live,
                path,
            },
            writer,
        ))
    }

    /// Encode an event into the inbox; wait first while the inbox is full
    /// (the time counted in [`Summary::waited`] and the metrics).
    async fn push(&self, ev: Ev, payload: &[u8]) {
        let mut ev = Some(ev);
        if self.offer(&mut ev, payload) {
            return;
        }
        let began = Instant::now();
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the second look: a job taking the inbox
            // between the look and the wait still wakes this session.
            room.as_mut().enable();
            if self.offer(&mut ev, payload) {
                break;
            }
            room.await;
        }
        let waited = began.elapsed().as_micros() as u64;
        self.shared.waited.fetch_add(waited, Ordering::Relaxed);
        crate::metrics::global()
            .record_wait_micros
            .fetch_add(waited, Ordering::Relaxed);
    }

    /// Put the event in the inbox unless it is full (`false`, the event
    /// left in `ev`); start a job, or ask the writer task for one, if
    /// none runs.
    fn offer(&self, ev: &mut Option<Ev>, payload: &[u8]) -> bool {
        let shared = &self.shared;
        let (start, wake) = {
            let mut ib = shared.lock();
            if ib.lost || ib.stopped {
                // Nothing takes the inbox any more; already reported.
                return true;
            }
            if ib.held() >= INBOX_MAX {
                return false;
            }
            let Some(e) = ev.take() else { return true };
            ib.put(e, payload);
            if ib.busy || ib.writer.is_none() {
                (false, false)
            } else if ib.held() >= BATCH_BYTES {
                ib.busy = true;
                // The writer task is told too, once, so that it syncs the
                // file while this goes on.
                (true, !std::mem::replace(&mut ib.armed, true))
            } else {
                (false, !std::mem::replace(&mut ib.armed, true))
            }
        };
        if start {
            Job::start(shared);
        }
        if wake {
            shared.wake.notify_one();
        }
        true
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub async fn output(&self, data: &Bytes) {
        if UNRECORDED {
            return;
        }
        self.push(Ev::Out(self.now()), data).await;
    }

    pub async fn input(&self, data: &Bytes) {
        if UNRECORDED {
            return;
        }
        self.push(Ev::In(self.now()), data).await;
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        self.push(Ev::Resize(self.now(), cols, rows), &[]).await;
    }

    /// Raw forwarded bytes; `to_dest` is the client → destination side.
    pub async fn bytes(&self, to_dest: bool, data: &[u8]) {
        if UNRECORDED {
            return;
        }
        self.push(Ev::Bytes(self.now(), to_dest), data).await;
    }

    pub async fn marker(&self, label: String) {
        self.push(Ev::Marker(self.now(), label), &[]).await;
    }

    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
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

/// The file side of a recording, owned by whichever thread is writing.
struct Disk {
    file: std::fs::File,
    hash: blake3::Hasher,
    size: u64,
    /// The number of the next event line, for watchers.
    seq: u64,
    /// The first write the disk refused; nothing is written after it.
    error: Option<String>,
    /// Where the part of the file that may still be in the page cache
    /// starts ([`Disk::stream`]).
    cached_from: u64,
}

impl Disk {
    /// A new recording's file, empty.
    fn new(file: std::fs::File) -> Disk {
        Disk {
            file,
            hash: blake3::Hasher::new(),
            size: 0,
            seq: 0,
            error: None,
            cached_from: 0,
        }
    }

    /// Append `data` to the file, at `size`, through the page cache.
    ///
    /// Not `O_DIRECT`, and no wait here for writeback: both put the
    /// device on the recording's path. Direct writes to the end of an ext4
    /// file run one at a time and wait for the device (2.3 to 3.4 ms per
    /// MiB here, however many are queued), and starting writeback every
    /// 8 MiB (`sync_file_range`) and waiting for the step before blocked
    /// the writing thread as surely: bulk output with recording measured
    /// 0.63x and 0.69x of recording off that way, 0.88x with plain writes,
    /// which return once the bytes are in memory (docs/BENCHMARKS.md,
    /// session 12). Writeback is started, not waited for, by
    /// [`Disk::stream`]; the once-a-second sync makes it durable.
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, self.size)
    }
}

/// Sync `file`, whose first `to` bytes are written, note them durable,
/// and drop `from..to` (synced before or now) from the page cache, unless
/// the recording has failed: a sync after a refused one succeeds (the
/// kernel reports a writeback error once), and the page cache may then
/// hold the only copy of what the device refused.
fn sync_through(file: &std::fs::File, shared: &Shared, from: u64, to: u64) -> std::io::Result<()> {
    file.sync_data()?;
    shared.durable.fetch_max(to, Ordering::Relaxed);
    if !shared.failed.load(Ordering::SeqCst) {
        drop_cached(file, from, to);
    }
    Ok(())
}

/// Drop `from..to` of `file` from the page cache, starting writeback of
/// the dirty pages in it (those stay, and a later call drops them): a
/// recording is written once and read rarely (replay, audit), so a long
/// one should not sit in memory. Both ends are taken down to a page
/// boundary: the page the next write goes into stays (dropped, the write
/// would read it back first), and is dropped by a later call, whose
/// `from` is at or before this one's `to` (the kernel would round a
/// `from` inside a page up, and keep that page for good). Advice: an
/// error here is not the recording's.
pub fn drop_cached(file: &std::fs::File, from: u64, to: u64) {
    let page = rustix::param::page_size().max(1) as u64;
    let from = from / page * page;
    if let Some(len) = std::num::NonZeroU64::new((to / page * page).saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Encoded lines on their way to the disk, and where each event line
/// starts.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Where each event line starts in `bytes`.
    starts: Vec<usize>,
}

impl Batch {
    /// Empty the batch, keeping its buffers.
    fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }

    /// The encoded bytes.
    fn encoded(&self) -> &[u8] {
        &self.bytes
    }
}

/// The file side of a recording, and the batch a job swaps with the
/// inbox, owned by whichever job is running.
///
/// A job writes and hashes the batch it took on its own thread: with
/// page-cache writes nothing there waits on the device (the once-a-second
/// sync runs beside it), so a second thread for the write (session 10's
/// `background::write`, when writes were direct and blocked 3.4 ms per
/// MiB) only added a hand-off and a wake-up per batch.
struct Writer {
    disk: Disk,
    /// The batch taken from the inbox, being written; given back empty.
    batch: Batch,
}

impl Writer {
    fn new(disk: Disk) -> Writer {
        Writer {
            disk,
            batch: Batch::default(),
        }
    }

    /// Write the batch taken from the inbox (nothing, once the disk
    /// refused a write) and empty it for the next swap.
    fn write(&mut self, shared: &Shared) {
        self.disk.flush(&self.batch, shared);
        self.batch.clear();
    }
}

impl Disk {
    /// Append the batch, hash it and send its lines to watchers.
    fn flush(&mut self, batch: &Batch, shared: &Shared) {
        let bytes = batch.encoded();
        if bytes.is_empty() || self.error.is_some() {
            return;
        }
        let began = Instant::now();
        let res = self.append(bytes);
        crate::metrics::global().record_write(began.elapsed().as_micros() as u64);
        match res {
            Ok(()) => {
                self.hash.update(bytes);
                self.size += bytes.len() as u64;
                shared.written.store(self.size, Ordering::Relaxed);
                if let Some(live) = shared.live.watched() {
                    publish(live, batch, self.seq);
                }
                self.seq += batch.starts.len() as u64;
                self.keep_up(shared);
                self.stream(shared);
            }
            Err(e) => shared.fail(&mut self.error, e.to_string()),
        }
    }

    /// Every [`STREAM_STEP`], start writeback of what was written and drop
    /// what was written before it (clean by then on a disk that keeps up;
    /// else the next sync drops it) from the page cache: one
    /// `POSIX_FADV_DONTNEED` over both does each. The recording then
    /// cycles through about 24 MiB of page cache instead of taking a
    /// second of bulk output's worth of fresh pages between syncs
    /// (page-cache pages freed a second later are pages the next second
    /// must take new: on a VM that hands freed memory back to the host, a
    /// first touch each). Nothing here waits for writeback to finish;
    /// starting it can wait for a full device queue, which slows a
    /// recording on a disk slower than its session, as it should. The
    /// once-a-second sync makes it durable.
    ///
    /// Not once the recording has failed. A writeback that fails between
    /// two syncs leaves its pages clean, and this may drop them before the
    /// next sync reports the failure (within a second): the recording
    /// then fails as it would have, but without a copy of the refused
    /// bytes in memory. Nothing that reached the device is at risk.
    fn stream(&mut self, shared: &Shared) {
        if self.size < self.cached_from + STREAM_STEP + STREAM_KEEP
            || shared.failed.load(Ordering::Relaxed)
        {
            return;
        }
        drop_cached(&self.file, self.cached_from, self.size);
        self.cached_from = self.size - STREAM_KEEP;
    }

    /// Ask for a sync once [`SYNC_STEP`] bytes wait for one, and sync here,
    /// holding the recording, once [`UNSYNCED_MAX`] do: a disk slower than
    /// the session slows the session, and a disk that fails fails the
    /// recording now.
    fn keep_up(&mut self, shared: &Shared) {
        let durable = shared.durable.load(Ordering::Relaxed);
        let behind = self.size.saturating_sub(durable);
        if behind >= UNSYNCED_MAX {
            if let Err(e) = sync_through(&self.file, shared, durable, self.size) {
                shared.fail(&mut self.error, format!("sync: {e}"));
            }
        } else if behind >= SYNC_STEP {
            shared.sync_now.notify_one();
        }
    }
}

/// A job's hold on a recording, run on a low-priority thread. Dropped
/// before it ends (its thread panicked, or no thread took it), it marks
/// the recording lost, so that nothing waits on it.
struct Job {
    shared: Arc<Shared>,
    ended: bool,
}

impl Job {
    /// Queue a job for `shared`, whose inbox the caller has marked busy.
    fn start(shared: &Arc<Shared>) {
        let job = Job {
            shared: shared.clone(),
            ended: false,
        };
        background::run(move || job.run());
    }

    /// Take the inbox and write it, and again while more comes and no
    /// other job waits for a thread. When one does, queue the next batch
    /// behind it (a recording that never goes quiet must not keep a thread
    /// from the others); when nothing more came, give the writer back and
    /// mark the inbox idle, in the one critical section, so that an event
    /// pushed after it starts the next job.
    fn run(mut self) {
        let shared = self.shared.clone();
        let _span = shared.span.enter();
        let Some(mut w) = shared.lock().writer.take() else {
            return;
        };
        loop {
            {
                let mut ib = shared.lock();
                std::mem::swap(&mut ib.batch, &mut w.batch);
            }
            shared.room.notify_waiters();
            w.write(&shared);
            let mut ib = shared.lock();
            if w.disk.error.is_some() {
                ib.stopped = true;
                ib.discard();
            }
            let more = !ib.is_empty();
            if more && background::waiting() == 0 {
                continue;
            }
            ib.writer = Some(w);
            ib.busy = more;
            let closing = ib.closing;
            drop(ib);
            self.ended = true;
            if more {
                Job::start(&shared);
            } else if closing {
                shared.wake.notify_one();
            }
            return;
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        {
            let mut ib = self.shared.lock();
            ib.lost = true;
            ib.busy = false;
            ib.writer = None;
            ib.discard();
        }
        self.shared.failed.store(true, Ordering::SeqCst);
        tracing::error!(parent: &self.shared.span, "recording writer lost: the recording ends here");
        self.shared.wake.notify_one();
        self.shared.room.notify_waiters();
    }
}

/// Start a job if events wait and none runs.
fn kick(shared: &Arc<Shared>) {
    let start = {
        let mut ib = shared.lock();
        ib.armed = false;
        let start = !ib.busy && ib.writer.is_some() && !ib.is_empty();
        ib.busy |= start;
        start
    };
    if start {
        Job::start(shared);
    }
}

/// Free the buffers of a recording that has gone quiet; `false` if a job
/// holds them.
fn free_buffers(shared: &Shared) -> bool {
    let mut ib = shared.lock();
    if ib.busy || !ib.is_empty() {
        return false;
    }
    ib.discard();
    if let Some(w) = ib.writer.as_mut() {
        w.batch = Batch::default();
    }
    true
}

/// Start syncing what was written since the last sync began, unless a
/// sync is still in flight (or one failed); once on the device, it is
/// dropped from the page cache.
async fn sync_more(
    shared: &Arc<Shared>,
    file: &Arc<std::fs::File>,
    syncing: &mut Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    synced: &mut u64,
    sync_error: &mut Option<String>,
) {
    if !syncing.as_ref().is_none_or(|h| h.is_finished()) {
        return;
    }
    synced_ok(shared, syncing.take(), sync_error).await;
    let written = shared.written.load(Ordering::Relaxed);
    if written == *synced || sync_error.is_some() {
        return;
    }
    let (f, from, sh) = (file.clone(), *synced, shared.clone());
    *syncing = Some(tokio::task::spawn_blocking(move || {
        sync_through(&f, &sh, from, written)
    }));
    *synced = written;
}

/// Wait for the sync in flight, if any; a refused one fails the recording.
async fn synced_ok(
    shared: &Shared,
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    error: &mut Option<String>,
) {
    if let Some(h) = syncing {
        if let Ok(Err(e)) = h.await {
            shared.fail(error, e.to_string());
        }
    }
}

impl Summary {
    /// A recording whose writer was lost: no size or digest to report.
    fn lost(error: String) -> Summary {
        Summary {
            error: Some(error),
            ..Summary::default()
        }
    }
}

/// The writer task: starts a job [`LINGER`] after events arrive with none
/// running, syncs the file to the device at most once a second while it
/// is written (beside the writes: an `fdatasync` can take a few hundred ms
/// on a busy disk), frees the buffers after [`QUIET`], and once every
/// handle is gone writes what is left and reports.
async fn write_all(
    shared: Arc<Shared>,
    mut alive: mpsc::Receiver<()>,
    file: Arc<std::fs::File>,
) -> Summary {
    use tokio::time::{sleep, sleep_until, Instant as At};
    let mut tick = Some(At::now() + SYNC_EVERY);
    // `written` when the last sync started, and when it was last seen to change.
    let (mut synced, mut seen, mut changed) = (0u64, 0u64, Instant::now());
    let mut holding = true;
    let mut syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    let mut sync_error: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            r = alive.recv() => if r.is_none() { break },
            () = shared.wake.notified() => {
                sleep(LINGER).await;
                kick(&shared);
                holding = true;
                tick.get_or_insert_with(|| At::now() + SYNC_EVERY);
            }
            () = shared.sync_now.notified() => {
                sync_more(&shared, &file, &mut syncing, &mut synced, &mut sync_error).await;
            }
            () = sleep_until(tick.unwrap_or_else(At::now)), if tick.is_some() => {
                let written = shared.written.load(Ordering::Relaxed);
                sync_more(&shared, &file, &mut syncing, &mut synced, &mut sync_error).await;
                if written != seen {
                    (seen, changed) = (written, Instant::now());
                } else if holding && changed.elapsed() >= QUIET {
                    holding = !free_buffers(&shared);
                }
                let more = written != synced || holding || syncing.is_some();
                tick = more.then(|| At::now() + SYNC_EVERY);
            }
        }
    }
    // Every handle is gone, so nothing more comes: wait for the running
    // job, then write what is left here.
    let left = loop {
        let ended = shared.wake.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        {
            let mut ib = shared.lock();
            ib.closing = true;
            if !ib.busy {
                let left = ib.writer.take();
                let rest = std::mem::take(&mut ib.batch);
                break left.map(|mut w| {
                    w.batch = rest;
                    w
                });
            }
        }
        ended.await;
    };
    synced_ok(&shared, syncing.take(), &mut sync_error).await;
    let Some(w) = left else {
        return Summary::lost("recording writer thread lost".into());
    };
    // After a refused sync the kernel marks the pages clean and the next
    // sync succeeds: the page cache may then hold the only copy of what
    // the device lost, so it is not dropped.
    let failed_before = sync_error.is_some();
    let last = tokio::task::spawn_blocking({
        let shared = shared.clone();
        move || {
            let mut w = w;
            w.write(&shared);
            let d = &w.disk;
            let synced = d.file.sync_data();
            if synced.is_ok() && !failed_before && d.error.is_none() {
                drop_cached(&d.file, 0, d.size);
            }
            (w, synced)
        }
    })
    .await;
    let (w, synced) = match last {
        Ok(x) => x,
        Err(e) => return Summary::lost(format!("recording writer thread: {e}")),
    };
    let disk = w.disk;
    let mut error = disk.error.or(sync_error);
    if let Err(e) = synced {
        shared.fail(&mut error, e.to_string());
    }
    Summary {
        size: disk.size,
        blake3: Some(disk.hash.finalize().to_hex().to_string()),
        error,
        waited: Duration::from_micros(shared.waited.load(Ordering::Relaxed)),
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
fn encode(
    ev: Ev,
    payload: &[u8],
    batch: &mut Batch,
    out_dec: &mut Utf8Stream,
    in_dec: &mut Utf8Stream,
) {
    let (chunk, starts) = (&mut batch.bytes, &mut batch.starts);
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    // `[t, "kind", "`, as serde_json writes a tuple (a finite f64 always
    // serialises); the string and `"]` follow.
    let open = |chunk: &mut Vec<u8>, starts: &mut Vec<usize>, t: f64, kind: &str| {
        starts.push(chunk.len());
        chunk.push(b'[');
        let _ = serde_json::to_writer(&mut *chunk, &round(t));
        chunk.extend_from_slice(b",\"");
        chunk.extend_from_slice(kind.as_bytes());
        chunk.extend_from_slice(b"\",\"");
    };
    let line = |chunk: &mut Vec<u8>, starts: &mut Vec<usize>, t: f64, kind: &str, data: &str| {
        open(chunk, starts, t, kind);
        escape(chunk, data.as_bytes(), false);
        chunk.extend_from_slice(b"\"]\n");
    };
    match ev {
        Ev::Out(t) => {
            // Escaped straight from the payload while it is ASCII (most
            // output: one pass over it, not a UTF-8 check and then the
            // escaper); from its first other byte on, decoded first.
            let (end, lines) = (chunk.len(), starts.len());
            open(chunk, starts, t, "o");
            let body = chunk.len();
            let ascii = if out_dec.carry.is_empty() {
                escape(chunk, payload, true)
            } else {
                0
            };
            out_dec.replaced = false;
            if let Some(rest) = payload.get(ascii..).filter(|r| !r.is_empty()) {
                let text = out_dec.push_cow(rest);
                escape(chunk, text.as_bytes(), false);
            }
            if chunk.len() == body {
                // Nothing to show yet (a character split across chunks).
                chunk.truncate(end);
                starts.truncate(lines);
            } else {
                chunk.extend_from_slice(b"\"]\n");
            }
            if out_dec.replaced {
                // Players get U+FFFD (asciicast is JSON text); the exact
                // bytes follow in an `x` event for tools.
                line(chunk, starts, t, "x", &b64(payload));
            }
        }
        Ev::In(t) => {
            let text = in_dec.push_cow(payload);
            if !text.is_empty() {
                line(chunk, starts, t, "i", &text);
            }
        }
        Ev::Resize(t, c, r) => line(chunk, starts, t, "r", &format!("{c}x{r}")),
        Ev::Marker(t, label) => line(chunk, starts, t, "m", &label),
        Ev::Bytes(t, to_dest) => {
            let kind = if to_dest { "c" } else { "s" };
            line(chunk, starts, t, kind, &b64(payload));
        }
        Ev::Header(h) => {
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
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape(out, s.as_bytes(), false);
    out.push(b'"');
}

/// Append `b` escaped as the inside of a JSON string, up to its end or,
/// with `ascii`, up to its first byte above 0x7f: how many bytes it took.
/// (`b` must be UTF-8 where it is not stopped at such a byte.)
fn escape(out: &mut Vec<u8>, b: &[u8], ascii: bool) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = b;
    loop {
        // Escapes come in runs (`\r\n`, `\u001b[`): look at the next byte
        // before scanning.
        let at = if rest.first().copied().is_some_and(needs_escape) {
            0
        } else {
            next_special(rest, ascii)
        };
        let Some((&c, after)) = rest.get(at..).and_then(<[u8]>::split_first) else {
            out.extend_from_slice(rest);
            return b.len();
        };
        out.extend_from_slice(&rest[..at]);
        if c > 0x7f {
            return b.len() - rest.len() + at;
        }
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
}

/// Whether JSON needs `c` escaped: `"`, `\` and the C0 controls.
fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// Where the first byte of `b` that needs escaping (or, with `ascii`, is
/// above 0x7f) is, or `b.len()`.
///
/// Sixteen bytes at a time as two words whose flag bits are set where a
/// byte is below 0x20, `"` or `\`. A flag can also be set wrongly above a
/// rightly flagged byte (a borrow carries upward), never below one, so the
/// lowest flag is always right and it is the only one used.
fn next_special(b: &[u8], ascii: bool) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |w: u64| w.wrapping_sub(LO) & !w & HI;
    // Bytes above 0x7f have their own bit set: an exact flag.
    let high = if ascii { HI } else { 0 };
    let flags = |w: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let w = u64::from_le_bytes(a);
        (w & high)
            | (w.wrapping_sub(LO * 0x20) & !w & HI)
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
        .position(|&c| needs_escape(c) || (ascii && c > 0x7f))
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

    /// Output lines as the recorder wrote them before its ASCII fast path:
    /// each chunk decoded whole, then escaped by serde_json.
    fn out_lines_the_slow_way(chunks: &[Vec<u8>]) -> Vec<u8> {
        use base64::Engine;
        let mut dec = Utf8Stream::default();
        let mut out = Vec::new();
        let line = |out: &mut Vec<u8>, kind: &str, data: &str| {
            let data = serde_json::to_string(data).expect("serde_json");
            out.extend_from_slice(format!("[0.5,\"{kind}\",{data}]\n").as_bytes());
        };
        for c in chunks {
            let text = dec.push(c);
            if dec.replaced {
                line(&mut out, "o", &text);
                let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                line(&mut out, "x", &b64);
            } else if !text.is_empty() {
                line(&mut out, "o", &text);
            }
        }
        out
    }

    fn out_lines(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut batch = Batch::default();
        let (mut o, mut i) = (Utf8Stream::default(), Utf8Stream::default());
        for c in chunks {
            encode(Ev::Out(0.5), c, &mut batch, &mut o, &mut i);
        }
        batch.bytes
    }

    fn bytes_near_the_edges() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let byte = prop_oneof![
            0u8..0x80,
            0x80u8..=0xff,
            Just(b'"'),
            Just(b'\\'),
            Just(0x1b),
            Just(0xe2),
        ];
        proptest::collection::vec(byte, 0..40)
    }

    proptest::proptest! {
        #[test]
        fn output_lines_match_decoding_then_escaping_for_any_bytes(
            chunks in proptest::collection::vec(bytes_near_the_edges(), 0..8)
        ) {
            proptest::prop_assert_eq!(out_lines(&chunks), out_lines_the_slow_way(&chunks));
        }

        #[test]
        fn output_lines_match_for_text_cut_anywhere(
            s in "\\PC{0,60}",
            cuts in proptest::collection::vec(0usize..80, 0..5),
        ) {
            let b = s.as_bytes();
            let mut at: Vec<usize> = cuts.into_iter().map(|c| c.min(b.len())).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for &c in at.iter().chain([b.len()].iter()) {
                chunks.push(b[from..c].to_vec());
                from = c;
            }
            proptest::prop_assert_eq!(out_lines(&chunks), out_lines_the_slow_way(&chunks));
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

    /// A folder on the disk the build is on: tmpfs (a common /tmp) has no
    /// device to write back to and keeps every page.
    fn on_disk() -> tempfile::TempDir {
        let near = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(near).expect("target/ exists");
        tempfile::tempdir_in(near).expect("tmp under target/")
    }

    /// How much of the file at `path` is in the page cache, by fincore
    /// (util-linux).
    #[cfg(target_os = "linux")]
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore runs (util-linux-extra)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count")
    }

    /// Write `mib` 1 MiB batches straight through a recording's file side,
    /// `pause` apart, with the recording marked failed first or not; how
    /// much of the file is in the page cache after.
    #[cfg(target_os = "linux")]
    async fn streamed(mib: usize, pause: Duration, failed: bool) -> (u64, u64) {
        let dir = on_disk();
        let (rec, done) = Recorder::start(dir.path(), "stream", 80, 24, "t".into())
            .await
            .expect("start");
        settled(&rec).await;
        let mut w = rec.shared.lock().writer.take().expect("writer idle");
        let shared = rec.shared.clone();
        shared.failed.store(failed, Ordering::SeqCst);
        let mut batch = Batch::default();
        batch.bytes.resize(1 << 20, b'x');
        for _ in 0..mib {
            w.disk.flush(&batch, &shared);
            tokio::time::sleep(pause).await;
        }
        let cached = cached_bytes(&rec.path);
        let size = w.disk.size;
        rec.shared.lock().writer = Some(w);
        drop(rec);
        let _ = done.await;
        (cached, size)
    }

    /// While a recording is written, what it wrote [`STREAM_KEEP`] and
    /// more before is dropped from the page cache, well before the
    /// once-a-second sync; and nothing is once it has failed.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_recording_streams_through_the_page_cache_until_it_fails() {
        let pause = Duration::from_millis(5);
        let (cached, size) = streamed(48, pause, false).await;
        assert!(size >= 48 << 20);
        let most = STREAM_STEP + STREAM_KEEP + (8 << 20);
        assert!(cached <= most, "{cached} of {size} bytes cached");
        let (cached, size) = streamed(48, pause, true).await;
        assert!(
            cached >= size - (4 << 20),
            "{cached} of {size} bytes cached after a failure"
        );
    }

    /// A recording [`SYNC_STEP`] bytes ahead of the device leaves the sync
    /// to the writer task, and one [`UNSYNCED_MAX`] ahead syncs before it
    /// writes on (its session waits for the disk).
    #[tokio::test]
    async fn a_recording_far_ahead_of_the_device_syncs_before_it_goes_on() {
        let (_dir, rec, done) = new_recording("ahead").await;
        settled(&rec).await;
        let mut w = rec.shared.lock().writer.take().expect("writer idle");
        let shared = rec.shared.clone();
        let durable = |s: &Shared| s.durable.load(Ordering::Relaxed);
        let disk = &mut w.disk;
        // As if a sync had landed up to here and SYNC_STEP more were
        // written since (the file is sparse below).
        let base = disk.size;
        shared.durable.store(base, Ordering::Relaxed);
        disk.size = base + SYNC_STEP;
        let mut batch = Batch::default();
        batch.bytes.extend_from_slice(b"[0.1,\"o\",\"x\"]\n");
        disk.flush(&batch, &shared);
        assert_eq!(durable(&shared), base, "synced on the job's path early");
        // The writer task syncs it, off the session's path.
        let t0 = Instant::now();
        while durable(&shared) < disk.size {
            assert!(
                t0.elapsed() < 15 * SYNC_EVERY,
                "the writer task never synced"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        disk.size = durable(&shared) + UNSYNCED_MAX;
        disk.flush(&batch, &shared);
        assert!(disk.error.is_none(), "{:?}", disk.error);
        assert_eq!(durable(&shared), disk.size, "not synced before going on");
        rec.shared.lock().writer = Some(w);
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none(), "{:?}", summary.error);
    }

    /// Dropped a sync at a time, at offsets inside pages as a recording's
    /// syncs fall, a file keeps no page behind: each call's first page is
    /// the one the call before kept for the next write.
    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_sync_by_sync_leaves_no_page_behind() {
        use std::io::Write;
        let dir = on_disk();
        let path = dir.path().join("steps.cast");
        let mut f = std::fs::File::create_new(&path).expect("create");
        let (mut size, mut synced) = (0u64, 0u64);
        let step = vec![b'x'; 100_003];
        for _ in 0..64 {
            f.write_all(&step).expect("write");
            size += step.len() as u64;
            f.sync_data().expect("sync");
            drop_cached(&f, synced, size);
            synced = size;
        }
        let left = cached_bytes(&path);
        assert!(
            left <= rustix::param::page_size() as u64,
            "{left} of {size} bytes still cached"
        );
    }

    /// A long recording does not pile up in the page cache: what was
    /// streamed out or synced is dropped from it while the recording goes
    /// on, and the rest once it ends.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_long_recording_keeps_little_of_itself_in_the_page_cache() {
        let dir = on_disk();
        let (rec, done) = Recorder::start(dir.path(), "long", 80, 24, "t".into())
            .await
            .expect("start");
        let chunk = Bytes::from("some log line with words 1234567890\n".repeat(900));
        let total = 48 << 20;
        for _ in 0..total / chunk.len() {
            rec.output(&chunk).await;
        }
        let path = rec.path.clone();
        let cached = || cached_bytes(&path);
        let t0 = Instant::now();
        let mut most = 0;
        // Still open: a sync or two later, its pages have left the cache.
        loop {
            let now = cached();
            most = most.max(now);
            if rec.shared.written.load(Ordering::Relaxed) >= total as u64 && now <= 1 << 20 {
                break;
            }
            assert!(
                t0.elapsed() < 15 * SYNC_EVERY,
                "{now} bytes of an open recording still cached after {:?}",
                t0.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(most > 0, "fincore never saw the recording cached");
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none(), "{:?}", summary.error);
        assert!(
            summary.size >= total as u64,
            "{} bytes recorded",
            summary.size
        );
        let left = cached();
        assert!(
            left <= rustix::param::page_size() as u64,
            "{left} of {} bytes still cached",
            summary.size
        );
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

    /// Two handles of one recording pushing far more than an inbox holds,
    /// output with markers between its chunks and input beside it: every
    /// byte lands, each handle's events in the order it pushed them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_lose_nothing_and_keep_their_order_past_a_full_inbox() {
        let (_dir, rec, done) = new_recording("busy").await;
        let path = rec.path.clone();
        // No job takes the inbox until it is full, so both handles meet it
        // full at least once.
        settled(&rec).await;
        rec.shared.lock().busy = true;
        let chunks = 3 * INBOX_MAX / 30_000;
        let out = rec.clone();
        let outputs = tokio::spawn(async move {
            let mut sent = String::new();
            for i in 0..chunks {
                let chunk = format!("{i:06} {}\r\n", "x".repeat(30_000));
                out.output(&Bytes::from(chunk.clone())).await;
                sent.push_str(&chunk);
                if i % 10 == 9 {
                    out.marker(format!("after {i}")).await;
                }
            }
            sent
        });
        let inp = rec.clone();
        let inputs = tokio::spawn(async move {
            let mut sent = String::new();
            for i in 0..2000 {
                let key = format!("k{i};");
                inp.input(&Bytes::from(key.clone())).await;
                sent.push_str(&key);
            }
            sent
        });
        let t0 = Instant::now();
        while rec.shared.lock().held() < INBOX_MAX {
            assert!(t0.elapsed() < Duration::from_secs(10), "inbox never filled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Job::start(&rec.shared);
        let (sent_out, sent_in) = (outputs.await.expect("out"), inputs.await.expect("in"));
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none(), "{:?}", summary.error);
        assert!(
            summary.waited > Duration::ZERO,
            "no handle met a full inbox"
        );
        let (_, ev) = read(&path).expect("parses");
        let mut got_out = String::new();
        let mut markers = 0;
        for e in &ev {
            match e.kind.as_str() {
                "o" => got_out.push_str(&e.data),
                "m" => {
                    // Right after the chunk it followed.
                    let n: usize = e.data["after ".len()..].parse().expect("marker number");
                    let last = got_out.rfind("\r\n").map_or(0, |end| {
                        let line = got_out[..end].rsplit("\r\n").next().unwrap_or_default();
                        line[..6].parse::<usize>().unwrap_or(usize::MAX)
                    });
                    assert_eq!(last, n, "marker {n} after chunk {last}");
                    markers += 1;
                }
                _ => {}
            }
        }
        assert!(
            got_out == sent_out,
            "output differs ({} vs {} bytes)",
            got_out.len(),
            sent_out.len()
        );
        assert_eq!(markers, chunks / 10);
        let got_in: String = ev
            .iter()
            .filter(|e| e.kind == "i")
            .map(|e| e.data.as_str())
            .collect();
        assert_eq!(got_in, sent_in);
        let times: Vec<f64> = ev
            .iter()
            .filter(|e| e.kind == "o")
            .map(|e| e.time)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "output times go back"
        );
    }

    /// One keystroke's echo and nothing after it still reaches the file
    /// (and watchers) while the session goes on.
    #[tokio::test]
    async fn a_lone_event_is_written_without_more_coming() {
        let (_dir, rec, done) = new_recording("lone").await;
        let mut feed = rec.live.subscribe();
        rec.output(&Bytes::from_static(b"echo me")).await;
        let line = tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .expect("a watcher sees it within 5 s")
            .expect("line");
        assert!(line.text.contains("echo me"), "{}", line.text);
        let text = std::fs::read_to_string(&rec.path).expect("file");
        assert!(text.contains("\"echo me\""), "{text}");
        drop(rec);
        assert!(done.await.expect("writer").error.is_none());
    }

    /// A job that never ran (its thread died, or none took it) fails the
    /// recording: sessions are not left waiting on a full inbox, and the
    /// summary says the recording is incomplete.
    #[tokio::test]
    async fn a_lost_job_fails_the_recording_and_frees_its_sessions() {
        let (_dir, rec, done) = new_recording("lost").await;
        // Once the header is written, a job is queued and lost unrun.
        settled(&rec).await;
        rec.shared.lock().busy = true;
        drop(Job {
            shared: rec.shared.clone(),
            ended: false,
        });
        assert!(rec.has_failed());
        let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
        let pushed = tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..2 * INBOX_MAX / chunk.len() {
                rec.output(&chunk).await;
            }
        })
        .await;
        assert!(pushed.is_ok(), "a session waited on a lost recording");
        drop(rec);
        let summary = done.await.expect("writer");
        assert!(
            summary.error.as_deref().is_some_and(|e| e.contains("lost")),
            "{:?}",
            summary.error
        );
    }

    /// A new recording named `id` in a folder of its own.
    async fn new_recording(
        id: &str,
    ) -> (
        tempfile::TempDir,
        Recorder,
        tokio::task::JoinHandle<Summary>,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let (rec, done) = Recorder::start(dir.path(), id, 80, 24, "t".into())
            .await
            .expect("start");
        (dir, rec, done)
    }

    /// Wait for a recording's header job to end.
    async fn settled(rec: &Recorder) {
        let t0 = Instant::now();
        while rec.shared.lock().busy {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "header job never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Recordings that never go quiet take turns on the recording
    /// threads with the others: a new session's output is written while
    /// more of them stream than there are threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streaming_recordings_leave_the_threads_to_others_in_turn() {
        let dir = tempfile::tempdir().expect("tmp");
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        let stop = Arc::new(AtomicBool::new(false));
        let mut streams = Vec::new();
        for i in 0..threads + 1 {
            let (rec, done) = Recorder::start(dir.path(), &format!("s{i}"), 80, 24, "t".into())
                .await
                .expect("start");
            let stop = stop.clone();
            streams.push(tokio::spawn(async move {
                let chunk = Bytes::from("a line of streaming output\n".repeat(1200));
                while !stop.load(Ordering::Relaxed) {
                    rec.output(&chunk).await;
                }
                drop(rec);
                done.await.expect("writer")
            }));
        }
        // Let the streams fill their inboxes and take the threads.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rec, done) = Recorder::start(dir.path(), "late", 80, 24, "t".into())
            .await
            .expect("start");
        let mut feed = rec.live.subscribe();
        rec.output(&Bytes::from_static(b"still heard")).await;
        let seen = tokio::time::timeout(Duration::from_secs(10), feed.recv()).await;
        stop.store(true, Ordering::Relaxed);
        for s in streams {
            assert!(s.await.expect("stream").error.is_none());
        }
        let line = seen
            .expect("written while the others streamed")
            .expect("line");
        assert!(line.text.contains("still heard"), "{}", line.text);
        drop(rec);
        assert!(done.await.expect("writer").error.is_none());
    }

    /// Events without payload count against the inbox too: a client
    /// flooding window changes waits on a full inbox like one flooding
    /// output, and loses none of them.
    #[tokio::test]
    async fn a_flood_of_resizes_fills_the_inbox_and_waits() {
        let (dir, rec, done) = new_recording("flood").await;
        settled(&rec).await;
        // No job takes the inbox while it is marked busy with none queued.
        rec.shared.lock().busy = true;
        // A resize line is at least 18 bytes (`[0.0,"r","80x24"]` and
        // its newline), so twice INBOX_MAX / 16 of them cannot fit.
        let room = INBOX_MAX / 16;
        let flooder = rec.clone();
        let flood = tokio::spawn(async move {
            for i in 0..2 * room as u32 {
                flooder.resize(80 + i % 7, 24).await;
            }
        });
        let t0 = Instant::now();
        while rec.shared.lock().held() < INBOX_MAX {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the flood never filled the inbox"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = rec.shared.lock().held();
        assert!(!flood.is_finished(), "the flood never waited");
        assert!(
            held < INBOX_MAX + 64,
            "{held} bytes held, room for {INBOX_MAX}"
        );
        Job::start(&rec.shared);
        tokio::time::timeout(Duration::from_secs(10), flood)
            .await
            .expect("the flood went on once the inbox was taken")
            .expect("flood task");
        drop(rec);
        let path = dir.path().join("flood.cast");
        let summary = done.await.expect("writer");
        assert!(summary.error.is_none(), "{:?}", summary.error);
        // The 300 ms the flood stood still are reported as the session's wait.
        assert!(
            summary.waited >= Duration::from_millis(250),
            "waited {:?}",
            summary.waited
        );
        let (_, ev) = read(&path).expect("parses");
        assert_eq!(ev.iter().filter(|e| e.kind == "r").count(), 2 * room);
    }
}
