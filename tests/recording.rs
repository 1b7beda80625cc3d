//! Recording, export, replay, watch, kill and search, through the real
//! ssh client against a real sshd, read back with the real asciinema.

mod support;

use std::io::{BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn sessions(b: &Bastion, who: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["sessions", "--json"];
    args.extend_from_slice(extra);
    let out = b.access(who, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

/// The id of the (first) live session, once there is one.
fn live_session_id(b: &Bastion) -> String {
    eventually(Duration::from_secs(5), "a live session", || {
        sessions(b, "dave", &[])
            .first()
            .filter(|s| s["state"] == "live")
            .map(|s| s["id"].as_str().unwrap_or("").to_string())
    })
}

fn asciinema_cat(path: &std::path::Path) -> String {
    // asciinema 2.2's `cat` insists on a /dev/tty: give it one with script(1).
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat '{}'", path.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("script and asciinema (apt-get install asciinema)");
    assert!(out.status.success(), "asciinema cat: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn exec_sessions_are_recorded_exported_and_private() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    // A multi-byte character split across two writes, and invalid bytes.
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &[
            "web-1",
            "printf 'h\\303\\251llo \\342'; sleep 0.3; printf '\\234\\223 done\\n'",
        ],
    );
    assert_eq!(text(&out.stdout), "héllo ✓ done\n");

    let list = sessions(&b, "dave", &[]);
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "web-1");
    assert_eq!(s["login"], "qa");
    assert_eq!(s["state"], "ended");
    assert_eq!(s["exit_status"], 0);
    assert_eq!(s["bytes_out"], "héllo ✓ done\n".len());
    let id = s["id"].as_str().expect("id").to_string();

    // The stored size and BLAKE3 describe the file, as `b3sum` reads it.
    let path = std::path::PathBuf::from(s["recording"].as_str().expect("recording path"));
    let bytes = std::fs::read(&path).expect("recording exists");
    assert_eq!(s["size"], bytes.len());
    let digest = s["blake3"].as_str().expect("blake3 in the session record");
    assert_eq!(digest.len(), 64, "{digest}");
    let b3sum = Command::new("b3sum").arg(&path).output().expect("b3sum");
    assert!(b3sum.status.success(), "{}", text(&b3sum.stderr));
    assert_eq!(text(&b3sum.stdout).split_whitespace().next(), Some(digest));

    // export → asciinema reads it and the split character came out whole.
    let out = b.access("dave", &["export", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = b.dir.join("exported.cast");
    std::fs::write(&exported, &out.stdout).expect("write");
    assert_eq!(
        std::fs::read(&exported).expect("read"),
        bytes,
        "export is the stored file"
    );
    assert!(asciinema_cat(&exported).contains("héllo ✓ done"));

    // The requester sees their own; another requester sees nothing.
    assert_eq!(sessions(&b, "alice", &[]).len(), 1);
    assert!(sessions(&b, "eve", &[]).is_empty());
    for verb in [
        vec!["export", id.as_str()],
        vec!["replay", id.as_str()],
        vec!["watch", id.as_str()],
    ] {
        let out = b.access("eve", &verb);
        assert!(!out.status.success(), "eve must not {verb:?}");
        assert!(!text(&out.stdout).contains("done"));
    }

    // replay plays it over ssh with no local tools.
    let out = b.access("dave", &["replay", &id, "--speed", "10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("héllo ✓ done"));
}

#[test]
fn gate_commands_are_recorded_and_searchable() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-readonly", "1h", &["bob"]);
    let out = b.login("alice", &cert, "qa", &["web-1", "uptime"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = b.login("alice", &cert, "qa", &["web-1", "cat /etc/shadow"]);
    assert_eq!(out.status.code(), Some(126));
    let list = sessions(&b, "dave", &["--grep", "shadow"]);
    assert_eq!(list.len(), 1, "{list:?}");
    let cmds = list[0]["commands"].as_array().expect("commands");
    assert_eq!(cmds[0]["line"], "cat /etc/shadow");
    assert_eq!(cmds[0]["allowed"], false);
    let list = sessions(&b, "dave", &["--grep", "'load average'"]);
    assert_eq!(
        list.len(),
        1,
        "output search finds the uptime session: {list:?}"
    );
    assert_eq!(list[0]["commands"][0]["allowed"], true);
    assert!(sessions(&b, "dave", &["--user", "eve"]).is_empty());
    assert_eq!(
        sessions(&b, "dave", &["--target", "web-1", "--since", "1h"]).len(),
        2
    );
    // The gate marker is in the recording.
    let id = list[0]["id"].as_str().expect("id");
    let out = b.access("dave", &["export", id]);
    assert!(
        text(&out.stdout).contains("\"m\",\"allowed: uptime\""),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn watch_follows_a_live_session_and_kill_ends_one() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args([
        "web-1",
        "for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.3; done; sleep 30",
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    read_until(&mut r, "tick2");
    let id = live_session_id(&b);
    let mut w = b.ssh_cmd(b.user("dave"), None, "access");
    w.args(["watch", &id]).stdout(Stdio::piped());
    let mut watcher = w.spawn().expect("watch");
    let mut wr = BufReader::new(watcher.stdout.take().expect("stdout"));
    let seen = read_until(&mut wr, "tick6");
    assert!(
        seen.contains("tick1"),
        "the watch starts with what happened so far: {seen}"
    );
    assert!(seen.contains("tick6"), "and follows live: {seen}");

    let started = Instant::now();
    let out = b.access("dave", &["kill", &id, "--reason", "suspicious activity"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = child.wait().expect("ssh ends");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "killed in {:?}",
        started.elapsed()
    );
    assert!(!status.success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(err.contains("session killed by dave"), "{err}");
    let rest = read_until(&mut wr, "session ended");
    assert!(rest.contains("session ended"), "{rest}");
    let _ = watcher.wait();
    let s = &sessions(&b, "dave", &[])[0];
    assert_eq!(s["state"], "ended");
    assert!(
        s["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("killed by dave"),
        "{s}"
    );
    // Only admins kill.
    let out = b.access("alice", &["kill", &id, "--reason", "x"]);
    assert!(!out.status.success());
}

/// CPU hogs at normal priority, one per core, until dropped.
struct Hogs(Vec<std::process::Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        for h in &mut self.0 {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// The only session's record once it has ended, and its recording's path.
fn ended_session(b: &Bastion) -> (serde_json::Value, std::path::PathBuf) {
    let s = eventually(Duration::from_secs(60), "the session ended", || {
        sessions(b, "dave", &[])
            .into_iter()
            .next()
            .filter(|s| s["state"] == "ended")
    });
    let path = std::path::PathBuf::from(s["recording"].as_str().expect("recording path"));
    (s, path)
}

/// The recording's output is exactly what the client was shown.
fn assert_recorded(path: &std::path::Path, shown: &str) {
    let (_, events) = postern::recording::read(path).expect("recording parses");
    let recorded: String = events
        .iter()
        .filter(|e| e.kind == "o")
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(recorded.len(), shown.len(), "recorded bytes");
    assert!(
        recorded == shown,
        "the recording differs from what was shown"
    );
}

#[test]
fn a_recorder_starved_of_cpu_slows_its_session_and_loses_nothing() {
    // The recorder's threads run at nice +10 (src/background.rs). With
    // every core busy at normal priority they get little CPU; the session
    // must then wait for them, and every byte must still be recorded.
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _hogs = Hogs(
        (0..cores)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "exec yes > /dev/null"])
                    .spawn()
                    .expect("sh")
            })
            .collect(),
    );
    let out = b.login("alice", &cert, "qa", &["web-1", "seq 1 1500000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.ends_with("\n1500000\n"), "output cut short");

    let (s, path) = ended_session(&b);
    assert_recorded(&path, &shown);
    // The digest covers the whole file, as b3sum reads it.
    let b3sum = Command::new("b3sum").arg(&path).output().expect("b3sum");
    assert_eq!(
        text(&b3sum.stdout).split_whitespace().next(),
        s["blake3"].as_str()
    );
}

#[test]
fn a_long_session_s_recording_does_not_pile_up_in_the_page_cache() {
    // About 48 MB of output through ssh -> postern -> sshd. The recorder
    // drops what each fsync put on the device from the page cache
    // (recording::drop_cached), so the finished file keeps almost none of
    // itself cached, not all of it.
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let out = b.login("alice", &cert, "qa", &["web-1", "seq 1 6500000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.ends_with("\n6500000\n"), "output cut short");
    // Counted before anything here reads the file back into the cache.
    let (_, path) = ended_session(&b);
    let size = std::fs::metadata(&path).expect("recording").len();
    assert!(size > 48 << 20, "recording is {size} bytes");
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&path)
        .output()
        .expect("stat");
    assert_ne!(
        text(&fs.stdout).trim(),
        "tmpfs",
        "the test's temporary folder is on tmpfs, which keeps every page: \
         set TMPDIR to a folder on a disk"
    );
    // fincore (util-linux-extra) counts the file's pages in the page cache.
    let cached = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(&path)
        .output()
        .expect("fincore runs (util-linux-extra)");
    let cached: u64 = text(&cached.stdout)
        .trim()
        .parse()
        .expect("fincore prints a byte count");
    assert!(
        cached <= 1 << 20,
        "{cached} of {size} bytes of the recording still in the page cache"
    );
    assert_recorded(&path, &shown);
}

#[test]
fn a_slow_watcher_does_not_slow_the_session() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args([
        "web-1",
        "sleep 1; head -c 30000000 /dev/zero | tr '\\0' x; echo; echo finished",
    ]);
    c.stdout(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    let id = live_session_id(&b);
    // A watcher that never reads its output.
    let mut w = b.ssh_cmd(b.user("dave"), None, "access");
    w.args(["watch", &id]).stdout(Stdio::piped());
    let mut stuck = w.spawn().expect("watch");
    let started = Instant::now();
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    assert!(child.wait().expect("ssh").success());
    assert!(text(&out).ends_with("finished\n"));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let _ = stuck.kill();
    let _ = stuck.wait();
}

#[test]
fn kill_9_leaves_parseable_recordings_and_interrupted_sessions() {
    let mut b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args([
        "web-1",
        "for i in $(seq 1 100); do echo line$i; sleep 0.05; done",
    ]);
    c.stdout(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    // What the client saw 0.5 s before the crash must be on disk: only the
    // batch in flight at the moment of a kill -9 may be lost.
    read_until(&mut r, "line30");
    b.kill9();
    let _ = child.wait();
    b.serve();
    let s = &sessions(&b, "dave", &[])[0];
    assert_eq!(s["state"], "interrupted", "{s}");
    let path = std::path::PathBuf::from(s["recording"].as_str().expect("path"));
    let shown = asciinema_cat(&path);
    assert!(
        shown.contains("line20"),
        "everything up to the crash is there: {shown}"
    );
}

/// A mounted tmpfs, unmounted on drop (also when a test panics).
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mount a small tmpfs (CI runs as root) and point the recordings there.
fn small_disk(b: &mut Bastion, extra: &str) -> SmallDisk {
    let dir = b.dir.join("smalldisk");
    std::fs::create_dir_all(&dir).expect("dir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(
        st.success(),
        "this test mounts a 256 KiB tmpfs and needs root"
    );
    let cfg = std::fs::read_to_string(b.dir.join("postern.toml")).expect("cfg");
    let cfg = cfg.replace(
        "recordings_dir = \"recordings\"",
        &format!("recordings_dir = \"{}\"\n{extra}", dir.display()),
    );
    std::fs::write(b.dir.join("postern.toml"), cfg).expect("cfg");
    let disk = SmallDisk(dir);
    b.stop();
    b.serve();
    disk
}

#[test]
fn a_full_disk_ends_the_session_rather_than_run_unrecorded() {
    let mut b = Bastion::start();
    let disk = small_disk(&mut b, "");
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let t = Instant::now();
    let out = b.login("alice", &cert, "qa", &["web-1", "for i in $(seq 1 200); do head -c 4000 /dev/zero | tr '\\0' x; echo; sleep 0.01; done; sleep 20; echo not-cut"]);
    drop(disk);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "cut in {:?}",
        t.elapsed()
    );
    assert!(!text(&out.stdout).contains("not-cut"));
    assert!(
        text(&out.stderr).contains("recording failed"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0));
    let s = &sessions(&b, "dave", &[])[0];
    assert!(
        s["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("recording failed"),
        "{s}"
    );
}

#[test]
fn on_record_failure_continue_lets_the_session_finish() {
    let mut b = Bastion::start();
    let disk = small_disk(&mut b, "on_record_failure = \"continue\"");
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &[
            "web-1",
            "head -c 600000 /dev/zero | tr '\\0' x; echo; echo finished",
        ],
    );
    drop(disk);
    assert!(text(&out.stdout).ends_with("finished\n"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bytes_that_are_not_utf8_keep_their_exact_value() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &["web-1", "printf 'bin:\\377\\376:end'"],
    );
    assert_eq!(out.stdout, b"bin:\xff\xfe:end");
    let s = &sessions(&b, "dave", &[])[0];
    let id = s["id"].as_str().expect("id");
    let cast = text(&b.access("dave", &["export", id]).stdout);
    let mut raw = Vec::new();
    for line in cast.lines().skip(1) {
        let (_, kind, data): (f64, String, String) = serde_json::from_str(line).expect("event");
        if kind == "x" {
            use base64::Engine;
            raw.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64"),
            );
        }
    }
    assert_eq!(
        raw, b"bin:\xff\xfe:end",
        "the x events carry the exact bytes"
    );
    assert!(
        cast.contains("bin:\u{fffd}\u{fffd}:end"),
        "players see replacement characters: {cast}"
    );
}
