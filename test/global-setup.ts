// Vitest globalSetup: make sure dist/ matches src/ before any test spawns the gateway binary,
// so `npx vitest run` works without a separate `npm run build`. scripts/test.sh builds anyway.
// IOTHUB_EDGE_SKIP_BUILD=1 skips this (e.g. to run broker-only tests while src/ does not compile).
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const execFileAsync = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    const mtime = entry.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs
    newest = Math.max(newest, mtime)
  }
  return newest
}

export async function setup(): Promise<void> {
  if (process.env.IOTHUB_EDGE_SKIP_BUILD === '1') return
  const cli = path.join(root, 'dist', 'cli.js')
  const inputs = Math.max(
    newestMtime(path.join(root, 'src')),
    statSync(path.join(root, 'tsconfig.json')).mtimeMs,
    statSync(path.join(root, 'tsconfig.build.json')).mtimeMs,
  )
  try {
    if (!existsSync(cli) || statSync(cli).mtimeMs < inputs) await execFileAsync('npm', ['run', 'build'], { cwd: root, maxBuffer: 16 * 1024 * 1024 })
    // The web app (ui/ -> dist/ui/): its own build, when a file in ui/ changed since the last one.
    else await execFileAsync(process.execPath, ['scripts/build-ui.mjs', '--if-stale'], { cwd: root, maxBuffer: 16 * 1024 * 1024 })
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string }
    throw new Error(`global setup: \`npm run build\` failed, so tests would run a stale gateway:\n${e.stdout ?? ''}${e.stderr ?? e.message}`)
  }
}
