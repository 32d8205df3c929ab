#!/bin/sh
# /usr/bin/iothub-edge: runs the gateway's CLI with the Node.js runtime the package ships in
# /opt/iothub-edge/node (its native modules are built for exactly that Node.js); a checkout
# installed under /opt/iothub-edge without it uses the node on the PATH.
app=/opt/iothub-edge
# The gateway's memory settings (docs/performance.md, "Memory"); values already set are kept.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
# The service's config, so that `sudo iothub-edge status` (devices, diagnostics, ...) finds the
# running service's data folder without -c; -c FILE, or IOTHUB_EDGE_CONFIG set (even empty), wins.
if [ -z "${IOTHUB_EDGE_CONFIG+set}" ] && [ -e /etc/iothub-edge/gateway.yaml ]; then
  export IOTHUB_EDGE_CONFIG=/etc/iothub-edge/gateway.yaml
fi
if [ -x "$app/node/bin/node" ]; then
  exec "$app/node/bin/node" --max-semi-space-size=2 "$app/bin/iothub-edge.js" "$@"
fi
exec node --max-semi-space-size=2 "$app/bin/iothub-edge.js" "$@"
