//! Built-in knowledge of tools that turn "read-only" into something else.
//! Applied after a pattern matched, so a permissive pattern cannot admit
//! these; also used at policy load to warn the pattern's author.
//!
//! The table is conservative: where a tool's option language is large
//! (sed, awk), only a known-safe subset is accepted.

/// Programs that run other programs, shells and interpreters: never run
/// through the gate, whatever the pattern says.
const RUNS_CODE: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "csh",
    "tcsh",
    "fish",
    "busybox",
    "env",
    "xargs",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "stdbuf",
    "setsid",
    "chroot",
    "sudo",
    "su",
    "doas",
    "runuser",
    "pkexec",
    "watch",
    "script",
    "expect",
    "perl",
    "python",
    "python2",
    "python3",
    "ruby",
    "node",
    "nodejs",
    "lua",
    "php",
    "tclsh",
    "wish",
    "gdb",
    "strace",
    "ltrace",
    "socat",
    "nc",
    "ncat",
    "netcat",
    "telnet",
    "ssh",
    "scp",
    "sftp",
    "rsync",
    "ftp",
    "curl",
    "wget",
    "crontab",
    "at",
    "batch",
    "systemd-run",
    "make",
    "docker",
    "kubectl",
    "nsenter",
    "unshare",
    "flock",
    "parallel",
    "eval",
    "exec",
    "command",
    "builtin",
    "source",
    ".",
    "mksh",
    "pdksh",
    "rbash",
    "yash",
    "posh",
    "toybox",
    "psql",
    "mysql",
    "mariadb",
    "sqlite",
    "sqlite3",
    "redis-cli",
    "mongo",
    "mongosh",
    "cqlsh",
    "irb",
    "pry",
    "erl",
    "iex",
    "ghci",
    "R",
    "Rscript",
    "julia",
    "octave",
    "jshell",
    "groovy",
    "scala",
    "deno",
    "bun",
    "pwsh",
    "run-parts",
    "start-stop-daemon",
    "capsh",
    "setpriv",
    // Launchers and wrappers that run the program named in their
    // arguments (found past the table by an adversarial review: `time sh`,
    // `taskset 1 sh`, `podman exec web sh`).
    "time",
    "taskset",
    "chrt",
    "prlimit",
    "numactl",
    "cgexec",
    "sg",
    "newgrp",
    "sudoedit",
    "valgrind",
    "perf",
    "ssh-agent",
    "dbus-run-session",
    "dbus-launch",
    "xvfb-run",
    "faketime",
    "fakeroot",
    "proot",
    "unbuffer",
    "rlwrap",
    "entr",
    "service",
    "invoke-rc.d",
    "logrotate",
    "podman",
    "nerdctl",
    "crictl",
    "ctr",
    "lxc",
    "lxc-attach",
    "machinectl",
    "systemd-nspawn",
    "firejail",
    "bwrap",
    "toolbox",
    "distrobox",
    "oc",
    "helm",
    "busctl",
    "dbus-send",
    "gdbus",
    "npm",
    "npx",
    "pip",
    "gem",
    "cargo",
    "go",
    "java",
    "gcc",
    "cc",
    // Found by a second review: personality and session launchers, and
    // coredumpctl (its `debug` runs gdb).
    "setarch",
    "linux32",
    "linux64",
    "i386",
    "x86_64",
    "uname26",
    "systemd-cat",
    "systemd-inhibit",
    "coredumpctl",
    "flatpak",
    "snap",
];

/// Pagers and editors: they run commands (`!cmd`, `:!`) and must never run
/// on a target. `less`/`more` are served as a plain read instead.
const PAGERS_EDITORS: &[&str] = &[
    "vi",
    "vim",
    "nvim",
    "view",
    "vimdiff",
    "rvim",
    "ex",
    "ed",
    "red",
    "nano",
    "pico",
    "emacs",
    "joe",
    "mcedit",
    "man",
    "info",
    "pg",
    "most",
    "zless",
    "zmore",
    "bzless",
    "bzmore",
    "xzless",
    "lessecho",
    "top",
    "htop",
    "pager",
    "editor",
    "sensible-pager",
    "sensible-editor",
    "w3m",
    "lynx",
    "elinks",
    "mutt",
    "tmux",
    "screen",
];

/// Pagers the gate serves as `cat` of the same (checked) files.
pub const PAGED_AS_CAT: &[&str] = &["less", "more"];

/// Programs whose purpose is to write or change files or the system.
const WRITES: &[&str] = &[
    "tee",
    "dd",
    "cp",
    "mv",
    "rm",
    "rmdir",
    "touch",
    "chmod",
    "chown",
    "chgrp",
    "ln",
    "mkdir",
    "mknod",
    "mkfifo",
    "truncate",
    "install",
    "shred",
    "split",
    "csplit",
    "patch",
    "kill",
    "pkill",
    "killall",
    "reboot",
    "shutdown",
    "halt",
    "poweroff",
    "mount",
    "umount",
    "useradd",
    "usermod",
    "passwd",
    "iptables",
    "nft",
    "sysctl",
    // Compressors replace the file they are given (read with zcat, xzcat,
    // zstdcat, bzcat instead), package managers, firewalls, attributes,
    // modules, accounts (an adversarial review found `gzip` and
    // `ip6tables -F` past the table).
    "gzip",
    "gunzip",
    "bzip2",
    "bunzip2",
    "xz",
    "unxz",
    "lzma",
    "unlzma",
    "zstd",
    "unzstd",
    "lz4",
    "unlz4",
    "lzop",
    "pigz",
    "pbzip2",
    "zip",
    "unzip",
    "7z",
    "7za",
    "cpio",
    "sponge",
    "ip6tables",
    "iptables-restore",
    "ip6tables-restore",
    "ebtables",
    "arptables",
    "ipset",
    "chattr",
    "setfacl",
    "setcap",
    "fallocate",
    "mkfs",
    "wipefs",
    "userdel",
    "groupadd",
    "groupdel",
    "groupmod",
    "chpasswd",
    "chsh",
    "chfn",
    "modprobe",
    "insmod",
    "rmmod",
    "swapon",
    "swapoff",
    "ldconfig",
    "update-alternatives",
    "wall",
    "write",
    "logger",
    "apt",
    "apt-get",
    "dpkg",
    "rpm",
    "yum",
    "dnf",
    "zypper",
    "apk",
    // Found by a second review: `xxd IN OUT` writes OUT, the others delete,
    // rename, create or reprioritise.
    "xxd",
    "unlink",
    "link",
    "mktemp",
    "uncompress",
    "rename",
    "rename.ul",
    "renice",
];

