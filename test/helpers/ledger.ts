// Bookkeeping for durability scenarios: which messages each test device sent, which of them the
// gateway PUBACKed, and whether what reached the hub matches (every PUBACKed MessageId present,
// per-device order kept, duplicates byte-identical). When something is missing, `explainMissing`
// asks the gateway (outbox, metrics) and the hub broker's own log where it was lost, so that a
// gateway bug is never confused with a hub-broker one (or the other way round).
import type { MqttClient } from 'mqtt'
import { newMessageId } from './device.js'
import type { GatewayProcess } from './gateway-process.js'
import type { HubBroker, RecordedMessage } from './hub-broker.js'
import { metricValue } from './metrics.js'

export interface TestDevice {
  productId: string
  deviceId: string
  secret: string
}

export interface SentMessage {
  device: string
  /** Messages of one stream keep their order end to end (the outbox reorders only across priorities). */
  stream: string
  seq: number
  topic: string
  messageId: string
  payload: Buffer
  /** The gateway answered PUBACK: from then on the message must never be lost. */
  acked: boolean
}

/** Builds a PROTOCOL.md up topic for device `{p}/{d}` and a MessageId. */
export type TopicMaker = (device: string, messageId: string) => string

export const uploadData =
  (dataType: string): TopicMaker =>
  (device, id) =>
    `upload_data/${device}/${dataType}/${id}`

/** `count` devices `{productId}/{prefix}00..`, with their secrets. */
export function testDevices(productId: string, prefix: string, count: number): TestDevice[] {
  return Array.from({ length: count }, (_, i) => {
    const deviceId = `${prefix}${String(i).padStart(2, '0')}`
    return { productId, deviceId, secret: `secret-${deviceId}` }
  })
}

export interface MessageShape {
  /** Name of the stream (default 'telemetry'); sequence numbers count per device and stream. */
  stream?: string
  /** default upload_data with DataType `seq` */
  topic?: TopicMaker
  /** extra payload bytes */
  padBytes?: number
}

export class Ledger {
  readonly byId = new Map<string, SentMessage>()
  private readonly nextSeq = new Map<string, number>()

  /** A new message for `dev` with the next sequence number of its stream; not sent yet. */
  next(dev: TestDevice, shape: MessageShape = {}): SentMessage {
    const device = `${dev.productId}/${dev.deviceId}`
    const stream = shape.stream ?? 'telemetry'
    const key = `${device} ${stream}`
    const seq = this.nextSeq.get(key) ?? 0
    this.nextSeq.set(key, seq + 1)
    const messageId = newMessageId()
    const m: SentMessage = {
      device,
      stream,
      seq,
      messageId,
      topic: (shape.topic ?? uploadData('seq'))(device, messageId),
      payload: Buffer.from(JSON.stringify({ device, stream, seq, pad: 'x'.repeat(shape.padBytes ?? 0) })),
      acked: false,
    }
    this.byId.set(messageId, m)
    return m
  }

  /** Every message of one stream, in sending order. */
  stream(stream: string): SentMessage[] {
    return [...this.byId.values()].filter((m) => m.stream === stream)
  }

  acked(): SentMessage[] {
    return [...this.byId.values()].filter((m) => m.acked)
  }

  get ackedCount(): number {
    let n = 0
    for (const m of this.byId.values()) if (m.acked) n++
    return n
  }

  /** The ledger's message a recorded hub message is a copy of (by MessageId), if any. */
  match(r: RecordedMessage): SentMessage | undefined {
    const id = r.topic.slice(r.topic.lastIndexOf('/') + 1)
    return this.byId.get(id)
  }
}

export interface SequenceOptions extends MessageShape {
  count: number
  /** PUBACKs awaited at most at once (1 = publish, wait, publish ...). */
  window: number
  /** Checked before each publish: stop sending when it returns true. */
  stop?: () => boolean
}

/**
 * Publish `count` QoS 1 upload_data messages from one device, keeping at most `window` waiting for
 * their PUBACK; marks each PUBACKed one in the ledger. Stops at the first failure or when the
 * connection closes; publishes still waiting settle when the client is ended (`end(true)`).
 * Resolves with the number of messages PUBACKed.
 */
