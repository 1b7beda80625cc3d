//! Test support: a real OpenSSH `sshd` as the target, the real `postern`
//! binary as the bastion, and the real `ssh` client, all on loopback
//! ephemeral ports in a temporary folder.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const POSTERN: &str = env!("CARGO_BIN_EXE_postern");
pub const ROLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/roles.toml");

/// Wait until `f` holds, or panic after `limit` with `what`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port nothing listens on, never one this test process was
/// given before: a server restarted on its port (`Bastion::reconfigure`)
/// leaves it free for a moment, and the kernel could hand it to a test
/// running beside it, whose server would then answer this test's
/// connections (the likely cause of `an_idle_connection_is_cut_after_the_grace_time`
/// failing once beside the 2,000-connection flood test: its connection was
/// closed after 353 ms, not the 1 s its bastion was given).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_port(port: u16, what: &str) {
    eventually(Duration::from_secs(10), what, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

pub fn keygen(path: &Path, comment: &str) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen failed");
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("public key written")
        .trim()
        .to_string()
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A kill-on-drop child process.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real sshd on 127.0.0.1, accepting the given authorized keys for the
/// current user.
pub struct Sshd {
    pub port: u16,
    pub host_key: String,
    pub dir: PathBuf,
    _proc: Proc,
}

impl Sshd {
    pub fn start(dir: &Path, authorized: &[String]) -> Sshd {
        let dir = dir.join("sshd");
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = keygen(&dir.join("host_key"), "target");
        std::fs::write(dir.join("authorized_keys"), authorized.join("\n") + "\n")
            .expect("authorized_keys");
        let port = free_port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
             LogLevel VERBOSE\nSubsystem sftp internal-sftp\nAcceptEnv LANG\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), cfg).expect("sshd_config");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts (apt-get install openssh-server)");
        let proc = Proc(child);
        wait_port(port, "sshd to listen");
        Sshd {
            port,
            host_key,
            dir,
            _proc: proc,
        }
    }
}

/// A user with a key pair on disk.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub key: PathBuf,
    pub public: String,
}

/// A running bastion in its own folder, with a real sshd target `web-1`.
pub struct Bastion {
    pub dir: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    pub known_hosts: PathBuf,
    pub target: Sshd,
    pub users: Vec<User>,
    pub log: PathBuf,
    proc: Option<Proc>,
    _tmp: tempfile::TempDir,
}

/// Users every test bastion knows: (name, groups).
pub const USERS: &[(&str, &[&str])] = &[
    ("alice", &["qa"]),
    ("eve", &["qa"]),
    ("bob", &["qa-lead"]),
    ("carol", &["sre"]),
    ("dave", &["admin"]),
];

impl Bastion {
    pub fn start() -> Bastion {
        Bastion::start_with("")
    }

