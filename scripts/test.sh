#!/usr/bin/env bash
# The one test command (npm test; CI runs `npm ci && npm test`): system packages the tests
# talk to, build, type check, lint, import boundaries, then every vitest suite. Extra
# arguments go to vitest.
# The last line printed is "N passed, N failed" for CI to read.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers the tests start (STYLE.md "Tests"): Debian packages, installed when missing.
DEB_PACKAGES="mosquitto mosquitto-clients openssl systemd python3 socat python3-pymodbus python3-serial-asyncio curl libcoap3-bin jq make g++ g++-aarch64-linux-gnu qemu-user-static chromium"

log() { printf '\n=== %s\n' "$*"; }

deb_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

install_debs() {
  local missing=()
  local pkg
  for pkg in $DEB_PACKAGES; do
    deb_installed "$pkg" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi

  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "test.sh: missing Debian packages: ${missing[*]}; run as root (or with passwordless sudo) to install them" >&2
      exit 1
    fi
  fi

  log "installing ${missing[*]}"
  # Keep postinst scripts from starting services (the system mosquitto would take port 1883);
  # policy-rc.d exit 101 is Debian's way to say "do not start" (invoke-rc.d(8)).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  "${sudo[@]}" apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  fi
  if [ "$made_policy" -eq 1 ]; then
    "${sudo[@]}" rm -f "$policy"
  fi
  if [ "$rc" -ne 0 ]; then
    echo "test.sh: apt-get failed (exit $rc) installing ${missing[*]}" >&2
    exit 1
  fi

  # Belt and braces, only when the broker itself was just installed: policy-rc.d does not cover
  # every init system, and a mosquitto running now can only be the freshly started service.
  if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      "${sudo[@]}" systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    fi
    "${sudo[@]}" pkill -x mosquitto || true
  fi
}

if command -v dpkg-query >/dev/null; then
  install_debs
else
  echo "test.sh: no dpkg here; make sure these are installed: $DEB_PACKAGES" >&2
fi

log "build"
npm run build

log "type check"
npx tsc --noEmit
npx tsc --noEmit -p ui

log "lint"
npx eslint src test ui

log "import boundaries"
npm run --silent check:boundaries

log "tests"
mkdir -p .tmp
VITEST_LOG=.tmp/vitest.log
set +e
# NO_COLOR keeps the log parseable (escape codes are stripped below as well). The build just
# ran, so the global setup has nothing to do.
NO_COLOR=1 npx vitest run --reporter=default "$@" 2>&1 | tee "$VITEST_LOG"
vitest_rc=${PIPESTATUS[0]}
set -e

# vitest's summary line, e.g. "      Tests  2 failed | 40 passed | 1 skipped (43)".
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$VITEST_LOG" | grep -E '^[[:space:]]*Tests[[:space:]]+[0-9]' | tail -n 1 || true)
count() {
  printf '%s\n' "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0
}
passed=$(count passed)
failed=$(count failed)

status=0
if [ -z "$summary" ]; then
  echo "test.sh: FAILED: vitest printed no 'Tests' summary (exit $vitest_rc); see $VITEST_LOG" >&2
  status=1
elif [ "$passed" -eq 0 ]; then
  echo "test.sh: FAILED: no test passed ('$(echo "$summary" | sed 's/^[[:space:]]*//')'); an empty run is a failure" >&2
  status=1
elif [ "$vitest_rc" -ne 0 ]; then
  echo "test.sh: FAILED: vitest exited with $vitest_rc" >&2
  status=1
fi
echo "$passed passed, $failed failed"
exit "$status"
