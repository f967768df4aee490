#!/usr/bin/env bash
# Create (or update) the broker's password file, docker/mosquitto/passwd (not in git).
#
#   docker/mosquitto/make-passwords.sh hub1 ops cam1 cam2       # prompts for each password
#   ATE_PW_hub1=s3cret ATE_PW_cam1=other docker/mosquitto/make-passwords.sh hub1 cam1   # scripted
#
# Users: `hub1`..`hub4` (one per expert hub, named as its hub id), `ops` (operators, dashboards, mosquitto_sub, tau/set), and one user
# per edge node named exactly as its --node-id / ATE_NODE_ID (the ACL's %u patterns rely on it).
# Uses the host's mosquitto_passwd when installed, else the eclipse-mosquitto image.
# The file ends up mode 0600 owned by uid 1883 (the broker container's `mosquitto` user) unless
# NO_CHOWN=1; the chown uses sudo when not run as root. PASSWD_FILE overrides the path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
file="${PASSWD_FILE:-$here/passwd}"
[ $# -gt 0 ] || { sed -n '2,12p' "$0"; exit 2; }
MOSQUITTO_IMAGE="${MOSQUITTO_IMAGE:-eclipse-mosquitto:2.0.20}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
if [ -s "$file" ]; then as_root cat "$file" > "$tmp/passwd"; else : > "$tmp/passwd"; fi
chmod 600 "$tmp/passwd"

for user in "$@"; do
  case "$user" in *[!A-Za-z0-9_-]*|"") echo "bad user name '$user' (letters, digits, _ and - only)" >&2; exit 1;; esac
  var="ATE_PW_${user//-/_}"
  pw="${!var:-}"
  if [ -z "$pw" ]; then read -r -s -p "password for $user: " pw; echo; fi
  [ -n "$pw" ] || { echo "empty password for $user" >&2; exit 1; }
  if command -v mosquitto_passwd >/dev/null; then
    mosquitto_passwd -b "$tmp/passwd" "$user" "$pw"
  else
    docker run --rm -u "$(id -u):$(id -g)" -v "$tmp:/work" "$MOSQUITTO_IMAGE" \
      mosquitto_passwd -b /work/passwd "$user" "$pw"
  fi
  echo "user $user set"
done

if [ "${NO_CHOWN:-0}" = 1 ]; then
  install -m 600 "$tmp/passwd" "$file"
else
  as_root install -m 600 -o 1883 -g 1883 "$tmp/passwd" "$file"
fi
echo "wrote $file"