/// The names a program is known by in the tables: the basename, and that
/// with a version or variant suffix taken off (`python3.11` → `python3`,
/// `python`; `vim.basic` → `vim`; `gawk`, `original-awk` → `awk`).
pub fn names(cmd: &str) -> Vec<String> {
    let base = cmd.rsplit('/').next().unwrap_or(cmd);
    let stem = base.split('.').next().unwrap_or(base);
    let unversioned = stem.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
    let mut out = vec![base.to_string(), stem.to_string(), unversioned.to_string()];
    if unversioned.ends_with("awk") {
        out.push("awk".into());
    }
    out.sort();
    out.dedup();
    out
}

fn in_table(table: &[&str], cmd: &str) -> bool {
    names(cmd).iter().any(|n| table.contains(&n.as_str()))
}

/// Other names of the tools checked below, under which the same checks
/// apply (`bsdtar -xf`, `rgrep -f` got past them by name).
const VARIANTS: &[(&str, &str)] = &[
    ("bsdtar", "tar"),
    ("gtar", "tar"),
    ("rgrep", "grep"),
    ("xzgrep", "grep"),
    ("bzgrep", "grep"),
    ("lzgrep", "grep"),
    ("zstdgrep", "grep"),
    ("zegrep", "grep"),
    ("zfgrep", "grep"),
    ("gsed", "sed"),
    ("gfind", "find"),
];

/// The canonical tool name used for option checks.
fn tool(cmd: &str) -> String {
    let mut n = names(cmd);
    for (variant, canonical) in VARIANTS {
        if n.iter().any(|x| x == variant) {
            n.push(canonical.to_string());
        }
    }
    for known in [
        "find",
        "sed",
        "awk",
        "grep",
        "egrep",
        "fgrep",
        "zgrep",
        "tar",
        "git",
        "journalctl",
        "sort",
        "uniq",
        "systemctl",
        "jq",
        "ip",
    ] {
        if n.iter().any(|x| x == known) {
            return known.to_string();
        }
    }
    cmd.rsplit('/').next().unwrap_or(cmd).to_string()
}

/// Is `cmd` a pager the gate serves as `cat`?
pub fn is_paged_as_cat(cmd: &str) -> bool {
    in_table(PAGED_AS_CAT, cmd)
}

/// The warning for a policy author when a pattern's command is a tool the
/// gate knows to be dangerous, or `None`.
pub fn tool_warning(cmd: &str) -> Option<&'static str> {
    let name = tool(cmd);
    let name = name.as_str();
    if in_table(RUNS_CODE, cmd) {
        Some("admits a program that runs other programs or a query language; the gate refuses it always")
    } else if in_table(PAGERS_EDITORS, cmd) {
        Some("admits a pager or editor; the gate refuses it always")
    } else if in_table(WRITES, cmd) {
        Some("admits a program that writes files or changes the system; the gate refuses it always")
    } else {
        match name {
            "find" => Some("admits find; the gate refuses -exec/-execdir/-ok/-okdir/-delete/-fprint*/-fls"),
            "sed" => Some("admits sed; the gate accepts only scripts of p/d/q/=/s (no e/w/r flags or commands) and no -i, and runs sed with --sandbox"),
            "awk" => Some(
                "admits awk; the gate refuses programs using system, getline, pipes, redirection, ARGV, ENVIRON, \
                 SYMTAB or @, and -f",
            ),
            "jq" => Some("admits jq; the gate refuses import/include/env/input and file options"),
            "grep" | "egrep" | "fgrep" | "zgrep" => Some("admits grep; the gate refuses -f/--file"),
            "tar" => Some("admits tar; the gate refuses extraction, creation and command options"),
            "git" => Some("admits git; the gate allows only read-only subcommands (log, show, diff, status, grep, ...) and refuses -c, --exec-path, --upload-pack and other command hooks"),
            "journalctl" => Some("admits journalctl; the gate refuses --vacuum*, --rotate, --file and state changes"),
            "sort" => Some("admits sort; the gate refuses -o/--output and --compress-program"),
            "systemctl" => Some("admits systemctl; the gate allows only status/show/list-*/is-*/cat verbs"),
            _ => None,
        }
    }
}

