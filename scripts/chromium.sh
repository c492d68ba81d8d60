#!/usr/bin/env bash
# Find Chromium (or Chrome) for the web view's browser tests (tests/web_view.rs), and
# install it from the system's packages when there is none. Prints the binary's path
# on stdout (messages go to stderr); the tests take it from TUTTI_CHROMIUM or PATH.
#
# Usage: export TUTTI_CHROMIUM="$(scripts/chromium.sh)"
set -euo pipefail
say() { echo "[chromium] $*" >&2; }

find_chromium() {
  if [ -n "${TUTTI_CHROMIUM:-}" ] && [ -x "$TUTTI_CHROMIUM" ]; then
    echo "$TUTTI_CHROMIUM"
    return 0
  fi
  local n
  for n in chromium chromium-browser google-chrome google-chrome-stable chrome chrome-headless-shell; do
    if command -v "$n" >/dev/null 2>&1; then
      command -v "$n"
      return 0
    fi
  done
  for n in "/Applications/Chromium.app/Contents/MacOS/Chromium" \
           "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"; do
    if [ -x "$n" ]; then
      echo "$n"
      return 0
    fi
  done
  return 1
}

if found="$(find_chromium)"; then
  say "using $found"
  echo "$found"
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      say "ERROR: installing Chromium needs root (apt-get install chromium)"
      exit 1
    fi
  fi
  # Debian's `chromium` is the browser itself (Ubuntu's is a snap shim that does not
  # run in containers: there, point TUTTI_CHROMIUM at a Chrome or Chromium binary).
  say "installing chromium from the system's packages"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >&2
elif command -v brew >/dev/null 2>&1; then
  say "installing Chromium with Homebrew"
  brew install --cask chromium >&2
else
  say "ERROR: no Chromium and no known package manager: install Chromium or Chrome and set TUTTI_CHROMIUM"
  exit 1
fi

if found="$(find_chromium)"; then
  say "installed: $found"
  echo "$found"
else
  say "ERROR: Chromium was installed but is not on PATH; set TUTTI_CHROMIUM"
  exit 1
fi
