#!/usr/bin/env bash
# Installs and configures Nix for CI on a fresh Debian machine (single-user, as root).
# Idempotent and quick: skips the install when nix is already there, rewrites nix.conf only
# when it differs. The flake tests (tests/integration/nix) need nix-instantiate and `nix`
# with flakes; they evaluate against the nixpkgs stand-in in tests/nix, so no binary cache
# and no network are needed.
set -euo pipefail

if ! command -v nix >/dev/null 2>&1 || ! command -v nix-instantiate >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nix-bin >/dev/null
fi

conf=/etc/nix/nix.conf
wanted="$(
  cat <<'CONF'
# Written by .ci/setup-nix.sh
experimental-features = nix-command flakes
# No binary cache: nothing waits on cache.nixos.org (CI has no route to it).
substituters =
# Single-user as root: builds run as the calling user, no nixbld group needed.
build-users-group =
# Debian's nix-bin cannot set up the build sandbox in containers.
sandbox = false
warn-dirty = false
CONF
)"
mkdir -p /etc/nix
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$wanted" ]; then
  printf '%s\n' "$wanted" >"$conf"
fi
# The local store must be writable by the single user (root).
mkdir -p /nix/store /nix/var/nix

nix --version
