#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (npm run build).
//
// The memory settings the gateway is measured with (docs/performance.md, "Memory": glibc's
// MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX, V8's --max-semi-space-size) are read when the process
// starts, so they are set by whatever starts it: `npm start`, the .deb's /usr/bin/iothub-edge
// wrapper and the container image. (A re-exec from here with process.execve was tried: when execve
// fails, e.g. an arm64 Node.js under qemu-user, Node.js aborts the process instead of going on.)
// Of these, V8's young-generation growth is the one that can be set from here, before the modules
// load: dist/core/young-generation.js (a no-op when the command line or NODE_OPTIONS sizes it). The
// glibc settings matter most for scrypt's 16 MiB buffers, and those are computed in a helper process
// started with them (dist/core/scrypt-process.js), however this one was started.

import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

// A checkout after `npm ci` alone has no dist/: say what to run rather than Node's module-not-found trace.
if (!existsSync(new URL('../dist/cli.js', import.meta.url))) {
  console.error(`iothub-edge: not built yet: run \`npm run build\` in ${fileURLToPath(new URL('..', import.meta.url))} (\`npm start\` builds by itself)`)
  process.exit(1)
}
const { keepYoungGenerationSmall } = await import('../dist/core/young-generation.js')
keepYoungGenerationSmall()
const { main } = await import('../dist/cli.js')
main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code },
  (err) => { console.error(err?.stack ?? String(err)); process.exit(1) }
)