export async function publishSequence(client: MqttClient, dev: TestDevice, ledger: Ledger, o: SequenceOptions): Promise<number> {
  const waiting = new Set<Promise<void>>()
  let failed = false
  let closed = false
  let acked = 0
  const onClose = (): void => void (closed = true)
  client.on('close', onClose)
  try {
    for (let i = 0; i < o.count; i++) {
      if (failed || closed || !client.connected || o.stop?.()) break
      const m = ledger.next(dev, o)
      const p: Promise<void> = client.publishAsync(m.topic, m.payload, { qos: 1 }).then(
        () => {
          m.acked = true
          acked++
        },
        () => void (failed = true),
      )
      waiting.add(p)
      void p.finally(() => waiting.delete(p))
      if (waiting.size >= o.window) await Promise.race(waiting)
    }
    await Promise.all(waiting)
  } finally {
    client.off('close', onClose)
  }
  return acked
}

export interface DeliveryReport {
  /** PUBACKed by the gateway, never seen at the hub. */
  missing: SentMessage[]
  /** Distinct ledger messages seen at the hub (PUBACKed or not). */
  arrived: Set<string>
  /** Copies of one MessageId that differ in topic or payload, or differ from what the device sent. */
  corrupt: string[]
  /** A device's message first seen at the hub before an earlier one of the same device. */
  reordered: string[]
  /** Hub messages that are copies of an earlier one (same MessageId). */
  duplicates: number
}

/** Compare what the hub recorder got (in arrival order) with the ledger. */
export function checkDelivery(ledger: Ledger, recorded: readonly RecordedMessage[]): DeliveryReport {
  const arrived = new Set<string>()
  const corrupt: string[] = []
  const reordered: string[] = []
  const lastSeq = new Map<string, number>()
  let duplicates = 0
  for (const r of recorded) {
    const m = ledger.match(r)
    if (!m) continue
    if (r.topic !== m.topic || !r.payload.equals(m.payload)) {
      corrupt.push(`${m.messageId}: sent ${m.topic} ${m.payload.toString()}, hub got ${r.topic} ${r.payload.toString()}`)
    }
    if (arrived.has(m.messageId)) {
      duplicates++
      continue
    }
    arrived.add(m.messageId)
    const key = `${m.device} ${m.stream}`
    const last = lastSeq.get(key) ?? -1
    if (m.seq < last) reordered.push(`${key}: seq ${m.seq} first arrived after seq ${last}`)
    else lastSeq.set(key, m.seq)
  }
  const missing = ledger.acked().filter((m) => !arrived.has(m.messageId))
  return { missing, arrived, corrupt, reordered, duplicates }
}

export interface GatewayCounts {
  outboxMessages: number
  droppedQuota: number
  droppedExpired: number
  /** iothub_edge_northbound_published_total: messages the hub PUBACKed (this run of the process). */
  hubAcked: number
}

export async function gatewayCounts(gateway: GatewayProcess): Promise<GatewayCounts> {
  const outbox = await gateway.api<{ messages: number; dropped: { quota: number; rpc_resp_expired: number } }>('GET', '/api/outbox')
  const metrics = await gateway.api<string>('GET', '/metrics')
  return {
    outboxMessages: outbox.body.messages,
    droppedQuota: outbox.body.dropped.quota,
    droppedExpired: outbox.body.dropped.rpc_resp_expired,
    hubAcked: metricValue(metrics.body, 'iothub_edge_northbound_published_total'),
  }
}

/**
 * Wait until every PUBACKed ledger message has reached the hub. Gives up early once the gateway's
 * outbox is empty and nothing new arrived for `quietMs` (waiting longer cannot help then).
 */
export async function awaitDelivery(
  ledger: Ledger,
  recorded: readonly RecordedMessage[],
  gateway: GatewayProcess,
  o: { timeoutMs: number; quietMs?: number },
): Promise<DeliveryReport> {
  const deadline = Date.now() + o.timeoutMs
  const quietMs = o.quietMs ?? 3_000
  let lastCount = -1
  let lastChange = Date.now()
  for (;;) {
    const report = checkDelivery(ledger, recorded)
    if (report.missing.length === 0 || Date.now() > deadline) return report
    if (recorded.length !== lastCount) {
      lastCount = recorded.length
      lastChange = Date.now()
    } else if (Date.now() - lastChange > quietMs && gateway.running) {
      const counts = await gatewayCounts(gateway).catch(() => undefined)
      if (counts?.outboxMessages === 0) return report
    }
    await new Promise((r) => setTimeout(r, 200))
  }
}

/**
 * Where did the missing messages go? Asks the gateway (outbox depth, hub PUBACK count) and the hub
 * broker's log (did the hub receive them from the gateway? did it send them on to the recorder?).
 */
