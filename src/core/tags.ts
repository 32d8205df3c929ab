// Tags (PROTOCOL.md "Tags"). The gateway keeps each child's tags and tags_version, holds the tag
// subscriptions on the hub that its children need, and hands each tag command to the children that
// carry the tag, through their adapter's `deliver()` with the tag it came through: native devices
// by the tag filters they subscribed (mirrored on the hub, reference-counted), mapped devices as
// the device SDK would, per tag in the registry.
import { EventEmitter } from 'node:events'
import type { Logger } from './log.js'
import type { Command, DeliveryResult, DeviceRef } from './types.js'
import { deviceKey, parseDeviceKey } from './types.js'
import type { Device, DeviceRegistry } from '../store/devices.js'
import type { CommandStore } from '../store/commands.js'
import type { CommandRouter } from './command-router.js'
import { isId, tagFilter, tagScope, topicMatches, type DownTopic } from './hub-topics.js'
import { parseJsonObject } from './shadow-doc.js'
import { newMessageId } from './message-id.js'

export interface TagDeps {
  registry: DeviceRegistry
  store: CommandStore
  router: CommandRouter
  isMapped: (d: DeviceRef) => boolean
  /** Hand an answer to the device now, through its adapter (never queued). */
  deliverNow: (cmd: Command) => Promise<DeliveryResult>
  log: Logger
}

/** Events: 'changed' (the set of hub filters changed). */
export class TagService extends EventEmitter {
  // filter -> (client id -> device key) of native devices holding it on the local broker
  private readonly local = new Map<string, Map<string, string>>()

  constructor(private readonly d: TagDeps) {
    super()
  }

  /** A native device's client subscribed to a tag filter on the local broker. */
  localSubscribed(device: DeviceRef, clientId: string, filter: string): void {
    let holders = this.local.get(filter)
    if (!holders) this.local.set(filter, (holders = new Map()))
    const key = deviceKey(device)
    const deviceHadIt = [...holders.values()].includes(key)
    holders.set(clientId, key)
    if (!deviceHadIt) this.emit('changed')
  }

  localUnsubscribed(clientId: string, filter: string): void {
    const holders = this.local.get(filter)
    const key = holders?.get(clientId)
    if (!holders || key === undefined) return
    holders.delete(clientId)
    if (holders.size === 0) this.local.delete(filter)
    if (![...holders.values()].includes(key)) this.emit('changed')
  }

  /** A client went away: its subscriptions go with it (the last one out unsubscribes the hub). */
  clientGone(clientId: string): void {
    for (const [filter, holders] of [...this.local]) if (holders.has(clientId)) this.localUnsubscribed(clientId, filter)
  }

  /** Mapped devices' tag filters, from the registry. */
  private mappedFilters(device?: DeviceRef): string[] {
    const out: string[] = []
    for (const dev of this.d.registry.list()) {
      if (!dev.enabled || (device && deviceKey(dev) !== deviceKey(device)) || !this.d.isMapped(dev)) continue
      for (const t of dev.tags) if (isId(t)) out.push(tagFilter(dev.productId, t))
    }
    return out
  }

  /** Tag filters the gateway must hold on the hub: all of them, or one device's (devices mode). */
  hubFilters(device?: DeviceRef): string[] {
    const key = device && deviceKey(device)
    const native = [...this.local].filter(([, holders]) => !key || [...holders.values()].includes(key)).map(([filter]) => filter)
    return [...new Set([...native, ...this.mappedFilters(device)])]
  }

  /** The registry changed (tags of a mapped device, a device added or removed). */
  registryChanged(): void {
    this.emit('changed')
  }

