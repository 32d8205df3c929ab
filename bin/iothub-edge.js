#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ (npm run build).
//
// `start` runs the gateway with the memory settings it is measured with (docs/performance.md,
// "Memory"), however it was started: glibc told to give large freed blocks back to the system
// (scrypt's 16 MiB working buffers would otherwise stay in each libuv thread's heap) and a smaller
// young generation for V8. glibc reads its settings and V8 sizes its heap when the process starts,
// so the launcher replaces itself (execve: same process id, for systemd too) with one that has
// them. Settings already in the environment are kept; IOTHUB_EDGE_TUNED=1 (set on the way) skips
// it. Node.js without process.execve (before 22.15 / 23.11) starts as it is.
const MEMORY_ENV = { MALLOC_MMAP_THRESHOLD_: '131072', MALLOC_ARENA_MAX: '2' }
const V8_FLAGS = ['--max-semi-space-size=2']

if (process.argv[2] === 'start' && process.env.IOTHUB_EDGE_TUNED !== '1' && typeof process.execve === 'function') {
  const flags = V8_FLAGS.filter((f) => !process.execArgv.some((a) => a.startsWith(f.split('=')[0])) && !(process.env.NODE_OPTIONS ?? '').includes(f.split('=')[0]))
  process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, process.argv[1], ...process.argv.slice(2)], {
    ...MEMORY_ENV,
    ...process.env,
    IOTHUB_EDGE_TUNED: '1',
  })
}

const { main } = await import('../dist/cli.js')
main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code },
  (err) => { console.error(err?.stack ?? String(err)); process.exit(1) }
)