/// Refuse `argv` (already matched by a pattern) if it makes its tool run
/// code, write files or read files outside the pattern.
pub fn check(argv: &[String]) -> Result<(), String> {
    let Some(cmd) = argv.first() else {
        return Err("empty command".into());
    };
    let name = tool(cmd);
    let args = &argv[1..];
    let refuse = |what: &str| {
        Err(format!(
            "{name}: {what} is refused (it can run code, write files or read other files)"
        ))
    };
    if in_table(RUNS_CODE, cmd) {
        if name == "env" && args.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "{name} runs other programs or arbitrary queries; refused"
        ));
    }
    if in_table(PAGERS_EDITORS, cmd) {
        return Err(format!(
            "{name} is a pager or editor; it never runs on a target"
        ));
    }
    if in_table(WRITES, cmd) {
        return Err(format!(
            "{name} writes files or changes the system; refused"
        ));
    }
    match name.as_str() {
        "find" => {
            for a in args {
                if [
                    "-exec",
                    "-execdir",
                    "-ok",
                    "-okdir",
                    "-delete",
                    "-fprint",
                    "-fprint0",
                    "-fprintf",
                    "-fls",
                    "-files0-from",
                ]
                .contains(&a.as_str())
                {
                    return refuse(a);
                }
            }
        }
        "sed" => {
            let mut scripts = Vec::new();
            let mut i = 0;
            let mut have_script = false;
            while i < args.len() {
                let a = args[i].as_str();
                // A script comes with -e, --expression (or any prefix of
                // it), `=SCRIPT` or the next word; -e may close a bundle
                // (`-ne SCRIPT`) or carry its script (`-es/a/b/`).
                let short = a.strip_prefix('-').filter(|s| !s.starts_with('-'));
                let attached = short.and_then(|s| s.find('e').map(|at| &s[at + 1..]));
                if ["--in-place", "--file", "--separate"]
                    .iter()
                    .any(|b| is_long(a, b))
                    || short.is_some_and(|s| s.contains(['i', 'f', 's']))
                {
                    return refuse(a);
                } else if is_long(a, "--expression") || attached == Some("") {
                    match a.split_once('=').filter(|_| a.starts_with("--")) {
                        Some((_, s)) => scripts.push(s.to_string()),
                        None => {
                            if let Some(s) = args.get(i + 1) {
                                scripts.push(s.clone());
                            }
                            i += 1;
                        }
                    }
                    have_script = true;
                } else if let Some(s) = attached {
                    scripts.push(s.to_string());
                    have_script = true;
                } else if !a.starts_with('-') && !have_script {
                    scripts.push(a.to_string());
                    have_script = true;
                }
                i += 1;
            }
            for s in scripts {
                if let Err(why) = sed_script_is_safe(&s) {
                    return Err(format!("sed: script refused: {why}"));
                }
            }
        }
        "awk" => {
            let mut program_seen = false;
            let mut i = 0;
            while i < args.len() {
                let a = &args[i];
                if a == "-F" || a == "-v" {
                    if a == "-v" {
                        if let Some(v) = args.get(i + 1) {
                            awk_text_is_safe(v).or_else(|w| refuse(&w))?;
                        }
                    }
                    i += 2;
                    continue;
                }
                if a.starts_with("-F") {
                } else if a.starts_with('-') {
                    return refuse(a);
                } else if !program_seen {
                    program_seen = true;
                    awk_text_is_safe(a).or_else(|w| refuse(&w))?;
                } else if a.contains('=') {
                    // `var=value` operands are assignments awk evaluates.
                    awk_text_is_safe(a).or_else(|w| refuse(&w))?;
                }
                i += 1;
            }
        }
        "grep" | "egrep" | "fgrep" | "zgrep" => {
            for a in args {
                if is_long(a, "--file") || is_long(a, "--exclude-from") || has_short(a, 'f') {
                    return refuse(a);
                }
                if a == "--" {
                    break;
                }
            }
        }
        "tar" => {
            for a in args {
                let l = a.as_str();
                let long_bad = [
                    "--checkpoint-action",
                    "--to-command",
                    "--use-compress-program",
                    "--rsh-command",
                    "--info-script",
                    "--new-volume-script",
                    "--extract",
                    "--get",
                    "--create",
                    "--append",
                    "--update",
                    "--delete",
                    "--index-file",
                    "--volno-file",
                    "--remove-files",
                    "--overwrite",
                    "--files-from",
                    "--exclude-from",
                    "--catenate",
                    "--concatenate",
                ];
                if long_bad.iter().any(|b| is_long(l, b)) {
                    return refuse(l);
                }
                if l.starts_with('-')
                    && !l.starts_with("--")
                    && l.contains(['I', 'F', 'x', 'c', 'r', 'u', 'g', 'T', 'X', 'A'])
                {
                    return refuse(l);
                }
            }
            // Old-style first argument ("xf") counts as options too.
            if let Some(first) = args.first() {
                if !first.starts_with('-')
                    && first.contains(['x', 'c', 'r', 'u', 'I', 'F', 'g', 'T', 'X', 'A'])
                {
                    return refuse(first);
                }
            }
        }
        "git" => {
            for a in args {
                let l = a.as_str();
                let bad = [
                    "-c",
                    "--exec-path",
                    "--config-env",
                    "--upload-pack",
                    "--receive-pack",
                    "--output",
                    "-o",
                    "--ext-diff",
                    "-O",
                    "--open-files-in-pager",
                    "--textconv",
                    "--git-dir",
                    "--work-tree",
                    "-p",
                    "--paginate",
                    "config",
                    "difftool",
                    "mergetool",
                    "submodule",
                    "filter-branch",
                    "bisect",
                    "daemon",
                    "instaweb",
                    "archive",
                    "bundle",
                    "clone",
                    "fetch",
                    "pull",
                    "push",
                    "gc",
                    "prune",
                    "hook",
                    "credential",
                    "-u",
                    "--no-index",
                    "--contents",
                ];
                if bad.iter().any(|b| l == *b || is_long(l, b))
                    || l.starts_with("-c")
                    || has_short(l, 'O')
                    || has_short(l, 'f')
                {
                    return refuse(l);
                }
            }
            git_subcommand_is_read_only(args).or_else(|w| refuse(&w))?;
        }
        "journalctl" => {
            for a in args {
                let l = a.as_str();
                let bad = [
                    "--vacuum-size",
                    "--vacuum-time",
                    "--vacuum-files",
                    "--rotate",
                    "--file",
                    "--directory",
                    "-D",
                    "--root",
                    "--image",
                    "--flush",
                    "--sync",
                    "--relinquish-var",
                    "--smart-relinquish-var",
                    "--setup-keys",
                    "--update-catalog",
                    "--namespace",
                    "-i",
                    "--new-id128",
                    "--cursor-file",
                ];
                if bad.iter().any(|b| l == *b || is_long(l, b))
                    || has_short(l, 'D')
                    || has_short(l, 'i')
                    || l.starts_with("--vacuum")
                {
                    return refuse(l);
                }
            }
        }
        "jq" => {
            for a in args {
                let l = a.as_str();
                if [
                    "-f",
                    "--from-file",
                    "-L",
                    "--slurpfile",
                    "--rawfile",
                    "--args",
                    "--jsonargs",
                    "--run-tests",
                ]
                .iter()
                .any(|b| l == *b || l.starts_with(&format!("{b}=")))
                    || has_short(l, 'f')
                    || has_short(l, 'L')
                {
                    return refuse(l);
                }
                for word in [
                    "import", "include", "env", "$ENV", "input", "$__prog", "getpath", "debug",
                    "stderr", "halt",
                ] {
                    if !l.starts_with('-') && l.contains(word) {
                        return refuse(&format!("a jq program using {word}"));
                    }
                }
            }
        }
        "sort" => {
            for a in args {
                if [
                    "--output",
                    "--compress-program",
                    "--files0-from",
                    "--random-source",
                ]
                .iter()
                .any(|b| is_long(a, b))
                    || has_short(a, 'o')
                {
                    return refuse(a);
                }
            }
        }
        // `ip netns exec NS CMD` and `ip vrf exec VRF CMD` run a program,
        // `ip -batch FILE` runs the commands in a file; ip takes any prefix
        // of a keyword or option (`ip netns e`, `ip -b`, `ip --ba`).
        "ip" => {
            let prefix_of = |a: &str, word: &str| !a.is_empty() && word.starts_with(a);
            if let Some(a) = args.iter().find(|a| {
                prefix_of(a, "exec")
                    || a.strip_prefix('-')
                        .is_some_and(|o| prefix_of(o.strip_prefix('-').unwrap_or(o), "batch"))
            }) {
                return refuse(a);
            }
        }
        "uniq" if args.iter().filter(|a| !a.starts_with('-')).count() > 1 => {
            return refuse("a second operand (output file)");
        }
        "systemctl" => {
            if let Some(a) = args.iter().find(|a| {
                is_long(a, "--host")
                    || is_long(a, "--machine")
                    || has_short(a, 'H')
                    || has_short(a, 'M')
            }) {
                return refuse(a);
            }
            let verb = match systemctl_verb(args) {
                Ok(verb) => verb,
                Err(why) => return refuse(&why),
            };
            let ok = verb.is_empty()
                || [
                    "status",
                    "show",
                    "cat",
                    "is-active",
                    "is-enabled",
                    "is-failed",
                ]
                .contains(&verb)
                || verb.starts_with("list-");
            if !ok {
                return refuse(verb);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `arg` is the long option `full` as getopt_long reads it: whole,
/// with `=VALUE`, or cut short (`--exp` for `--expression`, `--checkpoint-act`
/// for `--checkpoint-action`): GNU tools and git take any unambiguous
/// prefix, so an exact comparison let an abbreviation through. Every
/// prefix counts, which also refuses a harmless option that happens to be
/// a prefix of a refused one (tar's `--checkpoint`, git's `--text`).
fn is_long(arg: &str, full: &str) -> bool {
    let (Some(name), Some(full)) = (arg.strip_prefix("--"), full.strip_prefix("--")) else {
        return false;
    };
    let name = name.split('=').next().unwrap_or(name);
    !name.is_empty() && full.starts_with(name)
}

/// Whether `arg` is a bundle of short options holding `-c` (`-rD/dir`,
/// `-Ovim`): conservative, since a letter in another option's attached
/// value counts too.
fn has_short(arg: &str, c: char) -> bool {
    arg.strip_prefix('-')
        .is_some_and(|s| !s.starts_with('-') && s.contains(c))
}

/// systemctl's verb: the first word that is neither an option nor the
/// value of one (`systemctl -p status stop nginx` stops nginx: `status` is
/// `-p`'s value). An option the gate does not know is refused before the
/// verb, since whether it takes a value decides which word is the verb;
/// so are `-H`/`--host` and `-M`/`--machine`, which reach other machines
/// (over ssh) and containers.
fn systemctl_verb(args: &[String]) -> Result<&str, String> {
    const VALUE: &[&str] = &[
        "-p",
        "--property",
        "-P",
        "-t",
        "--type",
        "--state",
        "-n",
        "--lines",
        "-o",
        "--output",
    ];
    const FLAG: &[&str] = &[
        "--no-pager",
        "-l",
        "--full",
        "-a",
        "--all",
        "-r",
        "--recursive",
        "--user",
        "--system",
        "-q",
        "--quiet",
        "--no-legend",
        "--plain",
        "--value",
        "--failed",
        "--reverse",
        "--after",
        "--before",
        "--with-dependencies",
        "--show-types",
        "--no-ask-password",
    ];
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let a = a.as_str();
        if VALUE.contains(&a) {
            i += 2;
        } else if FLAG.contains(&a) || VALUE.iter().any(|v| a.starts_with(&format!("{v}="))) {
            i += 1;
        } else if a.starts_with('-') {
            return Err(format!(
                "the option {a} before the verb (not known to the gate)"
            ));
        } else {
            return Ok(a);
        }
    }
    Ok("")
}

/// git's subcommand, found past the global options, must be one that only
/// reads: an allowlist, as for systemctl's verbs, because the subcommands
/// that change a repository are many (`stash`, `reset`, `checkout`, `rm`,
/// `commit`, `tag`, `maintenance start`, ...) and an alias or a `git-*`
/// program on the target's PATH can be named anything. `branch`, `tag`,
/// `remote`, `reflog` and `notes` read and write by their arguments and
/// are left out. A global option the gate does not know is refused before
/// the subcommand: whether it takes a value decides which word is the
/// subcommand.
fn git_subcommand_is_read_only(args: &[String]) -> Result<(), String> {
    const READ_ONLY: &[&str] = &[
        "log",
        "show",
        "diff",
        "status",
        "blame",
        "annotate",
        "grep",
        "shortlog",
        "describe",
        "ls-files",
        "ls-tree",
        "rev-parse",
        "rev-list",
        "cat-file",
        "diff-tree",
        "diff-files",
        "diff-index",
        "for-each-ref",
        "show-ref",
        "show-branch",
        "name-rev",
        "merge-base",
        "count-objects",
        "check-ignore",
        "whatchanged",
        "version",
    ];
    let Some(i) = git_subcommand_at(args)? else {
        return Ok(());
    };
    let a = args[i].as_str();
    if !READ_ONLY.contains(&a) {
        return Err(format!("the subcommand {a} (not a read-only one)"));
    }
    // A path outside the working tree turns `git diff A B` into
    // `git diff --no-index A B`, which reads any two files.
    let rest = args.get(i + 1..).unwrap_or_default();
    if let Some(p) = rest
        .iter()
        .find(|p| !p.starts_with('-') && (p.starts_with('/') || p.split('/').any(|c| c == "..")))
    {
        return Err(format!("the path {p} (outside the repository)"));
    }
    Ok(())
}

/// git's global options the gate knows: those that take the next word as
/// their value, and those that take none.
const GIT_VALUE: &[&str] = &["-C", "--namespace"];
const GIT_FLAG: &[&str] = &[
    "--no-pager",
    "-P",
    "--no-replace-objects",
    "--literal-pathspecs",
    "--glob-pathspecs",
    "--noglob-pathspecs",
    "--icase-pathspecs",
    "--no-optional-locks",
    "--bare",
];

/// Where git's subcommand is in `args` (git's arguments), past the global
/// options; `None` if there is none. A global option the gate does not
/// know is refused: whether it takes a value decides which word is the
/// subcommand.
fn git_subcommand_at(args: &[String]) -> Result<Option<usize>, String> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let a = a.as_str();
        if GIT_VALUE.contains(&a) {
            i += 2;
        } else if GIT_FLAG.contains(&a) || a.starts_with("--namespace=") {
            i += 1;
        } else if a.starts_with('-') {
            return Err(format!("the global option {a} (not known to the gate)"));
        } else {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// awk text (program or assignment) without code execution, file or pipe
/// I/O or includes. Conservative: `>` and `|` are refused even as
/// comparison or `||`, since telling them from redirection needs a parser.
///
/// The list is by capability: running code (`system`, pipes, `@` indirect
/// calls and includes), reading other files (`getline`, `ARGV`/`ARGC`,
/// which name the input files), writing (`>`), and introspection that
/// reaches the others indirectly (`SYMTAB`, `FUNCTAB`, `PROCINFO`,
/// `ENVIRON`).
fn awk_text_is_safe(p: &str) -> Result<(), String> {
    for bad in [
        "system",
        "getline",
        "|",
        ">",
        "@",
        "close",
        "fflush",
        "ENVIRON",
        "PROCINFO",
        "SYMTAB",
        "FUNCTAB",
        "ARGV",
        "ARGC",
        "/inet",
        "/dev/",
        "extension",
        "load",
    ] {
        if p.contains(bad) {
            return Err(format!("awk program using {bad:?}"));
        }
    }
    Ok(())
}

/// Accept only sed scripts built from addresses and the commands
/// `p d q Q = n N P D l z h H g G x { } !`, `s` with flags from `gpiImM`
/// and digits, and `y`. Everything else (`e`, `w`, `r`, `R`, `W`, `a`,
/// `i`, `c`, `s///e`, `s///w`, comments) is refused.
pub fn sed_script_is_safe(script: &str) -> Result<(), String> {
    let c: Vec<char> = script.chars().collect();
    let mut i = 0;
    let n = c.len();
    let skip_ws = |i: &mut usize| {
        while *i < n && (c[*i] == ' ' || c[*i] == ';') {
            *i += 1;
        }
    };
    // Read a delimited section starting after the opening delimiter.
    //
    // Seds disagree on bracket expressions: GNU sed reads a delimiter
    // inside `[...]` as part of the regex (`s/[/]/x/`), a plain reading
    // ends the regex there, and a checker that reads a script one way
    // while sed reads it the other is a field out of step from then on
    // (an adversarial review's `s/.*[/]*/CMD/e;...`: the old reading took
    // its `e` flag for part of an address). So a bracket expression is
    // accepted only where every reading agrees on where it ends: with
    // neither the delimiter nor a backslash inside it. (sed runs with
    // `--sandbox` as well: [`hardened`].)
    let delimited = |i: &mut usize, d: char| -> Result<(), String> {
        while *i < n {
            if c[*i] == '\\' {
                *i += 2;
                continue;
            }
            if c[*i] == d {
                *i += 1;
                return Ok(());
            }
            if c[*i] == '[' {
                let end = bracket_end(&c, *i).ok_or("unterminated bracket expression")?;
                if c[*i..=end]
                    .iter()
                    .any(|&x| x == d || x == '\\' || x == '\n')
                {
                    return Err(format!(
                        "a bracket expression holding the delimiter {d:?} or a backslash \
                         (seds read it differently)"
                    ));
                }
                *i = end + 1;
                continue;
            }
            *i += 1;
        }
        Err("unterminated expression".into())
    };
    loop {
        skip_ws(&mut i);
        if i >= n {
            return Ok(());
        }
        // Addresses: number, $, /re/, \cREc, with ~step, ',' second address.
        for _ in 0..2 {
            if i < n && c[i].is_ascii_digit() {
                while i < n && (c[i].is_ascii_digit() || c[i] == '~') {
                    i += 1;
                }
            } else if i < n && c[i] == '$' {
                i += 1;
            } else if i < n && c[i] == '/' {
                i += 1;
                delimited(&mut i, '/')?;
                while i < n && (c[i] == 'I' || c[i] == 'M') {
                    i += 1;
                }
            } else if i + 1 < n && c[i] == '\\' {
                let d = c[i + 1];
                if d == '[' || d == ']' || d == '\\' || d == '\n' {
                    return Err("bad address delimiter".into());
                }
                i += 2;
                delimited(&mut i, d)?;
            }
            if i < n && c[i] == ',' {
                i += 1;
                continue;
            }
            break;
        }
        while i < n && (c[i] == ' ' || c[i] == '!') {
            i += 1;
        }
        if i >= n {
            return Err("address without a command".into());
        }
        let cmd = c[i];
        i += 1;
        match cmd {
            'p' | 'd' | 'q' | 'Q' | '=' | 'n' | 'N' | 'P' | 'D' | 'l' | 'z' | 'h' | 'H' | 'g'
            | 'G' | 'x' | '{' | '}' => {
                // q/Q/l may take a number.
                while i < n && c[i].is_ascii_digit() {
                    i += 1;
                }
            }
            's' | 'y' => {
                if i >= n || c[i] == '\\' || c[i] == '\n' {
                    return Err("bad delimiter".into());
                }
                let d = c[i];
                if d == '[' || d == ']' {
                    return Err("bad delimiter".into());
                }
                i += 1;
                delimited(&mut i, d)?;
                delimited(&mut i, d)?;
                if cmd == 's' {
                    while i < n && c[i] != ';' && c[i] != '}' && c[i] != ' ' {
                        if !(c[i].is_ascii_digit() || "gpiImM".contains(c[i])) {
                            return Err(format!("s flag {:?} is not allowed", c[i]));
                        }
                        i += 1;
                    }
                }
            }
            other => return Err(format!("command {other:?} is not allowed")),
        }
    }
}

/// Where the bracket expression opening at `c[open]` (a `[`) ends, the
/// index of its closing `]`, read as POSIX reads it: a `]` first (after an
/// optional `^`) is a member, and `[:class:]`, `[=x=]`, `[.x.]` are read
/// whole. `None` if it does not end.
fn bracket_end(c: &[char], open: usize) -> Option<usize> {
    let mut j = open + 1;
    if c.get(j) == Some(&'^') {
        j += 1;
    }
    if c.get(j) == Some(&']') {
        j += 1;
    }
    loop {
        match *c.get(j)? {
            ']' => return Some(j),
            '[' if matches!(c.get(j + 1), Some(':' | '.' | '=')) => {
                let k = c[j + 1];
                j += 2;
                while !(*c.get(j)? == k && c.get(j + 1) == Some(&']')) {
                    j += 1;
                }
                j += 2;
            }
            _ => j += 1,
        }
    }
}

/// `argv` (checked) with the options the gate adds to every run of its
/// tool, each a second wall behind a check above:
/// - sed: `--sandbox`, so GNU sed itself refuses the `e`, `w` and `r`
///   commands and flags whatever [`sed_script_is_safe`] made of the script
///   (it re-reads a language the tool reads best). A sed without it
///   (busybox) refuses to start: the command fails closed.
/// - git diff, log, show, whatchanged: `--no-ext-diff --no-textconv`, and
///   blame, annotate: `--no-textconv`, so that the repository's config
///   (`diff.external`, `diff.<driver>.textconv`) runs no program.
pub fn hardened(mut argv: Vec<String>) -> Vec<String> {
    let Some(cmd) = argv.first() else {
        return argv;
    };
    let (at, add): (usize, &[&str]) = match tool(cmd).as_str() {
        "sed" => (1, &["--sandbox"]),
        "git" => {
            let Ok(Some(sub)) = git_subcommand_at(argv.get(1..).unwrap_or_default()) else {
                return argv;
            };
            let add: &[&str] = match argv[sub + 1].as_str() {
                "diff" | "log" | "show" | "whatchanged" => &["--no-ext-diff", "--no-textconv"],
                "blame" | "annotate" => &["--no-textconv"],
                _ => &[],
            };
            (sub + 2, add)
        }
        _ => (1, &[]),
    };
    for (k, a) in add.iter().enumerate() {
        argv.insert(at + k, a.to_string());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn sed_scripts() {
        for ok in [
            "1,10p",
            "s/error/ERR/g",
            "/x/d",
            "$p",
            "1~2p",
            "s|a|b|2",
            "5q",
            "/a/,/b/p",
            "y/abc/xyz/",
            "1!G;h;$!d",
        ] {
            assert!(sed_script_is_safe(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1e touch /tmp/x",
            "s/a/b/e",
            "s/a/b/w /tmp/x",
            "w /tmp/x",
            "r /etc/passwd",
            "1R /etc/shadow",
            "a hi",
            "#n",
            "e",
            "s/a/b/;e id",
            "W /x",
            "1,10F",
        ] {
            assert!(sed_script_is_safe(bad).is_err(), "{bad}");
        }
    }

    /// Bracket expressions: accepted where every sed agrees on where the
    /// regex ends, refused where GNU sed and a plain reading part ways
    /// (the delimiter or a backslash inside), whatever the rest says.
    #[test]
    fn sed_bracket_expressions_are_read_as_every_sed_reads_them() {
        for ok in [
            "s/[0-9]*/N/g",
            "/[[:digit:]]x/p",
            "s/[]a]/b/",
            "s/[^]a]/b/",
            "s|[/]|x|",
            "/[=e=][.a.]/p",
            "s/a/[&]/",
        ] {
            assert!(sed_script_is_safe(ok).is_ok(), "{ok}");
        }
        for bad in [
            // the review's: the `e` flag and `w` file past a `[/]`
            "s/.*[/]*/ `touch \\/tmp\\/x`p/e;s/p/p/p",
            "s/.*[/]*/ `id 1>\\&2`p/e;s/p/p/p",
            "s/[/]/;\\Z/w /tmp/x/outZp",
            "s/[/]/;\\i/w /home/qa/.bash_login",
            // the same class in addresses, in `y`, with other delimiters
            "/[/]/p;s/a/b/w /tmp/x",
            "\\,[,],p;1e id",
            "s|[|]|x|;e id",
            "y/[/]/;e id",
            "s/[\\/]/x/",
            "s/[[:alpha:]/]/x/",
            "s/[a/x/",
            "s/[[:alpha/x/",
            "s[a[b[",
            "\\[a[p",
        ] {
            assert!(sed_script_is_safe(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_gate_adds_its_second_walls() {
        let h = |a: &[&str]| hardened(v(a));
        assert_eq!(
            h(&["sed", "-n", "1p", "/f"]),
            v(&["sed", "--sandbox", "-n", "1p", "/f"])
        );
        assert_eq!(
            h(&["/usr/bin/gsed", "1p"]),
            v(&["/usr/bin/gsed", "--sandbox", "1p"])
        );
        assert_eq!(h(&["grep", "x", "/f"]), v(&["grep", "x", "/f"]));
        assert_eq!(
            h(&["git", "-C", "/r", "diff", "HEAD"]),
            v(&[
                "git",
                "-C",
                "/r",
                "diff",
                "--no-ext-diff",
                "--no-textconv",
                "HEAD"
            ])
        );
        assert_eq!(
            h(&["git", "--no-pager", "blame", "f"]),
            v(&["git", "--no-pager", "blame", "--no-textconv", "f"])
        );
        assert_eq!(
            h(&["git", "-C", "/r", "status"]),
            v(&["git", "-C", "/r", "status"])
        );
    }

    #[test]
    fn dangerous_options() {
        for bad in [
            v(&[
                "find",
                "/var/log/app",
                "-name",
                "x",
                "-exec",
                "touch",
                "/tmp/x",
                ";",
            ]),
            v(&["find", "/var/log", "-delete"]),
            v(&["sed", "-n", "1e touch /tmp/x", "/var/log/app/a"]),
            v(&["sed", "-i", "s/a/b/", "/var/log/app/a"]),
            v(&["awk", "BEGIN{system(\"touch /tmp/x\")}", "/var/log/a"]),
            v(&["awk", "{print > \"/tmp/x\"}", "/var/log/a"]),
            v(&["awk", "-f", "/tmp/prog", "/var/log/a"]),
            v(&["grep", "-f", "/etc/passwd", "/var/log/a"]),
            v(&["grep", "--file=/etc/passwd", "/var/log/a"]),
            v(&["grep", "-if", "/etc/passwd", "/var/log/a"]),
            v(&["tar", "--to-command=sh", "-tf", "/var/log/a.tar"]),
            v(&["tar", "xf", "/var/log/a.tar"]),
            v(&["git", "-c", "core.pager=sh", "log"]),
            v(&["journalctl", "--vacuum-time=1s"]),
            v(&["psql", "-c", "\\! id"]),
            v(&["psql", "-c", "COPY t TO PROGRAM 'id'"]),
            v(&["sort", "-o", "/tmp/x", "/var/log/a"]),
            v(&["env", "sh"]),
            v(&["bash", "-c", "id"]),
            v(&["vim", "/var/log/a"]),
            v(&["tee", "/tmp/x"]),
            v(&["/usr/bin/python3", "-c", "1"]),
            v(&["python3.11", "-c", "1"]),
            v(&["vim.basic", "/var/log/a"]),
            v(&["mksh", "-c", "id"]),
            v(&["psql", "-c", "select 1"]),
            v(&["sqlite3", "-readonly", "/var/log/a.db", ".shell id"]),
            v(&["gawk", "BEGIN{ARGV[1]=\"/etc/passwd\"}", "/var/log/a"]),
            v(&["original-awk", "{print > \"x\"}", "/var/log/a"]),
            v(&[
                "jq",
                "import \"secret\" as $s {search: \"/tmp\"}; $s",
                "/var/log/a.json",
            ]),
            v(&["jq", "-n", "env", "/var/log/a.json"]),
        ] {
            assert!(check(&bad).is_err(), "{bad:?} must be refused");
        }
        for ok in [
            v(&["find", "/var/log/app", "-name", "app.log"]),
            v(&["sed", "-n", "1,5p", "/var/log/a"]),
            v(&["awk", "{print $1}", "/var/log/a"]),
            v(&["grep", "-i", "error", "/var/log/a"]),
            v(&["env"]),
            v(&["tail", "-n", "5", "/var/log/a"]),
        ] {
            assert!(check(&ok).is_ok(), "{ok:?} must pass");
        }
    }

    /// An option is refused however getopt would read it: abbreviated,
    /// with `=VALUE`, bundled or with its value attached (the shapes an
    /// adversarial review found getting past exact comparisons).
    #[test]
    fn options_are_read_as_getopt_reads_them() {
        for bad in [
            &["sed", "--exp=1e id", "/var/log/a"][..],
            &["sed", "-n", "--expr", "1e id", "/var/log/a"],
            &["sed", "-ne", "1e id", "/var/log/a"],
            &["sed", "--in-pl", "s/a/b/", "/var/log/a"],
            &["sed", "--fi=/tmp/s", "/var/log/a"],
            &[
                "tar",
                "-tf",
                "/var/log/a.tar",
                "--checkpoint=1",
                "--checkpoint-act=exec=id",
            ],
            &["tar", "-tf", "/var/log/a.tar", "--to-comm=sh"],
            &["tar", "-tf", "/var/log/a.tar", "-T", "/etc/hostname"],
            &["tar", "-tf", "/var/log/a.tar", "--files-from=/etc/hostname"],
            &["tar", "tTf", "/etc/hostname", "/var/log/a.tar"],
            &["sort", "--out=/tmp/x", "/var/log/a"],
            &["sort", "-uo", "/tmp/x", "/var/log/a"],
            &["sort", "--compress=sh", "/var/log/a"],
            &["journalctl", "--rot"],
            &["journalctl", "--cursor-file=/tmp/x"],
            &["journalctl", "-D/var/tmp/j"],
            &["journalctl", "-rD", "/var/tmp/j"],
            &["journalctl", "--fil=/tmp/j"],
            &["git", "-C", "/srv/app", "log", "--out=/tmp/x"],
            &["git", "-C", "/srv/app", "grep", "-Ovim", "x"],
            &["git", "--exec=/tmp", "log"],
            &["grep", "--fil=/etc/passwd", "/var/log/a"],
            &["grep", "--exclude-from=/etc/shadow", "x", "/var/log/a"],
        ] {
            assert!(check(&v(bad)).is_err(), "{bad:?} must be refused");
        }
        for ok in [
            &["sed", "-n", "-e", "2p", "/var/log/a"][..],
            &["sed", "-ne", "2p", "/var/log/a"],
            &["sed", "--expression=2p", "/var/log/a"],
            &["sed", "--quiet", "2p", "/var/log/a"],
            &["sort", "-r", "/var/log/a"],
            &["journalctl", "-u", "cron", "-n", "5"],
            &["journalctl", "--follow"],
            &["tar", "-tvf", "/var/log/a.tar"],
            &["git", "-C", "/srv/app", "log", "--oneline"],
            &["grep", "--files-with-matches", "x", "/var/log/a"],
        ] {
            assert!(check(&v(ok)).is_ok(), "{ok:?} must pass");
        }
    }

    /// Launchers, writers and other names of checked tools that an
    /// adversarial review found past the tables.
    #[test]
    fn wrappers_writers_and_variants_are_known() {
        for bad in [
            &["time", "sh", "-c", "id"][..],
            &["taskset", "1", "sh"],
            &["podman", "exec", "web", "sh"],
            &["chrt", "-o", "0", "sh"],
            &["ip", "netns", "exec", "x", "sh"],
            &["ip", "netns", "e", "x", "sh"],
            &["ip", "vrf", "exec", "x", "sh"],
            &["ip", "-batch", "/tmp/cmds"],
            &["ip", "--b", "/tmp/cmds"],
            &["gzip", "/var/log/syslog"],
            &["ip6tables", "-F"],
            &["bsdtar", "-xf", "/var/log/a.tar"],
            &["rgrep", "-f", "/etc/shadow", "/var/log"],
            &["gsed", "-n", "1e id", "/var/log/a"],
        ] {
            assert!(check(&v(bad)).is_err(), "{bad:?} must be refused");
        }
        for ok in [
            &["ip", "addr", "show"][..],
            &["ip", "-s", "link"],
            &["bsdtar", "-tf", "/var/log/a.tar"],
            &["zcat", "/var/log/syslog.2.gz"],
        ] {
            assert!(check(&v(ok)).is_ok(), "{ok:?} must pass");
        }
    }

    /// What a second adversarial review found past the first round's fixes.
    #[test]
    fn the_second_reviews_findings_are_refused() {
        for bad in [
            &["setarch", "x86_64", "awk", "BEGIN{system(\"id\")}"][..],
            &["linux64", "sed", "e touch /tmp/x", "/etc/hostname"],
            &["xxd", "/var/log/a", "/var/log/b"],
            &["unlink", "/var/log/a"],
            &["coredumpctl", "debug"],
            &["git", "-C", "/srv/app", "diff", "/dev/null", "/etc/passwd"],
            &["git", "-C", "/srv/app", "diff", "f", "../../etc/passwd"],
            &["git", "-C", "/srv/app", "diff", "--no-index", "a", "b"],
            &[
                "git",
                "-C",
                "/srv/app",
                "blame",
                "--contents",
                "/etc/passwd",
                "f",
            ],
            &["git", "-C", "/srv/app", "grep", "-f", "/etc/passwd"],
            &["tar", "-Af", "/var/log/a.tar", "/var/log/b.tar"],
            &[
                "tar",
                "--catenate",
                "-f",
                "/var/log/a.tar",
                "/var/log/b.tar",
            ],
            &["tar", "--concat", "-f", "/var/log/a.tar", "/var/log/b.tar"],
            &["jq", "-nf", "/etc/passwd"],
            &["jq", "-L/tmp", "."],
            &["sort", "--random-source", "/etc/shadow", "/var/log/a"],
            &["find", "-files0-from", "/tmp/list"],
            &["systemctl", "-H", "root@db", "status"],
            &["systemctl", "--host=root@db", "status"],
            &["systemctl", "-M", "web", "status"],
            &["systemctl", "status", "nginx", "-H", "root@db"],
            &["systemctl", "status", "nginx", "--mach=web"],
            &["systemctl", "-p", "status", "stop", "nginx"],
            &["systemctl", "-t", "status", "stop", "nginx"],
        ] {
            assert!(check(&v(bad)).is_err(), "{bad:?} must be refused");
        }
        for ok in [
            &["systemctl", "status", "nginx"][..],
            &["systemctl", "--no-pager", "-l", "status", "nginx"],
            &["systemctl", "-p", "ActiveState", "show", "nginx"],
            &["systemctl", "--type=service", "list-units"],
            &["git", "-C", "/srv/app", "log", "HEAD~3..HEAD"],
            &[
                "git",
                "-C",
                "/srv/app",
                "diff",
                "HEAD~1",
                "--",
                "src/main.rs",
            ],
        ] {
            assert!(check(&v(ok)).is_ok(), "{ok:?} must pass");
        }
    }

    /// git's subcommands are an allowlist: what an adversarial review found
    /// a `git -C /srv/app <word>` pattern admitting is refused, and reading
    /// still works.
    #[test]
    fn git_runs_only_read_only_subcommands() {
        for bad in [
            &["git", "-C", "/srv/app", "stash"][..],
            &["git", "-C", "/srv/app", "stash", "clear"],
            &["git", "-C", "/srv/app", "reset", "HEAD~1"],
            &["git", "-C", "/srv/app", "checkout", "HEAD~1"],
            &["git", "-C", "/srv/app", "rm", "f"],
            &["git", "-C", "/srv/app", "restore", "f"],
            &["git", "-C", "/srv/app", "commit"],
            &["git", "-C", "/srv/app", "tag", "x"],
            &["git", "-C", "/srv/app", "branch", "x"],
            &["git", "-C", "/srv/app", "maintenance", "start"],
            &[
                "git",
                "-C",
                "/srv/app",
                "ls-remote",
                "http://169.254.169.254/",
            ],
            &["git", "-C", "/srv/app", "lg"],
            &["git", "--namespace", "log", "stash"],
            &["git", "--unknown-option", "log"],
            &["git", "-C", "/srv/app", "help", "log"],
        ] {
            assert!(check(&v(bad)).is_err(), "{bad:?} must be refused");
        }
        for ok in [
            &["git", "-C", "/srv/app", "log", "-n", "5"][..],
            &["git", "--no-pager", "-C", "/srv/app", "show", "HEAD"],
            &["git", "-C", "/srv/app", "status"],
            &["git", "-C", "/srv/app", "diff", "HEAD~1"],
            &["git", "--namespace=x", "grep", "error"],
            &["git"],
        ] {
            assert!(check(&v(ok)).is_ok(), "{ok:?} must pass");
        }
    }
}
