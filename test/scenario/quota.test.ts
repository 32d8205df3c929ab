// The outbox quota and rpc_resp expiry (DESIGN.md, "Durability rules"): the one sanctioned loss.
// With a small `store.outbox.maxBytes` and the hub down, eviction picks by priority (oldest bulk
// telemetry first, then the middle class, replies last), is counted in /api/outbox and /metrics,
// and every message is accounted for: arrived at the hub + dropped == sent. An rpc_resp older than
// `store.outbox.rpcRespTtlSeconds` is dropped instead of sent late, and counted as such.
import type { MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import {
  checkDelivery,
  deliveryProblems,
  gatewayCounts,
  Ledger,
  publishSequence,
  uploadData,
  type SentMessage,
  type TopicMaker,
} from '../helpers/ledger.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'quota', deviceId: 'q1', secret: 'secret-q1' }
const MAX_BYTES = 64 * 1024

const cmdResp: TopicMaker = (device, id) => `cmd_resp/${device}/set_interval/${newMessageId()}/${id}`
const rpcResp: TopicMaker = (device, id) => `rpc_resp/${device}/read_now/${newMessageId()}/${id}`
const status: TopicMaker = (device, id) => `update_status/${device}/${id}`
const telemetry = uploadData('temperature')

interface OutboxBody {
  messages: number
  bytes: number
  maxBytes: number
  byPriority: Record<'0' | '1' | '2', { messages: number; bytes: number }>
  dropped: { quota: number; rpc_resp_expired: number }
}

describe('outbox quota and rpc_resp expiry', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let client: MqttClient | undefined
  let ledger: Ledger

  beforeEach(async ({ onTestFailed }) => {
    ledger = new Ledger()
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
    await hub.start()
    // Everything the gateway publishes, its own messages included: every message is counted.
    recorder = await hub.subscribeAll('#', { clientId: 'hub-recorder-quota' })
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [dev],
      store: { outbox: { maxBytes: MAX_BYTES, rpcRespTtlSeconds: 1 } },
      log: { level: 'info' },
    })
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 15_000, 'northbound connected')
    await hub.stop()
    await gateway.waitForHealth((h) => !h.northbound.connected, 15_000, 'northbound disconnected')
    client = await connectDevice(gateway.externalUrl, dev)
  })

  afterEach(async () => {
    await client?.endAsync(true)
    client = undefined
    await gateway?.close()
    await hub?.close()
  })

  async function send(stream: string, topic: TopicMaker, count: number, padBytes = 0): Promise<void> {
    const acked = await publishSequence(client!, dev, ledger, { stream, topic, count, window: 10, padBytes })
    // Eviction is not refusal: the gateway acknowledges everything it takes in.
    expect(acked, `${stream}: PUBACKed`).toBe(count)
  }

  async function outbox(): Promise<OutboxBody> {
    return (await gateway.api<OutboxBody>('GET', '/api/outbox')).body
  }

  /** Hub down: disconnect the device (its $connection event joins the outbox) and wait until that is committed. */
  async function disconnectDevice(): Promise<void> {
    const count = (o: OutboxBody): number => o.dropped.quota + o.messages
    const before = count(await outbox())
    await client!.endAsync()
    client = undefined
    const deadline = Date.now() + 5_000
    while (count(await outbox()) === before) {
      if (Date.now() > deadline) throw new Error('the device disconnect never reached the outbox')
      await sleep(50)
    }
  }

  /**
   * Oldest first: the messages of `stream` evicted during the outage (`droppedBefore` of them at most)
   * are its oldest ones, a prefix of the stream. Rows that came in once the hub was back (the
   * gateway's own status report) may evict `later` more: the oldest rows not already on their way.
   */
  function expectOldestLost(lost: SentMessage[], later: number): void {
    const seqs = new Set(lost.map((m) => m.seq))
    let prefix = 0
    while (seqs.has(prefix)) prefix++
    expect(prefix, 'evicted messages form a prefix of the stream (oldest first)').toBeGreaterThan(0)
    expect(lost.length - prefix, `evicted out of order (lost seqs ${[...seqs].sort((a, b) => a - b).join(',')})`).toBeLessThanOrEqual(later)
  }

  /** Hub back; wait until the outbox is empty and the recorder has stopped receiving. */
  async function hubBackAndDrain(): Promise<void> {
    await hub.start()
    await gateway.waitForHealth((h) => h.northbound.connected && h.outbox.messages === 0, 30_000, 'outbox drained')
    let seen = -1
    while (recorder.messages.length !== seen) {
      seen = recorder.messages.length
      await sleep(300)
    }
  }

  /**
   * Every message about the device that entered the outbox (what it sent, plus the gateway's
   * `connectionEvents` $connection reports for it) is at the hub or counted as dropped.
   */
  async function expectEveryMessageAccountedFor(connectionEvents: number): Promise<void> {
    const c = await gatewayCounts(gateway)
    const dropped = c.droppedQuota + c.droppedExpired
    // The `$tags`/`$shadow` requests the gateway makes for a connected device when its hub link
    // comes back are the gateway's, not taken in from the device (this device never sends them).
    const asked = (t: string): boolean => /^get\/[^/]+\/[^/]+\/\$(tags|shadow)\//.test(t)
    const atHub = new Set(recorder.messages.filter((m) => m.topic.includes(`/${dev.productId}/${dev.deviceId}/`) && !asked(m.topic)).map((m) => m.topic)).size
    const taken = ledger.byId.size + connectionEvents
    expect({ atHub, dropped, sum: atHub + dropped }, 'at the hub + dropped = taken in').toEqual({ atHub, dropped, sum: taken })
  }

  function arrivedOf(stream: string): { arrived: SentMessage[]; lost: SentMessage[] } {
    const report = checkDelivery(ledger, recorder.messages)
    const all = ledger.stream(stream)
    return { arrived: all.filter((m) => report.arrived.has(m.messageId)), lost: all.filter((m) => !report.arrived.has(m.messageId)) }
  }

  it('evicts the oldest telemetry first, keeps replies and status, and counts every drop', async () => {
    await send('replies', cmdResp, 10)
    await send('status', status, 10)
    await send('telemetry', telemetry, 1_000, 100)
    await disconnectDevice()

    const full = await outbox()
    expect(full.dropped.quota).toBeGreaterThan(0)
    expect(full.bytes).toBeLessThanOrEqual(MAX_BYTES)
    // Only telemetry went: the 10 replies, the 10 status reports and both $connection events stay.
    expect(full.byPriority['0'].messages).toBe(10)
    expect(full.byPriority['1'].messages).toBe(12)
    expect(full.byPriority['2'].messages).toBe(1_000 - full.dropped.quota)
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_outbox_dropped_total', { reason: 'quota' })).toBe(full.dropped.quota)

    await hubBackAndDrain()
    const report = checkDelivery(ledger, recorder.messages)
    expect(deliveryProblems(report)).toEqual([])
    expect(arrivedOf('replies').lost).toEqual([])
    expect(arrivedOf('status').lost).toEqual([])
    const t = arrivedOf('telemetry')
    const c = await gatewayCounts(gateway)
    // Every drop was telemetry: telemetry at the hub + dropped (quota) = telemetry sent.
    expect(t.lost.length).toBe(c.droppedQuota)
    expect(t.arrived.length + c.droppedQuota).toBe(1_000)
    expect(t.lost.map((m) => m.seq)).toContain(0)
    expect(t.arrived.map((m) => m.seq)).toContain(999)
    expectOldestLost(t.lost, c.droppedQuota - full.dropped.quota)
    await expectEveryMessageAccountedFor(2)
  }, 60_000)

  it('once no telemetry is left, evicts the oldest of the middle class and keeps every reply', async () => {
    await send('replies', cmdResp, 10)
    await send('telemetry', telemetry, 50, 100)
    // Newer than the telemetry, yet the telemetry goes first; then the oldest status reports.
    await send('status', status, 600, 100)
    await disconnectDevice()

    const full = await outbox()
    expect(full.bytes).toBeLessThanOrEqual(MAX_BYTES)
    expect(full.byPriority['2'].messages).toBe(0)
    expect(full.byPriority['0'].messages).toBe(10)
    expect(full.dropped.quota).toBeGreaterThan(50)
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_outbox_dropped_total', { reason: 'quota' })).toBe(full.dropped.quota)

    await hubBackAndDrain()
    expect(deliveryProblems(checkDelivery(ledger, recorder.messages))).toEqual([])
    expect(arrivedOf('replies').lost).toEqual([])
    expect(arrivedOf('telemetry').arrived).toEqual([])
    const st = arrivedOf('status')
    const c = await gatewayCounts(gateway)
    expect(st.lost.map((m) => m.seq)).toContain(0)
    expect(st.arrived.map((m) => m.seq)).toContain(599)
    expectOldestLost(st.lost, c.droppedQuota - full.dropped.quota)
    await expectEveryMessageAccountedFor(2)
  }, 60_000)

  it('drops an rpc_resp older than rpcRespTtlSeconds instead of sending it, and counts it', async () => {
    await send('late rpc', rpcResp, 5)
    await send('replies', cmdResp, 5)
    await sleep(1_500) // past store.outbox.rpcRespTtlSeconds = 1

    await hubBackAndDrain()
    // The hub stopped waiting long ago: the late rpc_resp never goes out; a fresh one does.
    await send('fresh rpc', rpcResp, 1)
    await recorder.waitFor((m) => m.topic === ledger.stream('fresh rpc')[0].topic, 5_000, 'the fresh rpc_resp')
    expect(arrivedOf('late rpc').arrived).toEqual([])
    expect(arrivedOf('replies').lost).toEqual([])

    const c = await gatewayCounts(gateway)
    expect(c.droppedExpired).toBe(5)
    expect(c.droppedQuota).toBe(0)
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_outbox_dropped_total', { reason: 'rpc_resp_expired' })).toBe(5)
    await gateway.waitForHealth((h) => h.outbox.messages === 0, 10_000, 'outbox drained')
    await expectEveryMessageAccountedFor(1)
  }, 60_000)
})
