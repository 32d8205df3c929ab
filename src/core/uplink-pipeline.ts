// Up: every message a device sends (and every message the gateway writes itself) passes these
// named steps, in order, before the durable outbox. A step either hands the message on with
// `next()` (changed or not, once or several times) or handles it itself and resolves; the promise
// resolves once what became of the message is durable, and only then may the sender be
// acknowledged (DESIGN.md "Durability rules"). Rules sit in their own slot just before the outbox:
// they see what is really going north, after the gateway answered what it answers locally.
import type { Metrics } from './metrics.js'
import type { Command, DeliveryResult, DeviceRef, Uplink } from './types.js'
import type { CommandRouter } from './command-router.js'
import type { TagService } from './tags.js'
import type { ShadowService } from './shadows.js'
import type { HubClock } from './clock.js'
import { parseJsonObject } from './shadow-doc.js'
import { newMessageId } from './message-id.js'

/** One step of the way up. Call `next` to pass the message on; resolve when it is taken care of. */
export type UplinkStep = (up: Uplink, next: (up: Uplink) => Promise<void>) => Promise<void>

export interface NamedStep {
  readonly name: string
  readonly run: UplinkStep
}

export interface PipelineDeps {
  metrics: Metrics
  router: CommandRouter
  tags: TagService
  shadows: ShadowService
  clock: HubClock
  /** Is the hub reachable right now? (Otherwise `$tags`/`$shadow` are answered from the copies.) */
  hubConnected: () => boolean
  isChild: (device: DeviceRef) => boolean
  /** The gateway plays the SDK for it: the hub's answers reach it as shadow/tag updates, not as raw commands. */
  isMapped: (device: DeviceRef) => boolean
  deliverNow: (cmd: Command) => Promise<DeliveryResult>
  /** The end of the way: resolves once the message is durable in the outbox. */
  sink: (up: Uplink) => Promise<void>
}

export class UplinkPipeline {
  readonly steps: readonly NamedStep[]
  private rules: UplinkStep | undefined
  // When each device last sent something (ms), since the start: the API's `lastSeen`. By product,
  // then device: no key string is made per message.
  private readonly heard = new Map<string, Map<string, number>>()
  // One continuation per step, made once: the hot path allocates no closures.
  private readonly nexts: ((up: Uplink) => Promise<void>)[]

  constructor(private readonly d: PipelineDeps) {
    this.steps = [
      { name: 'count', run: (up, next) => this.count(up, next) },
      { name: 'local-answers', run: (up, next) => this.answerLocally(up, next) },
      { name: 'local-replies', run: (up, next) => this.localReplies(up, next) },
      { name: 'm2m-between-children', run: (up, next) => this.m2mBetweenChildren(up, next) },
      { name: 'shadow-copy', run: (up, next) => this.trackShadow(up, next) },
      { name: 'rules', run: (up, next) => (this.rules ? this.rules(up, next) : next(up)) },
    ]
    this.nexts = this.steps.map((_, i) => (up: Uplink) => this.run(up, i + 1))
  }

  /** The rules seam (src/rules plugs in here): sees every message on its way to the outbox. */
  setRules(step: UplinkStep | undefined): void {
    this.rules = step
  }

  /** When the device last sent a message since the gateway started (ms), if it did. */
  lastHeard(device: DeviceRef): number | undefined {
    return this.heard.get(device.productId)?.get(device.deviceId)
  }

  /** Resolves once the message is durable or handled; rejects when it could not be made durable. */
  uplink(up: Uplink): Promise<void> {
    return this.run(up, 0)
  }

  private run(up: Uplink, i: number): Promise<void> {
    if (i === this.steps.length) return this.d.sink(up)
    try {
      return this.steps[i].run(up, this.nexts[i])
    } catch (err) {
      // A store write on a local path failed (disk full): not durable, so not acknowledged.
      return Promise.reject(err as Error)
    }
  }

  private count(up: Uplink, next: (up: Uplink) => Promise<void>): Promise<void> {
    const t = up.topic
    this.d.metrics.countUplink(up.transport, t.kind)
    // The core's own uploads on a device's behalf ($connection, ...) are not the device speaking.
    if (up.transport !== 'internal') {
      let devices = this.heard.get(t.productId)
      if (!devices) this.heard.set(t.productId, (devices = new Map()))
      devices.set(t.deviceId, up.receivedAt)
    }
    return next(up)
  }

  /**
   * PROTOCOL.md "Internal data requests": `$ntp` is always answered here (the gateway is closer than
   * the hub, so more accurate); `$tags`/`$shadow` by the hub when it is reachable, from the
   * gateway's copies otherwise. Answers are never queued, so the request is taken care of at once.
   */
  private answerLocally(up: Uplink, next: (up: Uplink) => Promise<void>): Promise<void> {
    const t = up.topic
    if (t.kind !== 'get') return next(up)
    const device = { productId: t.productId, deviceId: t.deviceId }
    if (t.name === '$ntp') {
      const deviceTime = parseJsonObject(up.payload)?.device_time
      // iothub_recv is when the request arrived; iothub_send is taken now, just before it is handed down.
      const payload = this.d.clock.answerFor(deviceTime, up.receivedAt)
      void this.d.deliverNow({ type: 'cmd', device, name: '$set_ntp', encoding: 'plain', requestId: newMessageId(), payload })
      return Promise.resolve()
    }
    // A mapped device has no SDK to hand an answer to: its request waits for the hub in the outbox.
    if (this.d.isMapped(device)) return next(up)
    if (t.name === '$tags' && !this.d.hubConnected()) return this.d.tags.answerLocally(device, up.payload, newMessageId())
    if (t.name === '$shadow' && !this.d.hubConnected()) return this.d.shadows.answerLocally(device)
    return next(up)
  }

  /** Replies to the gateway's own (local API) commands stay local. */
  private localReplies(up: Uplink, next: (up: Uplink) => Promise<void>): Promise<void> {
    const t = up.topic
    if ((t.kind === 'cmd_resp' || t.kind === 'rpc_resp') && this.d.router.reply({ productId: t.productId, deviceId: t.deviceId }, t.requestId!, up.payload)) {
      return Promise.resolve()
    }
    return next(up)
  }

  /** m2m between two children of this gateway: delivered here, with or without the hub (which would only echo it back). */
  private m2mBetweenChildren(up: Uplink, next: (up: Uplink) => Promise<void>): Promise<void> {
    const t = up.topic
    if (t.kind !== 'm2m') return next(up)
    const target = { productId: t.productId, deviceId: t.targetDeviceId! }
    if (!this.d.isChild(target)) return next(up)
    this.d.router.accept({ type: 'm2m', device: target, name: '', encoding: 'plain', requestId: t.messageId, senderDeviceId: t.deviceId, payload: up.payload }, 'm2m')
    return Promise.resolve()
  }

  /** A native device's `$shadow_updated`/`$shadow_reported` updates the gateway's copy on its way north. */
  private trackShadow(up: Uplink, next: (up: Uplink) => Promise<void>): Promise<void> {
    const t = up.topic
    if (t.kind === 'upload_data' && up.transport !== 'internal' && (t.name === '$shadow_updated' || t.name === '$shadow_reported')) {
      this.d.shadows.onDeviceUpload({ productId: t.productId, deviceId: t.deviceId }, t.name, up.payload)
    }
    return next(up)
  }
}
