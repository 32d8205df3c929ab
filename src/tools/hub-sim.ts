// A stand-in for the cloud IoTHub's server side, for demos and tests: NOT a production hub.
// It connects to an MQTT broker (Mosquitto in tests) as a privileged user and behaves as
// PROTOCOL.md's hub: records uploads (dropping duplicate MessageIds as the hub does), answers
// `$ntp`, `$tags` and `$shadow` requests, applies shadow versions from `$shadow_updated` and
// `$shadow_reported`, and sends commands, RPCs, tag commands and shadow changes on request.
import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import mqtt, { type MqttClient } from 'mqtt'
import { formatDownTopic, parseUpTopic, UP_TOPIC_FILTERS, type UpTopic } from '../core/hub-topics.js'
import { applyDesired, applyReported, parseJsonObject as parseJson, withDesired, type JsonObject, type ShadowDoc as Shadow } from '../core/shadow-doc.js'

export type { JsonObject, Shadow }

export interface HubSimOptions {
  url: string
  username?: string
  password?: string
  clientId?: string
  /** Clock used for `iothub_recv`/`iothub_send` and shadow timestamps (tests shift it). */
  now?: () => number
}

export interface HubUpload {
  topic: string
  parsed: UpTopic
  payload: Buffer
  receivedAt: number
  duplicate: boolean
}

interface DeviceState {
  tags: string[]
  tagsVersion: number
  shadow: Shadow
}

export interface CommandOptions {
  encoding?: 'plain' | 'base64'
  /** UNIX seconds. */
  expiresAt?: number
  qos?: 0 | 1
  requestId?: string
}

const key = (p: string, d: string): string => `${p}/${d}`
export const newRequestId = (): string => randomBytes(12).toString('hex')

/** Events: 'upload' (HubUpload), 'reply' (HubUpload for cmd_resp/rpc_resp). */
export class HubSim extends EventEmitter {
  private client?: MqttClient
  readonly uploads: HubUpload[] = []
  private readonly seen = new Set<string>()
  private readonly devices = new Map<string, DeviceState>()
  private readonly rpcWaiters = new Map<string, (u: HubUpload) => void>()
  private readonly now: () => number

  constructor(private readonly opts: HubSimOptions) {
    super()
    this.now = opts.now ?? Date.now
  }