export async function explainMissing(
  report: DeliveryReport,
  ctx: {
    gateway: GatewayProcess
    hub: HubBroker
    recorded: readonly RecordedMessage[]
    recorderClientId?: string
    /** The gateway process ran through the whole scenario, so its PUBACK counter covers every message (no restart). */
    oneGatewayRun?: boolean
  },
): Promise<string> {
  if (report.missing.length === 0) return 'nothing missing'
  const lines: string[] = [`${report.missing.length} PUBACKed message(s) never reached the hub recorder`]
  const counts = ctx.gateway.running ? await gatewayCounts(ctx.gateway).catch((e: Error) => e) : new Error('gateway not running')
  const recordedDistinct = new Set(ctx.recorded.map((r) => r.topic)).size
  if (counts instanceof Error) {
    lines.push(`gateway counts unavailable: ${counts.message}`)
  } else {
    lines.push(
      `gateway: outbox holds ${counts.outboxMessages}, hub PUBACKed ${counts.hubAcked} (this process run), dropped quota=${counts.droppedQuota} rpc_resp_expired=${counts.droppedExpired}; recorder got ${recordedDistinct} distinct topics`,
    )
    const expected = recordedDistinct + report.missing.length
    if (counts.outboxMessages > 0) {
      lines.push('=> the gateway still holds undelivered messages in its outbox: a gateway (bridge) problem, not a loss at the hub broker')
    } else if (ctx.oneGatewayRun && counts.hubAcked >= expected) {
      lines.push(
        `=> the hub broker PUBACKed ${counts.hubAcked} messages to the gateway, at least the ${expected} the recorder should hold, but the recorder got ${recordedDistinct}: lost inside the hub broker, not by the gateway`,
      )
    } else if (ctx.oneGatewayRun) {
      lines.push(`=> the outbox is empty but the hub PUBACKed only ${counts.hubAcked} of at least ${expected}: the gateway deleted messages the hub never acknowledged (a gateway loss)`)
    }
  }
  // Mosquitto (log_type all) logs every PUBLISH it receives and sends, with the topic:
  // "Received PUBLISH from <client> (d0, q1, r0, m7, '<topic>', ... (n bytes))", "Sending PUBLISH to <client> (...)".
  const receivedAtHub = new Set<string>()
  const sentByHub = new Set<string>()
  for (const m of (await ctx.hub.log()).matchAll(/(Received|Sending) PUBLISH (?:from|to) (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)'/g)) {
    if (m[1] === 'Received') receivedAtHub.add(m[3])
    else if (ctx.recorderClientId === undefined || m[2] === ctx.recorderClientId) sentByHub.add(m[3])
  }
  let atHubNotForwarded = 0
  let forwardedNotRecorded = 0
  let neverAtHub = 0
  const samples: string[] = []
  for (const m of report.missing) {
    const received = receivedAtHub.has(m.topic)
    const sent = sentByHub.has(m.topic)
    if (received && !sent) atHubNotForwarded++
    if (received && sent) forwardedNotRecorded++
    if (!received) neverAtHub++
    if (samples.length < 5) {
      samples.push(`  ${m.device} seq ${m.seq} ${m.topic}: hub log ${received ? 'has' : 'lacks'} its PUBLISH from the gateway, ${sent ? 'has' : 'lacks'} a PUBLISH to the recorder`)
    }
  }
  if (atHubNotForwarded) {
    lines.push(
      `=> ${atHubNotForwarded} reached the hub broker (its log shows the gateway's PUBLISH) but were never sent on to the recorder: a hub-broker loss (Debian's Mosquitto 2.0.11 is known to lose acknowledged QoS 1 messages under many concurrent publishers; fixed in 2.0.13), not a gateway loss`,
    )
  }
  if (forwardedNotRecorded) {
    lines.push(`=> ${forwardedNotRecorded} were sent on to the recorder by the hub broker but the recorder never got them: a test-client problem`)
  }
  if (neverAtHub) {
    lines.push(
      `=> ${neverAtHub} never reached the hub broker at all${!(counts instanceof Error) && counts.outboxMessages === 0 ? ' although the outbox is empty: the gateway dropped PUBACKed messages (a gateway loss)' : ''}`,
    )
  }
  lines.push(...samples)
  return lines.join('\n')
}

/** The assertion message for a DeliveryReport: empty when all is well. */
export function deliveryProblems(report: DeliveryReport): string[] {
  const p: string[] = []
  if (report.corrupt.length) p.push(`${report.corrupt.length} copies differ from what the device sent:\n  ${report.corrupt.slice(0, 5).join('\n  ')}`)
  if (report.reordered.length) p.push(`${report.reordered.length} out of order:\n  ${report.reordered.slice(0, 5).join('\n  ')}`)
  return p
}