  /**
   * A tag command from the hub: deduplicated by (tag, RequestId), then one copy per child that gets
   * it, queued for delivery in order with that child's other commands: every mapped child carrying
   * the tag, and every native device holding a matching tag filter (also a persistent session that
   * is away: it gets it when it is back, as from the hub's broker).
   */
  fromHub(t: DownTopic, topic: string, payload: Buffer): 'duplicate' | 'expired' | 'relayed' {
    const tag = t.tag!
    const cmdFor = (device: DeviceRef): Command => ({
      type: 'cmd',
      device,
      name: t.name!,
      encoding: t.encoding!,
      requestId: t.requestId!,
      expiresAt: t.expiresAt,
      payload,
      via: { tag },
    })
    if (this.d.router.isExpired(cmdFor({ productId: t.productId, deviceId: '-' }))) return 'expired'
    // The seen entry and every copy in one transaction: one fsync however many children get it,
    // and a crash leaves either all of them or none (the hub then sends it again).
    return this.d.store.atomically(() => {
      const first = this.d.store.accept(tagScope(t.productId, tag), cmdFor({ productId: t.productId, deviceId: tag }), 'tag')
      if (!first.fresh) return 'duplicate'
      const targets = new Map<string, DeviceRef>()
      for (const dev of this.d.registry.list()) {
        if (dev.productId !== t.productId || !dev.enabled || !dev.tags.includes(tag) || !this.d.isMapped(dev)) continue
        targets.set(deviceKey(dev), { productId: dev.productId, deviceId: dev.deviceId })
      }
      for (const [filter, holders] of this.local) {
        if (!topicMatches(filter, topic)) continue
        for (const key of holders.values()) {
          const device = parseDeviceKey(key)
          if (!targets.has(key) && this.d.registry.get(device)?.enabled) targets.set(key, device)
        }
      }
      for (const device of targets.values()) this.d.router.enqueueCopy(cmdFor(device), 'tag')
      return 'relayed'
    })
  }

  /** `$set_tags` seen on its way to a device: keep the newer set. Returns true if it was newer. */
  onSetTags(device: DeviceRef, payload: Buffer): boolean {
    const body = parseJsonObject(payload)
    const tags = body?.tags
    const version = body?.tags_version
    if (!Array.isArray(tags) || typeof version !== 'number') return false
    const current = this.d.registry.get(device)
    if (!current || version <= current.tagsVersion) return false
    this.d.registry.setTags(device, tags.filter((x): x is string => typeof x === 'string'), version)
    if (this.d.isMapped(device)) this.emit('changed')
    return true
  }

  /**
   * A technician set the device's tags on the gateway (API, CLI): the registry keeps them with the
   * next tags_version (mapped devices' hub tag subscriptions follow through 'changed'), and a native
   * device connected now is told at once with `$set_tags`, as the hub would, so its SDK subscribes
   * the new tag topics; one that is not connected gets them when it next asks while the hub is away.
   */
  async editLocally(device: DeviceRef, tags: string[]): Promise<Device | undefined> {
    const edited = this.d.registry.editTags(device, tags)
    if (!edited || this.d.isMapped(device)) return edited
    const payload = Buffer.from(JSON.stringify({ tags: edited.tags, tags_version: edited.tagsVersion }))
    await this.d.deliverNow({ type: 'cmd', device, name: '$set_tags', encoding: 'plain', requestId: newMessageId(), payload, qos: 0 })
    return edited
  }

  /** Answer a `$tags` request from the copy (when the hub is unreachable). */
  async answerLocally(device: DeviceRef, request: Buffer, requestId: string): Promise<void> {
    const have = parseJsonObject(request)?.tags_version
    const current = this.d.registry.get(device)
    if (!current || current.tagsVersion <= (typeof have === 'number' ? have : 0)) return
    // QoS 0 as the hub sends it (PROTOCOL.md "QoS").
    const payload = Buffer.from(JSON.stringify({ tags: current.tags, tags_version: current.tagsVersion }))
    await this.d.deliverNow({ type: 'cmd', device, name: '$set_tags', encoding: 'plain', requestId, payload, qos: 0 })
  }
}
