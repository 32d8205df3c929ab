// broker.db read back by a new BrokerSessionStore, as after a restart (the abstract suite only ever
// uses one instance): what a persistent session had is all there, in order, with the labels the
// broker's forwarding decisions need; what a clean session had in flight is not kept; and a change
// the broker was told is durable is on disk without a clean close (the file is copied while open,
// as a kill -9 would leave it).
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BrokerSessionStore, type BrokerPacket, type PacketMarks } from '../../src/store/broker-sessions.js'

const broker = { id: 'run-1', counter: 0 }
let dir: string
let open: BrokerSessionStore[] = []

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'broker-db-'))
})
afterEach(() => {
  for (const s of open) s.close()
  open = []
  rmSync(dir, { recursive: true, force: true })
})

function marks(seen: Map<string, string> = new Map()): PacketMarks & { seen: Map<string, string> } {
  return {
    seen,
    of: (p) => (String(p.payload).startsWith('secret') ? 'local' : undefined),
    ofClient: (c) => `device:${c.id}`,
    heldElsewhere: () => false,
    restore: (p, mark) => void seen.set(String(p.topic), mark),
  }
}

async function store(file = path.join(dir, 'broker.db'), m: PacketMarks = marks(), b = broker): Promise<BrokerSessionStore> {
  const s = new BrokerSessionStore(file)
  open.push(s)
  s.setMarks(m)
  await s.setup(b)
  return s
}

/** A copy of broker.db (with its WAL) as it is on disk right now: what a kill -9 would leave. */
function crashCopy(): string {
  const to = path.join(dir, 'crash')
  rmSync(to, { recursive: true, force: true })
  const file = path.join(to, 'broker.db')
  mkdirSync(to)
  for (const suffix of ['', '-wal']) if (existsSync(path.join(dir, 'broker.db' + suffix))) copyFileSync(path.join(dir, 'broker.db' + suffix), file + suffix)
  return file
}

const publish = (topic: string, payload: string, qos = 1, brokerCounter = 1): BrokerPacket => ({ cmd: 'publish', topic, payload: Buffer.from(payload), qos, retain: false, dup: false, brokerId: broker.id, brokerCounter })

describe('BrokerSessionStore after a restart', () => {
  it('has the sessions, queues, retained messages and wills it was told about, durable without a clean close', async () => {
    const s = await store()
    const dev = { id: 'lamp/a/1' }
    await s.addSubscriptions(dev, [
      { topic: 'cmd/lamp/a/+/+/+/#', qos: 1 },
      { topic: 'tags/lamp/night/cmd/+/+/+/#', qos: 2 },
    ])
    await s.outgoingEnqueueCombi([{ clientId: dev.id, qos: 1 }], publish('cmd/lamp/a/x/json/1', 'one', 2, 1))
    await s.outgoingEnqueueCombi([{ clientId: dev.id, qos: 1 }], publish('cmd/lamp/a/x/json/2', 'secret two', 1, 2))
    await s.storeRetained({ ...publish('site/config', 'v1', 0, 3), retain: true })
    await s.putWill(dev, { cmd: 'publish', topic: 'upload_data/lamp/a/gone/1', payload: Buffer.from('bye'), qos: 1, retain: false })
    await s.incomingStorePacket({ id: dev.id, clean: false }, { ...publish('upload_data/lamp/a/t/9', 'q2', 2), messageId: 9 })
    await s.incomingStorePacket({ id: 'tool', clean: true }, { ...publish('site/x', 'q2', 2), messageId: 4 })

    const seen = new Map<string, string>()
    const after = await store(crashCopy(), marks(seen), { id: 'run-2', counter: 0 })
    expect(await after.subscriptionsByClient(dev)).toEqual([
      { topic: 'cmd/lamp/a/+/+/+/#', qos: 1 },
      { topic: 'tags/lamp/night/cmd/+/+/+/#', qos: 2 },
    ])
    expect((await after.subscriptionsByTopic('tags/lamp/night/cmd/dim/json/7')).map((x) => (x as { clientId: string }).clientId)).toEqual([dev.id])
    const queued: BrokerPacket[] = []
    for await (const p of after.outgoingStream(dev)) queued.push(p as BrokerPacket)
    // In order, at the QoS of the subscription they were queued for, the payload as it was.
    expect(queued.map((p) => [p.topic, String(p.payload), p.qos, p.brokerId, p.brokerCounter])).toEqual([
      ['cmd/lamp/a/x/json/1', 'one', 1, 'run-1', 1],
      ['cmd/lamp/a/x/json/2', 'secret two', 1, 'run-1', 2],
    ])
    expect(seen.get('cmd/lamp/a/x/json/2')).toBe('local')
    expect(seen.get('upload_data/lamp/a/gone/1')).toBe('device:lamp/a/1')
    const retained: BrokerPacket[] = []
    for await (const p of after.createRetainedStream('site/#')) retained.push(p as BrokerPacket)
    expect(retained.map((p) => String(p.payload))).toEqual(['v1'])
    const wills: BrokerPacket[] = []
    for await (const w of after.streamWill({ 'run-2': true })) wills.push(w as BrokerPacket)
    expect(wills.map((w) => [w.clientId, w.brokerId, String(w.payload)])).toEqual([[dev.id, 'run-1', 'bye']])
    expect(String((await after.incomingGetPacket(dev, { messageId: 9 })).payload)).toBe('q2')
    // A clean session's QoS 2 state ends with its connection: not kept.
    await expect(after.incomingGetPacket({ id: 'tool' }, { messageId: 4 })).rejects.toThrow()
    expect(after.counts()).toEqual({ subscriptions: 2, clients: 1, queued: 2, retained: 1, wills: 1, overflowing: 0 })
  })

  it('forgets what was acknowledged, cleaned or unsubscribed (written with the next commit at the latest)', async () => {
    const s = await store()
    const dev = { id: 'lamp/b/1' }
    await s.addSubscriptions(dev, [{ topic: 'cmd/lamp/b/+/+/+/#', qos: 1 }, { topic: 'tags/lamp/t/cmd/+/+/+/#', qos: 1 }])
    await s.outgoingEnqueueCombi([{ clientId: dev.id }], publish('cmd/lamp/b/x/json/1', 'one', 1, 1))
    await s.outgoingEnqueueCombi([{ clientId: dev.id }], publish('cmd/lamp/b/x/json/2', 'two', 1, 2))
    await s.outgoingUpdate(dev, { ...publish('cmd/lamp/b/x/json/1', 'one', 1, 1), messageId: 7 })
    expect((await s.outgoingClearMessageId(dev, { messageId: 7 }))?.topic).toBe('cmd/lamp/b/x/json/1')
    await s.removeSubscriptions(dev, ['tags/lamp/t/cmd/+/+/+/#'])
    await s.storeRetained({ ...publish('site/a', 'x', 0, 3), retain: true })
    await s.storeRetained({ ...publish('site/a', '', 0, 4), retain: true })
    s.flush()

    const after = await store(crashCopy())
    expect((await after.subscriptionsByClient(dev)).map((x) => x.topic)).toEqual(['cmd/lamp/b/+/+/+/#'])
    const queued: BrokerPacket[] = []
    for await (const p of after.outgoingStream(dev)) queued.push(p as BrokerPacket)
    expect(queued.map((p) => p.topic)).toEqual(['cmd/lamp/b/x/json/2'])
    expect(after.counts().retained).toBe(0)
  })
})
