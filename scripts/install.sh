#!/bin/bash
# Set up a Debian 12 host for capsa: Debian packages (scripts/apt-packages.txt), capsa itself in
# editable mode with its test extras, the fast launchers in /usr/local/bin, and the embedded
# default image at /var/lib/capsa/default-rootfs. Idempotent, quiet, needs no terminal; as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BIN_DIR=${CAPSA_BIN_DIR:-/usr/local/bin}
ROOTFS=${CAPSA_DEFAULT_ROOTFS:-/var/lib/capsa/default-rootfs}
# The launchers run Debian's interpreter: isolated (-I) and without site (-S) it starts in ~6 ms
# instead of ~29 ms. Linux passes everything after the interpreter path as ONE argument, so the
# flags must be fused: "#!/usr/bin/python3 -I -S" fails with "Unknown option: - ".
LAUNCH_PYTHON=${CAPSA_LAUNCH_PYTHON:-/usr/bin/python3}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages and writes $BIN_DIR"
. "$REPO/scripts/python-env.sh"

# 1. Debian packages: only those not installed yet, so a second run needs no network.
export DEBIAN_FRONTEND=noninteractive
missing=()
while read -r pkg _; do
    [ -n "$pkg" ] || continue
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [ "${status:0:2}" = "ii" ] || missing+=("$pkg")
done < <(sed -e 's/#.*//' "$REPO/scripts/apt-packages.txt")
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
fi

# 2. capsa and its test extras into the interpreter the tests use.
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$REPO[test]"
# pip also writes console scripts for pyproject's [project.scripts]; under pyenv they surface as
# bash shims earlier on PATH that start a full interpreter with site (~10x the launcher's start-up
# time). Remove them so the launchers below are what `capsa-runtime` and `capsa` run.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for name in capsa-runtime capsa; do
    if [ "$scripts_dir/$name" -ef "$BIN_DIR/$name" ] || [ ! -f "$scripts_dir/$name" ]; then
        continue
    fi
    if grep -q "capsa" "$scripts_dir/$name"; then rm -f "$scripts_dir/$name"; fi
done
pyenv_bin=$(command -v pyenv || echo "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv")
if [ -x "$pyenv_bin" ]; then "$pyenv_bin" rehash; fi

# 3. Launchers: written whole to a temporary name, then renamed (never a half-written script).
[ -x "$LAUNCH_PYTHON" ] || die "no $LAUNCH_PYTHON: apt-get install python3"
write_launcher() {
    local name=$1 module=$2 function=$3 tmp
    tmp=$(mktemp "$BIN_DIR/.$name.XXXXXX")
    cat >"$tmp" <<EOF
#!$LAUNCH_PYTHON -IS
import sys
sys.path.insert(0, "$REPO")
from $module import $function
sys.exit($function())
EOF
    chmod 0755 "$tmp"
    mv -f "$tmp" "$BIN_DIR/$name"
}
mkdir -p "$BIN_DIR"
write_launcher capsa-runtime capsa.runtime.cli entry
write_launcher capsa capsa.engine.cli main

# 4. The embedded default image, rebuilt in place (atomically) so it follows busybox upgrades.
mkdir -p -m 0755 "$(dirname "$ROOTFS")"
"$LAUNCH_PYTHON" -IS -c 'import sys; sys.path.insert(0, sys.argv[1]); from capsa.busybox import main; sys.exit(main(sys.argv[2:]))' \
    "$REPO" "$ROOTFS" --replace
# 5. Rootless networking: slirp4netns opens /dev/net/tun as the user. Debian's udev rule makes
# it 0666; a host without udev (containers, this CI) leaves the kernel's 0600.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" = 600 ]; then
    chmod 0666 /dev/net/tun
fi
say "ok: $BIN_DIR/capsa-runtime, $BIN_DIR/capsa, default image at $ROOTFS"
