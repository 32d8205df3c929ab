// The gateway is itself a device of the hub (DESIGN.md "Northbound modes"): it reports its own
// update_status (version, uptime, outbox, children online) on every hub connection and every five
// minutes, measures its clock against the hub's with the same `$ntp` exchange a device uses, and,
// on every hub connection, asks `$tags`/`$shadow` on behalf of the children that cannot ask
// themselves right now.
import type { Logger } from './log.js'
import { RateLimitedLog } from './log.js'
import type { Metrics } from './metrics.js'
import type { Command, DeviceRef, Uplink } from './types.js'
import type { HubClock } from './clock.js'
import { parseJsonObject } from './shadow-doc.js'
import { newMessageId } from './message-id.js'
import { formatUpTopic } from './hub-topics.js'
import { VERSION } from './version.js'
import type { OutboxStats } from '../store/outbox.js'
import type { Device } from '../store/devices.js'

const STATUS_INTERVAL_MS = 5 * 60_000
const NTP_INTERVAL_MS = 10 * 60_000

/** What the core needs of the hub link, and nothing more. */
export interface HubPort {
  isConnected(): boolean
  /** Publish on the gateway's own link, outside the outbox; false when not connected. */
  publishDirect(topic: string, payload: Buffer): boolean
  /** Bring the hub subscriptions in line with what is wanted now (tag filters changed). */
  resubscribe(): void
}

export interface GatewayDeviceDeps {
  identity: DeviceRef
  hub: HubPort
  clock: HubClock
  metrics: Metrics
  log: Logger
  uplink: (up: Uplink) => Promise<void>
  outboxStats: () => OutboxStats
  children: () => readonly Device[]
  onlineCount: () => number
  /** Children whose `$tags`/`$shadow` the gateway asks for on a hub connection. */
  asksFor: (device: Device) => boolean
  /** Further parts of the status a service adds (the OTA relay's own downloads), by key. */
  statusParts?: () => Record<string, unknown>
}

export class GatewayDevice {
  private readonly startedAt = Date.now()
  private readonly timers: NodeJS.Timeout[] = []
  private readonly warn: RateLimitedLog

  constructor(private readonly d: GatewayDeviceDeps) {
    this.warn = new RateLimitedLog(d.log)
  }

  is(device: DeviceRef): boolean {
    return device.productId === this.d.identity.productId && device.deviceId === this.d.identity.deviceId
  }

  start(): void {
    this.timers.push(setInterval(() => void this.reportStatus(), STATUS_INTERVAL_MS).unref())
    this.timers.push(setInterval(() => this.probeHubClock(), NTP_INTERVAL_MS).unref())
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t)
  }

  /** The gateway's own link (re)connected. */
  hubConnected(): void {
    void this.reportStatus()
    this.askForChildrenState()
    // A few probes right away: the clock filter keeps the one with the shortest round trip.
    for (let i = 0; i < 4; i++) setTimeout(() => this.probeHubClock(), i * 250).unref()
  }

  /** A command to the gateway itself: today only the hub's `$set_ntp` answers to its probes. */
  command(cmd: Command): void {
    if (cmd.type === 'cmd' && cmd.name === '$set_ntp') this.d.clock.answer(parseJsonObject(cmd.payload))
    this.d.metrics.clockOffset.set(this.d.clock.offsetMs)
  }

  /**
   * The SDK sends `$tags` and `$shadow` on every connect (PROTOCOL.md "Tags", "Shadow"); for mapped
   * devices the hub link is that connection, so the gateway asks on their behalf, and for native
   * devices that stayed connected while the link was down. What the hub pushed at QoS 0 while the
   * link was down (a desired change, new tags) is not lost that way.
   */
  askForChildrenState(): void {
    if (!this.d.hub.isConnected()) return
    for (const dev of this.d.children()) {
      if (!dev.enabled || !this.d.asksFor(dev)) continue
      const asks: [string, Buffer][] = [['$tags', Buffer.from(JSON.stringify({ tags_version: dev.tagsVersion }))], ['$shadow', Buffer.alloc(0)]]
      for (const [name, payload] of asks) {
        this.d
          .uplink({ topic: { kind: 'get', productId: dev.productId, deviceId: dev.deviceId, name, messageId: newMessageId() }, payload, transport: 'internal', receivedAt: Date.now() })
          .catch((err: Error) => this.warn.warn('children-ask', { err: err.message }, `could not queue ${name} for a child device`))
      }
    }
  }

  private probeHubClock(): void {
    const messageId = newMessageId()
    const topic = formatUpTopic({ kind: 'get', ...this.d.identity, name: '$ntp', messageId })
    this.d.hub.publishDirect(topic, this.d.clock.request(messageId))
  }

  private async reportStatus(): Promise<void> {
    const s = this.d.outboxStats()
    const status = {
      version: VERSION,
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      outbox_messages: s.messages,
      outbox_bytes: s.bytes,
      outbox_oldest_age_ms: s.oldestAgeMs,
      outbox_dropped: s.dropped,
      children_online: this.d.onlineCount(),
      ...this.d.statusParts?.(),
    }
    try {
      await this.d.uplink({
        topic: { kind: 'update_status', ...this.d.identity, messageId: newMessageId() },
        payload: Buffer.from(JSON.stringify(status)),
        transport: 'internal',
        receivedAt: Date.now(),
      })
    } catch (err) {
      this.warn.warn('status', { err: (err as Error).message }, 'could not queue the gateway status report')
    }
  }
}
