// The command store against a real SQLite file: the seen-set forgets a RequestId only after its
// time to live, and a queued command past its ExpiresAt is marked expired by the sweep.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { openDatabase, type Db } from '../../src/store/db.js'
import { CommandStore } from '../../src/store/commands.js'
import type { Command } from '../../src/core/types.js'

let dir: string
let db: Db
const cmd = (requestId: string, expiresAt?: number): Command => ({
  type: 'cmd',
  device: { productId: 'p', deviceId: 'd' },
  name: 'reboot',
  encoding: 'plain',
  requestId,
  expiresAt,
  payload: Buffer.from('{}'),
})

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'commands-'))
  db = openDatabase(dir)
})
afterEach(() => {
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('command store', () => {
  it('drops a repeated RequestId for the same device, also after a reopen, until its time to live has passed', () => {
    const store = new CommandStore(db)
    expect(store.accept('p/d', cmd('r1'), 'hub', 'queued').fresh).toBe(true)
    expect(store.accept('p/d', cmd('r1'), 'hub', 'queued').fresh).toBe(false)
    // The same id for another device is another command.
    expect(store.accept('p/e', { ...cmd('r1'), device: { productId: 'p', deviceId: 'e' } }, 'hub', 'queued').fresh).toBe(true)
    db.close()
    db = openDatabase(dir)
    const again = new CommandStore(db)
    expect(again.accept('p/d', cmd('r1'), 'hub', 'queued').fresh).toBe(false)
    again.sweep(3_600_000, ['p/d']) // an hour's time to live: still remembered
    expect(again.accept('p/d', cmd('r1'), 'hub', 'queued').fresh).toBe(false)
    again.sweep(-1, ['p/d']) // past its time to live: forgotten
    expect(again.accept('p/d', cmd('r1'), 'hub', 'queued').fresh).toBe(true)
  })

  it('marks queued commands past their ExpiresAt as expired, in order, and keeps the others queued', () => {
    const store = new CommandStore(db)
    const now = Math.floor(Date.now() / 1000)
    store.accept('p/d', cmd('old', now - 10), 'hub', 'queued')
    store.accept('p/d', cmd('fresh', now + 3600), 'hub', 'queued')
    store.accept('p/d', cmd('forever'), 'hub', 'queued')
    expect(store.sweep(86_400_000, ['p/d'])).toBe(1)
    expect(store.pending('p/d').map((c) => c.command.requestId)).toEqual(['fresh', 'forever'])
    expect(store.recent('p/d').find((c) => c.command.requestId === 'old')?.state).toBe('expired')
  })
})
