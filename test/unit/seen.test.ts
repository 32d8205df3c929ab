// The adapters' durable seen-sets (ChirpStack deduplicationIds, CoAP Message-IDs) and records (LoRaWAN
// downlinks in flight) on a real SQLite file: a repeat within the time to live is caught, also after
// a restart; after it, the id is new. Records live until they expire or are deleted.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { SeenStore } from '../../src/store/seen.js'
import { AdapterRecordStore } from '../../src/store/adapter-records.js'

let dir: string
let db: Db
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'seen-'))
  db = openDatabase(dir)
})
afterEach(() => {
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

describe('SeenStore', () => {
  it('says first time once per id and scope within the time to live', () => {
    const s = new SeenStore(db)
    const t = 1_000_000
    expect(s.firstTime('lorawan/dedup', 'a', 60_000, t)).toBe(true)
    expect(s.firstTime('lorawan/dedup', 'a', 60_000, t + 1)).toBe(false)
    expect(s.firstTime('coap/mid', 'a', 60_000, t + 1)).toBe(true) // another scope
    expect(s.firstTime('lorawan/dedup', 'a', 60_000, t + 60_001)).toBe(true) // expired, not yet swept
    expect(s.firstTime('lorawan/dedup', 'a', 60_000, t + 60_002)).toBe(false)
  })

  it('remembers across a restart (a redelivery after kill -9 stays a repeat)', () => {
    new SeenStore(db).firstTime('lorawan/dedup', 'b', 60_000)
    db.close()
    db = openDatabase(dir)
    expect(new SeenStore(db).firstTime('lorawan/dedup', 'b', 60_000)).toBe(false)
  })

  it('answers has() without recording, so an adapter can record only once its work is durable', () => {
    const s = new SeenStore(db)
    const t = 2_000_000
    expect(s.has('lorawan/events', 'up/c', t)).toBe(false)
    expect(s.has('lorawan/events', 'up/c', t)).toBe(false) // still not recorded
    expect(s.firstTime('lorawan/events', 'up/c', 60_000, t)).toBe(true)
    expect(s.has('lorawan/events', 'up/c', t + 1)).toBe(true)
    expect(s.has('coap/mid', 'up/c', t + 1)).toBe(false) // another scope
    expect(s.has('lorawan/events', 'up/c', t + 60_001)).toBe(false) // expired
  })

  it('forgets one id of one scope on request (work it guarded failed and may be retried)', () => {
    const s = new SeenStore(db)
    s.firstTime('http/idem', 'k', 60_000)
    s.firstTime('other/idem', 'k', 60_000)
    s.forget('http/idem', 'k')
    expect(s.firstTime('http/idem', 'k', 60_000)).toBe(true)
    expect(s.firstTime('other/idem', 'k', 60_000)).toBe(false)
  })

  it('sweeps what has expired, and only that', () => {
    const s = new SeenStore(db)
    s.firstTime('x', 'old', 1_000, 0)
    s.firstTime('x', 'new', 1_000_000, 0)
    expect(s.sweep(10_000)).toBe(1)
    expect(s.firstTime('x', 'new', 1_000_000, 10_001)).toBe(false)
  })
})

describe('AdapterRecordStore', () => {
  it('keeps JSON records per scope until they expire or are deleted, across a reopen of the database', () => {
    const now = Date.now()
    const a = new AdapterRecordStore(db).scoped<{ requestId: string; sent: boolean }>('lorawan/downlinks')
    const other = new AdapterRecordStore(db).scoped<{ requestId: string }>('coap/x')
    a.put('q1', { requestId: 'r1', sent: false }, now + 60_000)
    a.put('q2', { requestId: 'r2', sent: false }, now + 60_000)
    a.put('old', { requestId: 'r0', sent: false }, now - 1) // already past its expiry
    a.put('q1', { requestId: 'r1', sent: true }, now + 60_000) // replaced in place
    expect(other.get('q1')).toBeUndefined()
    expect(a.get('old')).toBeUndefined()
    db.close()
    db = openDatabase(dir)
    const store = new AdapterRecordStore(db)
    const again = store.scoped<{ requestId: string; sent: boolean }>('lorawan/downlinks')
    expect(again.list().map((r) => [r.id, r.value])).toEqual([
      ['q1', { requestId: 'r1', sent: true }],
      ['q2', { requestId: 'r2', sent: false }],
    ])
    again.delete('q2')
    expect(again.get('q2')).toBeUndefined()
    expect(store.sweep()).toBe(1) // `old`
    expect(again.list().map((r) => r.id)).toEqual(['q1'])
  })
})
