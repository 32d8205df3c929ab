// Down: what the hub sends, parsed once into the gateway's own types and sent on its way. Tag
// commands fan out to the children that carry the tag; the gateway's own commands (`$set_ntp`
// answers to its clock probes) stay here; the QoS 0 internals update the gateway's copies and are
// handed to a connected native device in turn with its commands (never queued: the device asks
// again on its next connect); everything else goes through the command router (deduplicated, durable, in order).
import type { Logger } from './log.js'
import { RateLimitedLog } from './log.js'
import type { Metrics } from './metrics.js'
import type { Command, DeviceRef } from './types.js'
import { deviceKey } from './types.js'
import { ErrorCodes } from './errors.js'
import { parseDownTopic } from './hub-topics.js'
import type { CommandRouter } from './command-router.js'
import type { TagService } from './tags.js'
import type { ShadowService } from './shadows.js'
import type { CommandStore } from '../store/commands.js'

// Internal commands the hub sends with QoS 0 (PROTOCOL.md "QoS").
const QOS0_INTERNAL = new Set(['$set_tags', '$update_shadow', '$shadow_reply'])

export interface HubInboxDeps {
  router: CommandRouter
  commands: CommandStore
  tags: TagService
  shadows: ShadowService
  metrics: Metrics
  log: Logger
  isGateway: (device: DeviceRef) => boolean
  /** The gateway's own commands (clock answers). */
  forGateway: (cmd: Command) => void
  isChild: (device: DeviceRef) => boolean
  isMapped: (device: DeviceRef) => boolean
}

export class HubInbox {
  private readonly warn: RateLimitedLog

  constructor(private readonly d: HubInboxDeps) {
    this.warn = new RateLimitedLog(d.log)
  }

  /** A message from the hub. Resolves once it is durable (then the hub gets its PUBACK). */
  async fromHub(topic: string, payload: Buffer): Promise<void> {
    const t = parseDownTopic(topic)
    if (!t) {
      this.d.metrics.downlinks.inc({ outcome: 'malformed' })
      this.warn.warn('hub-malformed', { topic, code: ErrorCodes.BAD_TOPIC }, "message from the hub on a topic that is not PROTOCOL.md's; dropped")
      return
    }
    if (t.kind === 'tags') {
      const r = this.d.tags.fromHub(t, topic, payload)
      this.d.metrics.downlinks.inc({ outcome: r === 'relayed' ? 'delivered' : r })
      return
    }
    const device = { productId: t.productId, deviceId: t.deviceId! }
    const cmd: Command =
      t.kind === 'm2m'
        ? { type: 'm2m', device, name: '', encoding: 'plain', requestId: t.messageId!, senderDeviceId: t.senderDeviceId, payload }
        : { type: t.kind, device, name: t.name!, encoding: t.encoding!, requestId: t.requestId!, expiresAt: t.expiresAt, payload }
    if (this.d.isGateway(device)) return this.d.forGateway(cmd)
    if (!this.d.isChild(device)) {
      this.d.metrics.downlinks.inc({ outcome: 'unknown_device' })
      return
    }
    if (cmd.type === 'cmd' && QOS0_INTERNAL.has(cmd.name)) return this.internal(cmd)
    this.d.router.accept(cmd, t.kind === 'm2m' ? 'm2m' : 'hub')
  }

  /**
   * `$set_tags`, `$update_shadow`, `$shadow_reply`: update the copies, hand to a native device in
   * turn with what was sent to it before (an `$update_shadow` must not overtake an RPC that waits
   * behind a command).
   */
  private internal(cmd: Command): void {
    if (this.d.router.isExpired(cmd)) return
    if (!this.d.commands.accept(deviceKey(cmd.device), cmd, 'hub').fresh) return
    if (cmd.name === '$set_tags') this.d.tags.onSetTags(cmd.device, cmd.payload)
    else if (cmd.name === '$update_shadow') this.d.shadows.onUpdateShadow(cmd.device, cmd.payload)
    else this.d.shadows.onShadowReply(cmd.device, cmd.payload)
    // A mapped device gets desired state through the shadow service; a native one applies it itself.
    if (!this.d.isMapped(cmd.device)) this.d.router.relay({ ...cmd, qos: 0 })
  }
}
