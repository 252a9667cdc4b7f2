#!/usr/bin/env bash
# setup.sh — install what cross/build.sh needs. Idempotent: a second run installs
# nothing and takes about a second.
#
#   cross/setup.sh
#
# Installs (Debian 12 amd64, as root):
#   apt:  rustc-web, cargo-web (Rust 1.96 from bookworm-security), rust-web-src at
#         exactly the rustc-web version (std source for -Zbuild-std), qemu-user,
#         binutils for aarch64/armhf (strip), python3-venv
#   PyPI: ziglang + cargo-zigbuild (cross/requirements.txt) in cross/.venv
#         (or $CROSS_VENV), used as the linker for the static musl targets
#   cross/.toolbin: symlinks cargo/rustc/rustdoc -> Debian's, zig, cargo-zigbuild.
#         build.sh puts it first in PATH so rustup's 1.95 proxies (which have no ARM
#         std and cannot get one) are not used for cross builds.
#
# Env: CROSS_NO_APT=1 never calls apt-get (fails, naming what is missing).
set -euo pipefail
# shellcheck source=cross/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PKGS=(rustc-web cargo-web qemu-user binutils binutils-aarch64-linux-gnu
          binutils-arm-linux-gnueabihf python3-venv)

APT_UPDATED=0
apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q "$@" >&2
}
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  log "apt-get update"
  # A stale index for one suite must not stop us if the ones we need are fine;
  # the install below fails clearly if they are not.
  apt_get update || log "apt-get update reported errors (continuing)"
  APT_UPDATED=1
}
installed_version() { { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } | sed -n 's/^install ok installed //p'; }

apt_install() { # apt_install PKG[=VERSION]...
  local missing=() p name want
  for p in "$@"; do
    name="${p%%=*}"; want="${p#"$name"}"; want="${want#=}"
    local have; have="$(installed_version "$name")"
    if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then missing+=("$p"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${CROSS_NO_APT:-0}" = 1 ] && die "missing apt packages: ${missing[*]} (unset CROSS_NO_APT or install them as root)"
  [ "$(id -u)" = 0 ] || die "missing apt packages: ${missing[*]}; run cross/setup.sh as root or: sudo apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  if ! apt_get install --no-install-recommends "${missing[@]}"; then
    apt_update_once
    apt_get install --no-install-recommends "${missing[@]}" \
      || die "apt-get install ${missing[*]} failed; check /etc/apt/sources.list* has bookworm-security (rustc-web 1.96 lives there)"
  fi
}

setup_apt() {
  # rustc-web must come from bookworm-security (1.96); bookworm main has 1.85, too old
  # for rusqlite 0.41. If apt only knows the old one, refresh the lists first.
  if [ -z "$(installed_version rustc-web)" ]; then
    local cand; cand="$(apt-cache policy rustc-web 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    case "$cand" in 1.8[0-9].*|''|'(none)') [ "${CROSS_NO_APT:-0}" = 1 ] || apt_update_once;; esac
  fi
  apt_install "${APT_PKGS[@]}"
  # std's source MUST be the exact version of the compiler.
  local v; v="$(installed_version rustc-web)"
  apt_install "rust-web-src=$v"
  local rv; rv="$(/usr/bin/rustc -V | awk '{print $2}')"
  case "$rv" in 1.8[0-9].*|1.9[0-4].*) die "/usr/bin/rustc is $rv; need >= 1.95 (rustc-web from bookworm-security). Run apt-get update and re-run setup.sh";; esac
}

setup_venv() {
  local req="$CROSS_DIR/requirements.txt" stamp="$VENV/.requirements.txt"
  if [ -x "$VENV/bin/cargo-zigbuild" ] && [ -x "$VENV/bin/python-zig" ] && cmp -s "$req" "$stamp"; then
    return 0
  fi
  local py; py="$(command -v python3 || true)"; [ -n "$py" ] || py=/usr/bin/python3
  log "creating venv $VENV with $(grep -v '^#' "$req" | xargs) (PyPI)"
  "$py" -m venv "$VENV" || die "python3 -m venv $VENV failed (is python3-venv installed?)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req" >&2 \
    || die "pip install -r $req failed (PyPI reachable?)"
  cp "$req" "$stamp"
}

setup_toolbin() {
  mkdir -p "$TOOLBIN"
  ln -sfn /usr/bin/cargo "$TOOLBIN/cargo"
  ln -sfn /usr/bin/rustc "$TOOLBIN/rustc"
  ln -sfn /usr/bin/rustdoc "$TOOLBIN/rustdoc"
  ln -sfn "$VENV/bin/python-zig" "$TOOLBIN/zig"
  ln -sfn "$VENV/bin/cargo-zigbuild" "$TOOLBIN/cargo-zigbuild"
}

main() {
  local t0; t0="$(now)"
  setup_apt
  setup_venv
  setup_toolbin
  log "rustc $(/usr/bin/rustc -V | awk '{print $2}'), cargo $(/usr/bin/cargo -V | awk '{print $2}'), zig $("$TOOLBIN/zig" version), $("$TOOLBIN/cargo-zigbuild" --version), $(qemu-aarch64 --version | head -1)"
  log "setup done in $(elapsed "$t0")s"
}
main "$@"
