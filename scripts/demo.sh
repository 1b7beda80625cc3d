#!/usr/bin/env bash
# Bring up a working bastion in ./demo: generated keys, the example roles,
# two demo users (alice: qa, bob: qa-lead) and a local demo target `web-1`
# (a real sshd on 127.0.0.1:2200 running as you). Ctrl-C stops both.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${POSTERN_DEMO_DIR:-$root/demo}
sshd=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$sshd" ] || { echo "demo: needs OpenSSH's sshd (apt-get install openssh-server)" >&2; exit 1; }

cargo build --release --manifest-path "$root/Cargo.toml" >&2
postern=$root/target/release/postern
mkdir -p "$demo/keys" "$demo/target" "$demo/policies"
"$postern" init --dir "$demo" >&2

for u in alice bob; do
  [ -f "$demo/keys/$u" ] || ssh-keygen -q -t ed25519 -N '' -C "$u@demo" -f "$demo/keys/$u"
done
[ -f "$demo/target/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C demo-target -f "$demo/target/host_key"
cp "$demo/hostkeys/target_ed25519.pub" "$demo/target/authorized_keys"
mkdir -p /run/sshd 2>/dev/null || true
cat > "$demo/target/sshd_config" <<CFG
Port 2200
ListenAddress 127.0.0.1
HostKey $demo/target/host_key
PidFile $demo/target/sshd.pid
AuthorizedKeysFile $demo/target/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
CFG

me=$(id -un)
cp "$root/policies/roles.toml" "$demo/policies/roles.toml"
cat > "$demo/policies/demo.toml" <<POL
[[user]]
name = "alice"
groups = ["qa"]
keys = ["$(cat "$demo/keys/alice.pub")"]

[[user]]
name = "bob"
groups = ["qa-lead", "admin"]
keys = ["$(cat "$demo/keys/bob.pub")"]

[[target]]
name = "web-1"
address = "127.0.0.1:2200"
login = "$me"
host_key = "$(cat "$demo/target/host_key.pub")"
labels = { env = "prod", tier = "web" }
POL

"$sshd" -D -e -f "$demo/target/sshd_config" 2>"$demo/target/sshd.log" &
target_pid=$!
trap 'kill $target_pid 2>/dev/null || true' EXIT

kh="$demo/known_hosts"
echo "[127.0.0.1]:2222 $(cat "$demo/hostkeys/ssh_host_ed25519_key.pub")" > "$kh"
o="-p 2222 -o UserKnownHostsFile=$kh -o IdentitiesOnly=yes"
cat >&2 <<TXT

postern demo: bastion on 127.0.0.1:2222, demo target web-1 on 127.0.0.1:2200.
In another terminal:
  ssh $o -i $demo/keys/alice access@127.0.0.1 request qa-shell --for 30m --reason BUG-123 verify fix
  ssh $o -i $demo/keys/bob   access@127.0.0.1 approve REQ_ID
  ssh $o -i $demo/keys/alice access@127.0.0.1 cert REQ_ID > $demo/keys/alice-cert.pub
  ssh $o -i $demo/keys/alice qa@127.0.0.1                 # targets and time left
  ssh $o -i $demo/keys/alice -t qa@127.0.0.1 web-1        # a shell on web-1
TXT
cd "$demo"
"$postern" serve --config "$demo/postern.toml"