  async start(): Promise<void> {
    const client = mqtt.connect(this.opts.url, {
      username: this.opts.username,
      password: this.opts.password,
      clientId: this.opts.clientId ?? `hub-sim-${randomBytes(4).toString('hex')}`,
      protocolVersion: 4,
      // A persistent session, so uploads published while the simulator reconnects are kept.
      clean: false,
      reconnectPeriod: 500,
    })
    this.client = client
    // Without it Nagle holds each small publish that follows a PUBACK until the broker's delayed
    // ACK (~40 ms on Linux), and that, not the system under test, would dominate every RPC.
    client.on('connect', () => (client.stream as Socket).setNoDelay?.(true))
    client.on('message', (topic, payload) => this.onMessage(topic, payload))
    client.on('error', () => undefined)
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve())
      client.once('error', reject)
    })
    const filters = [...UP_TOPIC_FILTERS]
    await client.subscribeAsync(filters, { qos: 1 })
  }

  /** Whether the simulator's own connection to the broker is up. */
  get connected(): boolean {
    return !!this.client?.connected
  }

  async stop(): Promise<void> {
    const c = this.client
    this.client = undefined
    if (c) await c.endAsync()
  }

  private device(p: string, d: string): DeviceState {
    let s = this.devices.get(key(p, d))
    if (!s) {
      s = { tags: [], tagsVersion: 0, shadow: { state: {}, metadata: {}, version: 0 } }
      this.devices.set(key(p, d), s)
    }
    return s
  }

  /** The hub's copy of a device's shadow. */
  shadowOf(p: string, d: string): Shadow {
    return structuredClone(this.device(p, d).shadow)
  }

  tagsOf(p: string, d: string): { tags: string[]; tagsVersion: number } {
    const s = this.device(p, d)
    return { tags: [...s.tags], tagsVersion: s.tagsVersion }
  }

  private onMessage(topic: string, payload: Buffer): void {
    const receivedAt = this.now()
    const parsed = parseUpTopic(topic)
    if (!parsed) return
    // The hub drops a MessageId it has seen (PROTOCOL.md "Identities").
    const duplicate = this.seen.has(parsed.messageId)
    this.seen.add(parsed.messageId)
    const up: HubUpload = { topic, parsed, payload, receivedAt, duplicate }
    this.uploads.push(up)
    this.emit('upload', up)
    if (duplicate) return
    switch (parsed.kind) {
      case 'get':
        return this.onGet(parsed, payload, receivedAt)
      case 'upload_data':
        if (parsed.name === '$shadow_updated') return this.onShadowUpdated(parsed, payload)
        if (parsed.name === '$shadow_reported') return this.onShadowReported(parsed, payload)
        return
      case 'cmd_resp':
      case 'rpc_resp': {
        this.emit('reply', up)
        const w = this.rpcWaiters.get(parsed.requestId!)
        if (w && parsed.kind === 'rpc_resp') {
          this.rpcWaiters.delete(parsed.requestId!)
          w(up)
        }
        return
      }
      default:
        return
    }
  }

  private onGet(t: UpTopic, payload: Buffer, receivedAt: number): void {
    const body = parseJson(payload)
    switch (t.name) {
      case '$ntp':
        void this.command(t.productId, t.deviceId, '$set_ntp', {
          device_time: body?.device_time,
          iothub_recv: receivedAt,
          iothub_send: this.now(),
        })
        return
      case '$tags': {
        // An empty payload means tags_version 0 (PROTOCOL.md).
        const have = typeof body?.tags_version === 'number' ? body.tags_version : 0
        const s = this.device(t.productId, t.deviceId)
        if (s.tagsVersion > have) void this.pushTags(t.productId, t.deviceId)
        return
      }
      case '$shadow':
        void this.pushShadow(t.productId, t.deviceId)
        return
      default:
        return
    }
  }

  private onShadowUpdated(t: UpTopic, payload: Buffer): void {
    const body = parseJson(payload)
    const s = this.device(t.productId, t.deviceId)
    if (body?.version !== s.shadow.version) {
      void this.pushShadow(t.productId, t.deviceId)
      return
    }
    s.shadow = applyDesired(s.shadow, Math.floor(this.now() / 1000))
    this.reply(t, s)
  }

  private onShadowReported(t: UpTopic, payload: Buffer): void {
    const body = parseJson(payload)
    const s = this.device(t.productId, t.deviceId)
    const reported = (body?.state as { reported?: JsonObject } | undefined)?.reported
    if (body?.version !== s.shadow.version || !reported) {
      void this.pushShadow(t.productId, t.deviceId)
      return
    }
    s.shadow = applyReported(s.shadow, reported, Math.floor(this.now() / 1000))
    this.reply(t, s)
  }

  private reply(t: UpTopic, s: DeviceState): void {
    void this.command(t.productId, t.deviceId, '$shadow_reply', { status: 'success', timestamp: s.shadow.timestamp, version: s.shadow.version }, { qos: 0 })
  }

  // --- what a business system does through the hub's API ------------------------------------

  /** Publish a command (`cmd/...`); returns its RequestId. */
  async command(p: string, d: string, name: string, payload: unknown, o: CommandOptions = {}): Promise<string> {
    return this.publishCommand('cmd', p, d, name, payload, o)
  }

  /** An RPC: publishes `rpc/...` and waits up to `timeoutMs` (the hub's 5 s) for the `rpc_resp`. */
  async rpc(p: string, d: string, name: string, payload: unknown, timeoutMs = 5_000, o: CommandOptions = {}): Promise<HubUpload> {
    const requestId = o.requestId ?? newRequestId()
    const reply = new Promise<HubUpload>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.rpcWaiters.delete(requestId)
        reject(new Error(`rpc ${name} to ${key(p, d)} timed out after ${timeoutMs} ms`))
      }, timeoutMs)
      this.rpcWaiters.set(requestId, (u) => {
        clearTimeout(timer)
        resolve(u)
      })
    })
    await this.publishCommand('rpc', p, d, name, payload, { ...o, requestId })
    return reply
  }

  /** A command to every device of the product carrying `tag`. */
  async tagCommand(p: string, tag: string, name: string, payload: unknown, o: CommandOptions = {}): Promise<string> {
    const requestId = o.requestId ?? newRequestId()
    const encoding = o.encoding ?? 'plain'
    const topic = formatDownTopic({ kind: 'tags', productId: p, tag, name, encoding, requestId, expiresAt: o.expiresAt })
    await this.publish(topic, encodePayload(payload, encoding), o.qos ?? 1)
    return requestId
  }

  /** A message from another device of the product (m2m). */
  async m2m(p: string, target: string, sender: string, payload: Buffer | string, messageId = newRequestId()): Promise<void> {
    await this.publish(formatDownTopic({ kind: 'm2m', productId: p, deviceId: target, senderDeviceId: sender, messageId }), Buffer.from(payload), 1)
  }

  /** A business system changes a device's tags: version+1, then `$set_tags` (QoS 0) is pushed. */
  async setTags(p: string, d: string, tags: string[]): Promise<void> {
    const s = this.device(p, d)
    s.tags = [...tags]
    s.tagsVersion++
    await this.pushTags(p, d)
  }

  /** Set tags without pushing (the device learns them on its next `$tags` request). */
  presetTags(p: string, d: string, tags: string[], version: number): void {
    const s = this.device(p, d)
    s.tags = [...tags]
    s.tagsVersion = version
  }

  /**
   * A business system changes desired state; it must supply a version greater than the shadow's
   * current one, otherwise the hub refuses (HTTP 409) and nothing is sent. Returns false then.
   */
  async setDesired(p: string, d: string, desired: JsonObject, version: number): Promise<boolean> {
    const s = this.device(p, d)
    const next = withDesired(s.shadow, desired, version, Math.floor(this.now() / 1000))
    if (!next) return false
    s.shadow = next
    await this.pushShadow(p, d)
    return true
  }

  private async pushTags(p: string, d: string): Promise<void> {
    const s = this.device(p, d)
    await this.command(p, d, '$set_tags', { tags: s.tags, tags_version: s.tagsVersion }, { qos: 0 })
  }

  private async pushShadow(p: string, d: string): Promise<void> {
    await this.command(p, d, '$update_shadow', this.device(p, d).shadow, { qos: 0 })
  }

  private async publishCommand(kind: 'cmd' | 'rpc', p: string, d: string, name: string, payload: unknown, o: CommandOptions): Promise<string> {
    const requestId = o.requestId ?? newRequestId()
    const encoding = o.encoding ?? 'plain'
    const topic = formatDownTopic({ kind, productId: p, deviceId: d, name, encoding, requestId, expiresAt: o.expiresAt })
    await this.publish(topic, encodePayload(payload, encoding), o.qos ?? 1)
    return requestId
  }

  private async publish(topic: string, payload: Buffer, qos: 0 | 1): Promise<void> {
    if (!this.client) throw new Error('hub-sim is not started')
    await this.client.publishAsync(topic, payload, { qos })
  }

  /** Uploads (first copies only) matching a filter. */
  received(filter: (u: HubUpload) => boolean = () => true): HubUpload[] {
    return this.uploads.filter((u) => !u.duplicate && filter(u))
  }

  /** Resolves with the first upload (already received or future) matching `filter`. */
  waitFor(filter: (u: HubUpload) => boolean, timeoutMs = 5_000, what = 'an upload'): Promise<HubUpload> {
    const have = this.uploads.find(filter)
    if (have) return Promise.resolve(have)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('upload', on)
        reject(new Error(`hub-sim: ${what} did not arrive within ${timeoutMs} ms (got ${this.uploads.length} uploads)`))
      }, timeoutMs)
      const on = (u: HubUpload): void => {
        if (!filter(u)) return
        clearTimeout(timer)
        this.off('upload', on)
        resolve(u)
      }
      this.on('upload', on)
    })
  }
}

function encodePayload(payload: unknown, encoding: 'plain' | 'base64'): Buffer {
  const raw = Buffer.isBuffer(payload) ? payload : Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload))
  return encoding === 'base64' ? Buffer.from(raw.toString('base64')) : raw
}