    /// Start with `extra` appended as another policy file.
    pub fn start_with(extra: &str) -> Bastion {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let out = Command::new(POSTERN)
            .args(["init", "--dir"])
            .arg(&dir)
            .output()
            .expect("postern init runs");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target_pub = std::fs::read_to_string(dir.join("hostkeys/target_ed25519.pub"))
            .expect("target key pub");
        let target = Sshd::start(&dir, &[target_pub.trim().to_string()]);
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let mut users = Vec::new();
        let mut policy = String::new();
        for (name, groups) in USERS {
            let key = keys.join(name);
            let public = keygen(&key, name);
            policy.push_str(&format!(
                "[[user]]\nname = \"{name}\"\ngroups = {groups:?}\nkeys = [\"{public}\"]\n\n"
            ));
            users.push(User {
                name: name.to_string(),
                key,
                public,
            });
        }
        policy.push_str(&format!(
            "[[target]]\nname = \"web-1\"\naddress = \"127.0.0.1:{}\"\nlogin = \"{}\"\nhost_key = \"{}\"\nlabels = {{ env = \"prod\", tier = \"web\" }}\n",
            target.port,
            whoami(),
            target.host_key
        ));
        std::fs::copy(ROLES, dir.join("policies/roles.toml")).expect("copy roles");
        std::fs::write(dir.join("policies/inventory.toml"), policy).expect("inventory");
        if !extra.is_empty() {
            std::fs::write(dir.join("policies/zz-extra.toml"), extra).expect("extra policy");
        }
        let port = free_port();
        let cfg = std::fs::read_to_string(dir.join("postern.toml")).expect("config");
        let metrics_port = free_port();
        let cfg = cfg.replace("127.0.0.1:2222", &format!("127.0.0.1:{port}"))
            + &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n");
        std::fs::write(dir.join("postern.toml"), cfg).expect("config");
        let host_pub = std::fs::read_to_string(dir.join("hostkeys/ssh_host_ed25519_key.pub"))
            .expect("host pub");
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}", host_pub.trim()),
        )
        .expect("known_hosts");
        let mut b = Bastion {
            metrics_port,
            log: dir.join("postern.log"),
            dir,
            port,
            known_hosts,
            target,
            users,
            proc: None,
            _tmp: tmp,
        };
        b.serve();
        b
    }

    /// (Re)start the server process.
    pub fn serve(&mut self) {
        self.spawn_serve(&[]);
        wait_port(self.port, "postern to listen");
    }

    /// (Re)start the server process with `env` added to its environment,
    /// without waiting for it to listen.
    pub fn spawn_serve(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        self.proc = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(POSTERN)
            .args(["serve", "--config"])
            .arg(self.dir.join("postern.toml"))
            .env("POSTERN_LOG", "debug,russh=info,sled=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postern serve starts");
        self.proc = Some(Proc(child));
    }

    /// Wait for the server process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let p = self.proc.as_mut().expect("server running");
        eventually(limit, "postern to exit", || p.0.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Append `lines` to postern.toml and restart the server with it.
    pub fn reconfigure(&mut self, lines: &str) {
        let path = self.dir.join("postern.toml");
        let cfg = std::fs::read_to_string(&path).expect("config");
        std::fs::write(&path, format!("{cfg}\n{lines}\n")).expect("config");
        self.stop();
        self.serve();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.proc
            .as_ref()
            .map(|p| p.0.id())
            .expect("server running")
    }

    /// `kill -9` the server, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            let pid = p.0.id().to_string();
            let _ = Command::new("kill").args(["-9", &pid]).status();
            drop(p);
        }
    }

    pub fn user(&self, name: &str) -> &User {
        self.users
            .iter()
            .find(|u| u.name == name)
            .expect("known test user")
    }

    /// The ssh command, with a key (and certificate, if `cert`) for `login`.
    pub fn ssh_cmd(&self, user: &User, cert: Option<&Path>, login: &str) -> Command {
        self.ssh_cmd_logging(user, cert, login, "ERROR")
    }

    /// [`Bastion::ssh_cmd`] with ssh's `LogLevel` (`DEBUG1` shows which
    /// keys and certificates the client loaded and offered).
    pub fn ssh_cmd_logging(
        &self,
        user: &User,
        cert: Option<&Path>,
        login: &str,
        level: &str,
    ) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &self.port.to_string(), "-i"])
            .arg(&user.key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "ConnectTimeout=10", "-F", "/dev/null"])
            .arg("-o")
            .arg(format!("LogLevel={level}"));
        match cert {
            Some(p) => c.arg("-o").arg(format!("CertificateFile={}", p.display())),
            None => c.arg("-o").arg("CertificateFile=/dev/null"),
        };
        c.arg(format!("{login}@127.0.0.1"));
        c.stdin(Stdio::null());
        c
    }

    /// `ssh access@bastion ARGS` as `user`.
    pub fn access(&self, user: &str, args: &[&str]) -> Output {
        let mut c = self.ssh_cmd(self.user(user), None, "access");
        c.args(args);
        c.output().expect("ssh runs")
    }

    /// `ssh LOGIN@bastion ARGS` with `user`'s key and `cert`.
    pub fn login(&self, user: &str, cert: &Path, login: &str, args: &[&str]) -> Output {
        let mut c = self.ssh_cmd(self.user(user), Some(cert), login);
        c.args(args);
        c.output().expect("ssh runs")
    }

    /// `postern ctl ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(POSTERN)
            .args(["ctl", "--config"])
            .arg(self.dir.join("postern.toml"))
            .args(args)
            .output()
            .expect("postern ctl runs")
    }

    /// Request `role`, have `approvers` approve, fetch and save the
    /// certificate for `user`. Returns (request id, cert path).
    pub fn granted(
        &self,
        user: &str,
        role: &str,
        duration: &str,
        approvers: &[&str],
    ) -> (String, PathBuf) {
        let out = self.access(
            user,
            &[
                "request", role, "--for", duration, "--reason", "test", "--json",
            ],
        );
        assert!(out.status.success(), "request: {}", text(&out.stderr));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("request --json is JSON");
        let id = v["id"].as_str().expect("id").to_string();
        for a in approvers {
            let out = self.access(a, &["approve", &id]);
            assert!(out.status.success(), "approve: {}", text(&out.stderr));
        }
        let cert = self.save_cert(user, &id);
        (id, cert)
    }

    pub fn save_cert(&self, user: &str, id: &str) -> PathBuf {
        let out = self.access(user, &["cert", id]);
        assert!(out.status.success(), "cert: {}", text(&out.stderr));
        let path = self.dir.join(format!("keys/{user}-{id}-cert.pub"));
        std::fs::write(&path, &out.stdout).expect("save cert");
        path
    }

    /// The Prometheus metrics page.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Read lines from a child's stdout until one contains `needle`.
pub fn read_until(r: &mut BufReader<std::process::ChildStdout>, needle: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return all,
            Ok(_) => {
                all.push_str(&line);
                if line.contains(needle) {
                    return all;
                }
            }
        }
    }
}
