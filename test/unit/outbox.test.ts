// The outbox against a real SQLite file in a temp dir.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { openDatabase, type Db } from '../../src/store/db.js'
import { Outbox, type Priority } from '../../src/store/outbox.js'
import { parseUpTopic } from '../../src/core/hub-topics.js'
import type { Uplink } from '../../src/core/types.js'

let dir: string
let db: Db
let writerThread = false
let opened: Outbox[] = []
const open = (maxBytes = 1 << 30, rpcRespTtlMs = 10_000): Outbox => {
  const o = new Outbox(db, { maxBytes, rpcRespTtlMs, writerThread })
  opened.push(o)
  return o
}

let seq = 0
function up(topic: string, payload = 'x', receivedAt = Date.now()): Uplink {
  const t = parseUpTopic(topic.replace('{id}', `m${++seq}`))
  if (!t) throw new Error(`bad topic ${topic}`)
  return { topic: t, payload: Buffer.from(payload), transport: 'mqtt', receivedAt }
}

function readAll(o: Outbox): { prio: Priority; topic: string }[] {
  return ([0, 1, 2] as const).flatMap((p) => o.read(p, 0, 1e6).map((r) => ({ prio: r.prio, topic: r.topic })))
}

function readIds(o: Outbox): number[] {
  return ([0, 1, 2] as const).flatMap((p) => o.read(p, 0, 1e6).map((r) => r.id)).sort((a, b) => a - b)
}

