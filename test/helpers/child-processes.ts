// Bookkeeping for the real processes tests start (brokers, the gateway): wait for their exit,
// and never leave one behind when the test process ends, however it ends.
import type { ChildProcess } from 'node:child_process'

const live = new Set<ChildProcess>()
let reaperInstalled = false

/** Remember a child so it is SIGKILLed if this process exits while the child still runs. */
export function trackChild(child: ChildProcess): void {
  if (!reaperInstalled) {
    reaperInstalled = true
    // Last resort only: helpers stop their children properly; 'exit' handlers must be synchronous.
    process.on('exit', () => {
      for (const c of live) if (isRunning(c)) c.kill('SIGKILL')
    })
  }
  live.add(child)
  child.once('exit', () => live.delete(child))
}

/** Spawned and not exited yet. (A child that failed to spawn has no pid.) */
export function isRunning(child: ChildProcess | undefined): boolean {
  return child?.pid !== undefined && child.exitCode === null && child.signalCode === null
}

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
}

/** Resolves when the child has exited (at once if it already has); rejects after timeoutMs. */
export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<ExitStatus> {
  if (!isRunning(child)) return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit)
      reject(new Error(`process ${child.pid} did not exit within ${timeoutMs} ms`))
    }, timeoutMs)
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer)
      resolve({ code, signal })
    }
    child.once('exit', onExit)
  })
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Stops a child started with `detached: true` and everything in its process group: SIGTERM, then
 * SIGKILL after `timeoutMs`. Resolves once the whole group is gone, not only the child: a shell
 * exits at once on SIGTERM while the gateway it started is still closing its files, and a test
 * that removes the data folder then would race it.
 */
export async function stopProcessGroup(child: ChildProcess, timeoutMs: number): Promise<void> {
  const pgid = child.pid
  if (pgid === undefined || !groupAlive(pgid)) return
  process.kill(-pgid, 'SIGTERM')
  const deadline = Date.now() + timeoutMs
  while (groupAlive(pgid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  if (!groupAlive(pgid)) return
  process.kill(-pgid, 'SIGKILL')
  // A zombie nobody reaps would keep the group "alive" forever: give up after a few seconds.
  const killDeadline = Date.now() + 5_000
  while (groupAlive(pgid) && Date.now() < killDeadline) await new Promise((r) => setTimeout(r, 50))
}
