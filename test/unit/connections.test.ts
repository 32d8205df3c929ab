// The connection table's writes join the outbox's group commits (no fsync of their own on the event
// loop): what a device's connect and disconnect wrote is in the table once that commit is back, on
// the calling thread and on the writer thread alike, and a connection left open is found stale by
// the next start.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { Outbox } from '../../src/store/outbox.js'
import { ConnectionStore } from '../../src/store/connections.js'

describe.each([
  ['on the calling thread', false],
  ['on a writer thread', true],
])('connection records committed with the outbox, %s', (_where, writerThread) => {
  let dir: string
  let db: Db
  let outbox: Outbox

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'connections-'))
    db = openDatabase(dir)
    outbox = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000, writerThread })
  })
  afterEach(() => {
    outbox.close()
    db.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const session = (clientId: string, deviceId: string, connectedAt: number) =>
    ({ clientId, productId: 'p', deviceId, transport: 'mqtt', ipaddress: '127.0.0.1', keepalive: 60, protoVer: 4, connectedAt }) as const

  it('records connects and disconnects with the next commit, and a connection left open is stale at the next start', async () => {
    const connections = new ConnectionStore(db, outbox)
    connections.connected(session('c1', 'd1', 1_000))
    connections.connected(session('c2', 'd2', 2_000))
    await outbox.barrier()
    expect(connections.list().map((c) => [c.clientId, c.connected, c.connectedAt, c.disconnectAt])).toEqual([
      ['c1', true, 1_000, null],
      ['c2', true, 2_000, null],
    ])
    connections.disconnected('c1', 3_000)
    await outbox.barrier()
    expect(connections.list().find((c) => c.clientId === 'c1')).toMatchObject({ connected: false, disconnectAt: 3_000, ipaddress: '127.0.0.1', protoVer: 4 })
    // The next start (a connection of its own, as the CLI's): c2 never closed.
    const next = new ConnectionStore(db)
    expect(next.closeStale(4_000).map((c) => c.clientId)).toEqual(['c2'])
    expect(next.list().every((c) => !c.connected)).toBe(true)
  })
})