/** The outbox's running totals equal what the table holds (counted afresh, as a restart does). */
function expectTrueTotals(o: Outbox): void {
  const fresh = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000 })
  const { messages, bytes, byPriority } = fresh.stats()
  fresh.close()
  expect({ messages, bytes, byPriority }).toEqual({ messages: o.stats().messages, bytes: o.stats().bytes, byPriority: o.stats().byPriority })
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'outbox-'))
  db = openDatabase(dir)
})
afterEach(() => {
  for (const o of opened) o.close()
  opened = []
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

// The gateway commits on a writer thread (its own connection); the same behaviour on the calling thread.
describe.each([
  ['on the calling thread', false],
  ['on a writer thread', true],
])('outbox, committing %s', (_where, thread) => {
  beforeEach(() => {
    writerThread = thread
  })

  it('runs SQLite in WAL mode with synchronous=FULL, on the connection that commits too', async () => {
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal')
    expect(db.pragma('synchronous', { simple: true })).toBe(2)
    // On the writer thread that is a connection of its own: read back from it.
    expect(await open().durability()).toEqual({ thread, synchronous: 2, journalMode: 'wal' })
  })

  it('resolves enqueue only once the row is committed, and commits a burst in one group', async () => {
    const o = open()
    let commits = 0
    o.on('committed', () => commits++)
    const burst = Array.from({ length: 500 }, () => o.enqueue(up('upload_data/p/d/t/{id}')))
    // Nothing is readable before the group commit has run.
    expect(o.read(2, 0, 1000)).toHaveLength(0)
    await Promise.all(burst)
    expect(o.read(2, 0, 1000)).toHaveLength(500)
    expect(commits).toBe(1)
  })

  it('keeps rows across a reopen (what a restart after kill -9 sees) until acknowledged', async () => {
    const o = open()
    await Promise.all([o.enqueue(up('upload_data/p/d/t/{id}')), o.enqueue(up('update_status/p/d/{id}'))])
    db.close()
    db = openDatabase(dir)
    const o2 = open()
    expect(o2.stats().messages).toBe(2)
    const [row] = o2.read(1, 0, 10)
    o2.ack(row.id)
    await o2.flush()
    expect(o2.stats().messages).toBe(1)
    expect(readAll(o2).map((r) => r.prio)).toEqual([2])
  })

  it('reads by priority and keeps each device in order within a priority', async () => {
    const o = open()
    for (let i = 0; i < 3; i++) {
      void o.enqueue(up(`upload_data/p/a/t/{id}`, `a${i}`))
      void o.enqueue(up(`upload_data/p/b/t/{id}`, `b${i}`))
    }
    void o.enqueue(up('cmd_resp/p/a/reboot/r1/{id}'))
    await o.enqueue(up('update_status/p/b/{id}'))
    expect(readAll(o).map((r) => r.prio)).toEqual([0, 1, 2, 2, 2, 2, 2, 2])
    const a = o.read(2, 0, 100, 'p/a').map((r) => r.payload.toString())
    expect(a).toEqual(['a0', 'a1', 'a2'])
  })

  it('keeps the index of rows by device only while links read by device (northbound devices mode)', async () => {
    const index = (): unknown => db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'outbox_by_device'").pluck().get()
    expect(index()).toBeUndefined()
    const o = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread, byDevice: true })
    opened.push(o)
    expect(index()).toBe('outbox_by_device')
    await Promise.all([o.enqueue(up('upload_data/p/a/t/{id}', 'a0')), o.enqueue(up('upload_data/p/b/t/{id}', 'b0')), o.enqueue(up('upload_data/p/a/t/{id}', 'a1'))])
    const plan = db.prepare("EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE device = 'p/a' AND prio = 2 AND id > 0 ORDER BY id").all() as { detail: string }[]
    expect(plan.map((p) => p.detail).join()).toContain('outbox_by_device')
    expect(o.read(2, 0, 10, 'p/a').map((r) => r.payload.toString())).toEqual(['a0', 'a1'])
    // Opened for gateway mode again: gone.
    open()
    expect(index()).toBeUndefined()
  })

  it('evicts over quota: oldest telemetry first, then the middle class, replies last, and counts it', async () => {
    // Each row here costs 64 + topic + payload bytes; a quota of ~6 rows.
    const o = open(6 * 110)
    const dropped: { reason: string; count: number }[] = []
    o.on('dropped', (d: { reason: string; count: number }) => dropped.push(d))
    await o.enqueue(up('cmd_resp/p/d/c/r1/{id}', 'reply-1'))
    await o.enqueue(up('update_status/p/d/{id}', 'status-1'))
    for (let i = 0; i < 4; i++) await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${i}`))
    expect(o.stats().dropped.quota).toBe(0)
    await o.enqueue(up('upload_data/p/d/t/{id}', 'tele-4'))
    await o.enqueue(up('upload_data/p/d/t/{id}', 'tele-5'))
    const kept = () => ([0, 1, 2] as const).flatMap((p) => o.read(p, 0, 100).map((r) => r.payload.toString()))
    // The oldest telemetry went; the reply and the status stayed.
    expect(kept()[0]).toBe('reply-1')
    expect(kept()[1]).toBe('status-1')
    expect(kept()).not.toContain('tele-0')
    expect(kept()).toContain('tele-5')
    expect(o.stats().bytes).toBeLessThanOrEqual(o.maxBytes)
    // Only replies left to evict from: a burst of replies pushes out status and telemetry first.
    for (let i = 2; i < 8; i++) await o.enqueue(up('rpc_resp/p/d/c/r{id}/{id}'.replace('r{id}', `r${i}`), `reply-${i}`))
    expect(kept().every((p) => p.startsWith('reply-'))).toBe(true)
    const total = o.stats().dropped.quota
    expect(total).toBeGreaterThan(0)
    expect(dropped.reduce((n, d) => n + d.count, 0)).toBe(total)
    // The count survives a restart.
    db.close()
    db = openDatabase(dir)
    expect(open(6 * 110).stats().dropped.quota).toBe(total)
  })

  it('recognises an rpc_resp the hub stopped waiting for, and counts its drop', async () => {
    const o = open(1 << 30, 10_000)
    await o.enqueue(up('rpc_resp/p/d/c/r1/{id}', 'late', Date.now() - 11_000))
    await o.enqueue(up('rpc_resp/p/d/c/r2/{id}', 'fresh'))
    const rows = o.read(0, 0, 10)
    expect(rows.map((r) => o.isRpcRespExpired(r))).toEqual([true, false])
    await o.drop([rows[0].id], 'rpc_resp_expired')
    expect(o.stats().dropped.rpc_resp_expired).toBe(1)
    expect(o.read(0, 0, 10).map((r) => r.payload.toString())).toEqual(['fresh'])
  })

  it('does not evict rows on their way to the hub, counts them as leaving, and names the rows it evicts', async () => {
    const o = open(6 * 110)
    const evicted: number[][] = []
    o.on('evicted', (ids: number[]) => evicted.push(ids))
    let n = 0
    while (o.stats().bytes + 100 <= o.maxBytes) await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    expect(o.stats().dropped.quota).toBe(0)
    const [first, second] = o.read(2, 0, 2)
    o.sent(first.id)
    o.sent(second.id)
    const inFlight = o.stats().bytes / 6
    await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    // The two in flight are about to be freed: a new message is not dropped for their bytes (the
    // quota is passed by at most what is in flight, decision 0028).
    expect(o.stats().dropped.quota).toBe(0)
    expect(evicted.flat()).toEqual([])
    // Beyond what is in flight, the oldest rows not in flight go; the two in flight stay until the hub answers.
    for (let i = 0; i < 4 && o.stats().dropped.quota === 0; i++) await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    const kept = (): string[] => o.read(2, 0, 100).map((r) => r.payload.toString())
    expect(o.stats().dropped.quota).toBeGreaterThan(0)
    expect(kept().slice(0, 3)).toEqual(['tele-0', 'tele-1', 'tele-3'])
    expect(evicted.flat()).toHaveLength(o.stats().dropped.quota)
    expect(evicted.flat()).not.toContain(first.id)
    expect(evicted.flat()).not.toContain(second.id)
    expect(o.stats().bytes).toBeLessThanOrEqual(o.maxBytes + 2 * inFlight + 20)
    // Once the connection they were sent on is gone they are ordinary rows again, and count.
    o.unsent([first.id, second.id])
    await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    expect(kept()).not.toContain('tele-0')
    expect(o.stats().bytes).toBeLessThanOrEqual(o.maxBytes)
  })

  it('counts the rows a batch deletes anyway against the quota before it evicts anything', async () => {
    const o = open(6 * 110)
    let n = 0
    while (o.stats().bytes + 100 <= o.maxBytes) await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    const [first, second] = o.read(2, 0, 2)
    // Acknowledged (twice, as a resend can be) in the same batch as a row that would not fit otherwise.
    for (const id of [first.id, second.id, second.id]) o.ack(id)
    await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    expect(o.stats().dropped.quota).toBe(0)
    expect(o.read(2, 0, 100).map((r) => r.payload.toString())[0]).toBe('tele-2')
    expectTrueTotals(o)
  })

  it('never hands out a row the quota is evicting while that commit runs, nor evicts one taken meanwhile', async () => {
    const o = open(6 * 110)
    let n = 0
    while (o.stats().bytes + 100 <= o.maxBytes) await o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    await o.flush() // the last commit has settled: the next flush starts one at once
    const evicted: number[][] = []
    o.on('evicted', (ids: number[]) => evicted.push(ids))
    const arriving = o.enqueue(up('upload_data/p/d/t/{id}', `tele-${n++}`))
    // The commit that evicts the oldest row starts; on the writer thread it is in flight from here.
    void o.flush()
    // What the hub link reads meanwhile and publishes: the oldest row is being evicted, not offered.
    const [next] = o.read(2, 0, 1)
    expect(next.payload.toString()).toBe('tele-1')
    o.sent(next.id)
    await arriving
    const kept = o.read(2, 0, 100).map((r) => r.payload.toString())
    expect(kept[0], 'the row on its way to the hub stays').toBe('tele-1')
    expect(kept).not.toContain('tele-0')
    expect(o.stats().dropped.quota).toBe(1)
    expect(evicted.flat()).toHaveLength(1)
    expect(o.stats().bytes).toBeLessThanOrEqual(o.maxBytes)
  })

  // The deletions of a batch run as one statement (a range when the ids are a run): the totals
  // must still take off exactly the rows that were there.
  it('takes off the totals exactly the rows an acknowledgement deleted: twice-acked, already gone, across priorities', async () => {
    const o = open()
    const topics = ['cmd_resp/p/d/c/r1/{id}', 'update_status/p/d/{id}', 'upload_data/p/d/t/{id}']
    await Promise.all(Array.from({ length: 30 }, (_, i) => o.enqueue(up(topics[i % 3], 'x'.repeat(i)))))
    const ids = ([0, 1, 2] as const).flatMap((p) => o.read(p, 0, 100).map((r) => r.id)).sort((a, b) => a - b)
    expect(ids).toHaveLength(30)
    // A run of ids across the three priorities, one of them twice, and one gone already.
    o.ack(ids[0])
    await o.flush()
    expectTrueTotals(o)
    for (const id of [...ids.slice(0, 6), ids[3]]) o.ack(id)
    await o.flush()
    expectTrueTotals(o)
    expect(o.stats().messages).toBe(24)
    // As many ids as a run would have, but with a duplicate in place of ids[8]: ids[8] must stay.
    for (const id of [ids[6], ids[7], ids[7], ids[9]]) o.ack(id)
    await o.flush()
    expectTrueTotals(o)
    expect(o.stats().messages).toBe(21)
    expect(readIds(o)).toContain(ids[8])
    // A scattered set, duplicates and ids that never existed among them.
    for (const id of [ids[12], ids[20], ids[12], ids[29], ids[29] + 1000, ids[0]]) o.ack(id)
    await o.flush()
    expectTrueTotals(o)
    expect(o.stats().messages).toBe(18)
    expect(readIds(o)).toEqual(ids.filter((_, i) => i === 8 || i === 10 || i === 11 || (i > 12 && i < 29 && i !== 20)))
  })

  it('counts a drop only for the rows it deleted, by reason, and the totals stay exact', async () => {
    const o = open()
    await Promise.all(Array.from({ length: 10 }, (_, i) => o.enqueue(up('rpc_resp/p/d/c/r1/{id}', `r${i}`))))
    await Promise.all(Array.from({ length: 5 }, () => o.enqueue(up('upload_data/p/d/t/{id}'))))
    const ids = o.read(0, 0, 100).map((r) => r.id)
    const dropped: { reason: string; count: number }[] = []
    o.on('dropped', (d: { reason: string; count: number }) => dropped.push(d))
    // Acknowledged in the same batch as the drop names it: deleted once, as acknowledged, not counted as dropped.
    o.ack(ids[0])
    await o.drop([ids[0], ids[1], ids[2], ids[2]], 'rpc_resp_expired')
    expect(o.stats().dropped.rpc_resp_expired).toBe(2)
    expectTrueTotals(o)
    // A run of ids two of which are gone already.
    await o.drop(ids.slice(1, 6), 'rpc_resp_expired')
    expect(o.stats().dropped.rpc_resp_expired).toBe(5)
    expect(dropped).toEqual([
      { reason: 'rpc_resp_expired', count: 2 },
      { reason: 'rpc_resp_expired', count: 3 },
    ])
    expectTrueTotals(o)
    expect(o.stats().byPriority[0].messages).toBe(4)
    expect(o.stats().byPriority[2].messages).toBe(5)
    // The counter on disk agrees.
    db.close()
    db = openDatabase(dir)
    expect(open().stats().dropped.rpc_resp_expired).toBe(5)
  })

  it('deletes a whole drain of acknowledgements (thousands of consecutive ids) in one commit, exactly', async () => {
    const o = open()
    await Promise.all(Array.from({ length: 3000 }, (_, i) => o.enqueue(up(i % 100 === 0 ? 'update_status/p/d/{id}' : 'upload_data/p/d/t/{id}'))))
    const ids = ([0, 1, 2] as const).flatMap((p) => o.read(p, 0, 5000).map((r) => r.id)).sort((a, b) => a - b)
    // Acknowledged out of order, as PUBACKs of two priorities interleave.
    const acked = ids.slice(100, 2100)
    for (const id of [...acked.slice(1000), ...acked.slice(0, 1000)]) o.ack(id)
    await o.flush()
    expectTrueTotals(o)
    expect(o.stats().messages).toBe(1000)
    expect(readIds(o)).toEqual([...ids.slice(0, 100), ...ids.slice(2100)])
  })

  it('refuses new messages after close', async () => {
    const o = open()
    o.close()
    await expect(o.enqueue(up('upload_data/p/d/t/{id}'))).rejects.toThrow(/closed/)
  })

  it('commits what gathered while a commit was in flight, at close, before it returns', async () => {
    const o = open()
    const first = Array.from({ length: 50 }, () => o.enqueue(up('upload_data/p/d/t/{id}')))
    await o.flush()
    void Promise.all(first)
    // A commit in flight (on the writer thread) and more waiting behind it.
    const more = Array.from({ length: 50 }, () => o.enqueue(up('upload_data/p/d/t/{id}')))
    void o.flush()
    const later = Array.from({ length: 50 }, () => o.enqueue(up('update_status/p/d/{id}')))
    o.close()
    await Promise.all([...more, ...later])
    db.close()
    db = openDatabase(dir)
    expect(open().stats().messages).toBe(150)
  })
})

describe('outbox on a full disk', () => {
  beforeEach(() => {
    writerThread = false
  })

  it('reopens after a full disk only through probe(), never because one small commit fitted', async () => {
    const o = open()
    const events: string[] = []
    o.on('full', () => events.push('full'))
    o.on('writable', () => events.push('writable'))
    // Stand-in for ENOSPC: the first commit fails as SQLite reports a full disk.
    let fail = true
    const realTransaction = db.transaction.bind(db)
    db.transaction = ((fn: () => void) => {
      const tx = realTransaction(fn)
      return () => {
        if (fail) {
          fail = false
          throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })
        }
        return tx()
      }
    }) as typeof db.transaction
    await expect(o.enqueue(up('upload_data/p/d/t/{id}'))).rejects.toThrow(/disk is full/)
    expect(o.isFull).toBe(true)
    // The next commit succeeds (it is durable and resolves) but intake stays closed.
    await o.enqueue(up('upload_data/p/d/t/{id}'))
    expect(o.isFull).toBe(true)
    expect(events).toEqual(['full'])
    // Plenty of room in the temp dir: the probe reopens intake.
    expect(o.probe()).toBe(true)
    expect(o.isFull).toBe(false)
    expect(events).toEqual(['full', 'writable'])
  })
})
