#!/usr/bin/env bash
# Create (or update) the broker's password file and ACL in docker/mosquitto/auth/ (not in git).
#
#   docker/mosquitto/make-passwords.sh hub1 ops cam1 cam2       # prompts for each password
#   ATE_PW_hub1=s3cret ATE_PW_cam1=other docker/mosquitto/make-passwords.sh hub1 cam1   # scripted
#
# Users: `hub1`..`hub4` (one per expert hub, named as its hub id), `ops` (operators: mosquitto_sub,
# tau/set), `labels-<name>` (one per application that consumes labels: a dashboard, an archive, the
# scorer; read-only), `collect-<node>` (`edge-node collect` for that node: reads its offloaded
# frames and its labels, nothing else; frames are pixels), and one user per edge node named exactly
# as its --node-id / ATE_NODE_ID (the ACL's %u patterns rely on it). One user is one connection.
# Empty passwords are refused.
# Writes auth/passwd and auth/acl (docker/mosquitto/acl, then a read-only block for every
# labels-<name> and collect-<node> user in the password file, old and new), mode 0600, owned by
# the broker's user (uid and gid 1883 in the eclipse-mosquitto image; BROKER_UID / BROKER_GID
# override, NO_CHOWN=1 keeps yours), so Mosquitto 2.0.16+ loads them without "world readable" / "owner is not mosquitto"
# warnings. The chown uses sudo when not run as root. AUTH_DIR overrides the folder. Uses the host's
# mosquitto_passwd when installed, else the eclipse-mosquitto image.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${AUTH_DIR:-$here/auth}"
uid="${BROKER_UID:-1883}"
[ $# -gt 0 ] || { sed -n '2,18p' "$0"; exit 2; }
MOSQUITTO_IMAGE="${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.20}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

[ -d "$dir" ] || { echo "$dir is not a folder (it is in git: check out the repo again)" >&2; exit 1; }
[ ! -d "$dir/passwd" ] || { echo "$dir/passwd is a folder (Docker made it?): remove it with sudo rm -r" >&2; exit 1; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
if [ -s "$dir/passwd" ]; then as_root cat "$dir/passwd" > "$tmp/passwd"; else : > "$tmp/passwd"; fi
chmod 600 "$tmp/passwd"

for user in "$@"; do
  case "$user" in *[!A-Za-z0-9_-]*|"") echo "bad user name '$user' (letters, digits, _ and - only)" >&2; exit 1;; esac
  var="ATE_PW_${user//-/_}"
  pw="${!var:-}"
  if [ -z "$pw" ] && [ -t 0 ]; then read -r -s -p "password for $user: " pw; echo; fi
  [ -n "$pw" ] || { echo "empty password for $user (set $var or type one): nothing written" >&2; exit 1; }
  if command -v mosquitto_passwd >/dev/null; then
    mosquitto_passwd -b "$tmp/passwd" "$user" "$pw"
  else
    docker run --rm -u "$(id -u):$(id -g)" -v "$tmp:/work" "$MOSQUITTO_IMAGE" \
      mosquitto_passwd -b /work/passwd "$user" "$pw"
  fi
  echo "user $user set"
done

consumer_acl() {  # a label consumer: reads labels, status and stats, and nothing else
  cat <<EOF

# ----------------------------------------------------------------- label consumer $1 (make-passwords.sh)
user $1
topic read ate/v1/nodes/+/labels
topic read ate/v1/status/#
topic read ate/v1/stats/#
# the edge patterns apply to every user: take back what they would let $1 do as an edge node
topic deny ate/v1/experts/+/frames/$1
topic deny ate/v1/nodes/$1/#
topic deny ate/v1/status/edge/$1
topic deny ate/v1/stats/edge/$1
EOF
}
collector_acl() {  # edge-node collect for node $2: that node's offloaded frames and its labels, nothing else
  cat <<EOF

# ----------------------------------------------------------------- collector $1 of node $2 (make-passwords.sh)
user $1
topic read ate/v1/experts/+/frames/$2
topic read ate/v1/nodes/$2/labels
topic deny ate/v1/experts/+/frames/$1
topic deny ate/v1/nodes/$1/#
topic deny ate/v1/status/edge/$1
topic deny ate/v1/stats/edge/$1
EOF
}
{
  cat "$here/acl"
  for user in $(awk -F: '/^labels-/ {print $1}' "$tmp/passwd"); do consumer_acl "$user"; done
  for user in $(awk -F: '/^collect-./ {print $1}' "$tmp/passwd"); do collector_acl "$user" "${user#collect-}"; done
} > "$tmp/acl"

for f in passwd acl; do
  src="$tmp/$f"
  if [ "${NO_CHOWN:-0}" = 1 ]; then
    install -m 600 "$src" "$dir/$f"
  else
    as_root install -m 600 -o "$uid" -g "${BROKER_GID:-$uid}" "$src" "$dir/$f"
  fi
done
echo "wrote $dir/passwd and $dir/acl"
