// The WAL checkpointer thread (src/store/wal-checkpointer.ts): under sustained commits it copies the
// WAL into gateway.db's file, so the main connection does not have to (it ends when
// the writes stop), and a close leaves the main connection the last one open (the WAL is then folded
// into the file and removed, as a clean stop should).
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { WalCheckpointer } from '../../src/store/wal-checkpointer.js'

const dirs: string[] = []
const dbs: Db[] = []
afterEach(() => {
  for (const db of dbs.splice(0)) if (db.open) db.close()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

function open(): { db: Db; wal: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ihe-walcp-'))
  dirs.push(dir)
  const db = openDatabase(dir)
  dbs.push(db)
  // No automatic checkpoint on this connection: whatever keeps the WAL small is the thread.
  db.pragma('wal_autocheckpoint = 0')
  // Speed only: what is tested is the copying, not the commits' fsync.
  db.pragma('synchronous = NORMAL')
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)')
  return { db, wal: `${db.name}-wal` }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const until = async (what: () => boolean, ms = 20_000): Promise<boolean> => {
  const end = Date.now() + ms
  while (!what() && Date.now() < end) await sleep(20)
  return what()
}

/** `n` commits of one 2 KiB row each, a pause every 10 (traffic comes in bursts; the thread works meanwhile). */
async function commits(db: Db, cp: WalCheckpointer, n: number): Promise<void> {
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)')
  for (let i = 0; i < n; i++) {
    ins.run(Buffer.alloc(2048, i % 251))
    cp.committed()
    if (i % 10 === 0) await sleep(1)
  }
}

describe('WAL checkpointer thread', () => {
  it('copies the committed rows into the database file while the commits go on', async () => {
    const { db, wal } = open()
    const cp = new WalCheckpointer(db, { startAfter: 10, everyMs: 5, idleMs: 60_000 })
    await commits(db, cp, 20)
    expect(cp.running).toBe(true)
    expect(cp.starts).toBe(1)
    await commits(db, cp, 3000)
    // 3,020 rows of 2 KiB are in gateway.db's own file, not only in the WAL, without this
    // connection ever checkpointing (its automatic checkpoint is off here).
    expect(await until(() => statSync(db.name).size > 6 * 1024 * 1024)).toBe(true)
    expect(db.prepare('SELECT COUNT(*) FROM t').pluck().get()).toBe(3020)
    cp.close()
    db.close()
    expect(existsSync(wal)).toBe(false)
  })

  it('without the thread the rows stay in the WAL (the test above can fail)', async () => {
    const { db, wal } = open()
    const cp = new WalCheckpointer(db, { startAfter: Number.MAX_SAFE_INTEGER })
    await commits(db, cp, 3020)
    await sleep(500)
    expect(cp.running).toBe(false)
    expect(statSync(db.name).size).toBeLessThan(1024 * 1024)
    expect(statSync(wal).size).toBeGreaterThan(6 * 1024 * 1024)
  })

  it('ends after a while with nothing to copy, and starts again with the next run of commits', async () => {
    const { db } = open()
    const cp = new WalCheckpointer(db, { startAfter: 10, everyMs: 5, idleMs: 300 })
    await commits(db, cp, 20)
    expect(cp.running).toBe(true)
    expect(await until(() => !cp.running)).toBe(true)
    // A few commits now and then do not start it.
    await commits(db, cp, 5)
    expect(cp.running).toBe(false)
    await commits(db, cp, 20)
    expect(cp.running).toBe(true)
    expect(cp.starts).toBe(2)
    cp.close()
  })

  it('is never started for commits far apart', async () => {
    const { db } = open()
    const cp = new WalCheckpointer(db, { startAfter: 5, gapMs: 30 })
    const ins = db.prepare('INSERT INTO t (v) VALUES (?)')
    for (let i = 0; i < 8; i++) {
      ins.run(Buffer.alloc(16))
      cp.committed()
      await sleep(60)
    }
    expect(cp.starts).toBe(0)
  })
})
