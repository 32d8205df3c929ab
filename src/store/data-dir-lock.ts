// One gateway per data folder. Two gateways on the same folder would drain one outbox twice and
// take the hub client id from each other every second, so the second one is refused at start. The
// lock is a file holding the owner's pid and its start time (from /proc): after kill -9 or a power
// loss the file stays behind, and a pid that is dead, or alive but started at another time (the pid
// was reused by another process), is a stale lock that the next start takes over.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'

export const LOCK_FILE = 'gateway.lock'

export interface LockOwner {
  pid: number
  /** Process start time in clock ticks since boot (/proc/PID/stat field 22); null off Linux. */
  startTime: number | null
}

/** Another live process holds the data folder. */
export class DataDirBusyError extends Error {
  constructor(
    readonly dataDir: string,
    readonly owner: LockOwner,
  ) {
    super(`another gateway (pid ${owner.pid}) is using ${dataDir}: stop it first, or give this one its own gateway.dataDir`)
    this.name = 'DataDirBusyError'
  }
}

function startTimeOf(pid: number): number | null {
  try {
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(fields[19])
  } catch {
    return null
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists, owned by another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The live owner of the data folder's lock, or undefined when there is none (or it is stale). */
export function lockOwner(dataDir: string): LockOwner | undefined {
  let owner: LockOwner
  try {
    owner = JSON.parse(readFileSync(path.join(dataDir, LOCK_FILE), 'utf8')) as LockOwner
  } catch {
    return undefined
  }
  if (!Number.isInteger(owner.pid) || owner.pid <= 0 || !alive(owner.pid)) return undefined
  if (owner.startTime !== null && owner.startTime !== undefined) {
    const now = startTimeOf(owner.pid)
    if (now !== null && now !== owner.startTime) return undefined
  }
  return owner
}

function staleOwner(file: string): LockOwner {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as LockOwner
  } catch {
    // empty or torn: the power went while it was written
    return { pid: -1, startTime: null }
  }
}

export class DataDirLock {
  private held = false
  /** The owner of a stale lock this start took over: the previous run ended without a clean stop. */
  previous?: LockOwner

  constructor(readonly dataDir: string) {}

  /**
   * Take the lock; throws DataDirBusyError when a live process holds it, fs errors as they are.
   * Returns false when the folder is usable but the lock file could not be written for lack of
   * space: a gateway restarted on a full disk must still come up (degraded) and serve what it has.
   */
  acquire(): boolean {
    mkdirSync(this.dataDir, { recursive: true })
    const file = path.join(this.dataDir, LOCK_FILE)
    const me: LockOwner = { pid: process.pid, startTime: startTimeOf(process.pid) }
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        // wx: creating the file is the atomic step; of two starting at once, one wins.
        writeFileSync(file, JSON.stringify(me), { flag: 'wx', mode: 0o600 })
        this.held = true
        return true
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if (code === 'ENOSPC' || code === 'EDQUOT') {
          // An empty file may have been created before the write failed: not a lock of anybody's.
          rmSync(file, { force: true })
          return false
        }
        if (code !== 'EEXIST') throw err
      }
      const owner = lockOwner(this.dataDir)
      if (owner) throw new DataDirBusyError(this.dataDir, owner)
      // Stale (the owner died: kill -9, a crash, a power loss): remove it and try again.
      this.previous ??= staleOwner(file)
      rmSync(file, { force: true })
    }
    const owner = lockOwner(this.dataDir)
    throw new DataDirBusyError(this.dataDir, owner ?? { pid: -1, startTime: null })
  }

  release(): void {
    if (!this.held) return
    this.held = false
    const file = path.join(this.dataDir, LOCK_FILE)
    try {
      const owner = JSON.parse(readFileSync(file, 'utf8')) as LockOwner
      if (owner.pid === process.pid) rmSync(file, { force: true })
    } catch {
      // already gone
    }
  }
}
