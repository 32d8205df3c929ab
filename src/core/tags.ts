// Tags (PROTOCOL.md "Tags"). The gateway keeps each child's tags and tags_version, holds the tag
// subscriptions on the hub that its children need, and hands each tag command to the children that
// carry the tag: native devices through their own subscriptions on the local broker (mirrored on
// the hub, reference-counted), mapped devices as the device SDK would, per tag in the registry.
import { EventEmitter } from 'node:events'
import type { Logger } from './log.js'
import type { Command, DeviceRef } from './types.js'
import { deviceKey } from './types.js'
import type { DeviceRegistry } from '../store/devices.js'
import type { CommandStore } from '../store/commands.js'
import type { CommandRouter } from './command-router.js'
import { formatDownTopic, isId, type DownTopic } from './hub-topics.js'
import { parseJsonObject } from './shadow-doc.js'

export interface TagDeps {
  registry: DeviceRegistry
  store: CommandStore
  router: CommandRouter
  isMapped: (d: DeviceRef) => boolean
  /** Publish on the local broker to whoever subscribed (native devices). */
  publishLocal: (topic: string, payload: Buffer, qos: 0 | 1) => Promise<void>
  log: Logger
}

export const tagFilter = (productId: string, tag: string): string => `tags/${productId}/${tag}/cmd/+/+/+/#`

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
   * A tag command from the hub: deduplicated by (topic, RequestId), relayed to native subscribers
   * on the local broker, and handed once to every mapped child carrying the tag.
   */
  async fromHub(t: DownTopic, topic: string, payload: Buffer): Promise<'duplicate' | 'expired' | 'relayed'> {
    const scope = `tags/${t.productId}/${t.tag}`
    const cmdFor = (device: DeviceRef): Command => ({
      type: 'cmd',
      device,
      name: t.name!,
      encoding: t.encoding!,
      requestId: t.requestId!,
      expiresAt: t.expiresAt,
      payload,
    })
    if (this.d.router.isExpired(cmdFor({ productId: t.productId, deviceId: '-' }))) return 'expired'
    const first = this.d.store.accept(scope, cmdFor({ productId: t.productId, deviceId: t.tag! }), 'tag')
    if (!first.fresh) return 'duplicate'
    for (const dev of this.d.registry.list()) {
      if (dev.productId !== t.productId || !dev.enabled || !dev.tags.includes(t.tag!) || !this.d.isMapped(dev)) continue
      this.d.router.enqueueCopy(cmdFor(dev), 'tag')
    }
    await this.d.publishLocal(topic, payload, 1)
    return 'relayed'
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

  /** Answer a `$tags` request from the copy (when the hub is unreachable). */
  async answerLocally(device: DeviceRef, payload: Buffer, requestId: string): Promise<void> {
    const have = parseJsonObject(payload)?.tags_version
    const current = this.d.registry.get(device)
    if (!current || current.tagsVersion <= (typeof have === 'number' ? have : 0)) return
    const topic = formatDownTopic({ kind: 'cmd', productId: device.productId, deviceId: device.deviceId, name: '$set_tags', encoding: 'plain', requestId })
    // QoS 0 as the hub sends it (PROTOCOL.md "QoS").
    await this.d.publishLocal(topic, Buffer.from(JSON.stringify({ tags: current.tags, tags_version: current.tagsVersion })), 0)
  }
}
