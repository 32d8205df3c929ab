// A native device as the hub's device SDK behaves (PROTOCOL.md "Internal data requests", "Tags",
// "Shadow", "NTP"), played by an MQTT.js client on the gateway's broker (which subscribes it to its
// cmd/rpc/m2m topics server-side, as the hub does). It does on its own what the SDK does: on connect
// it subscribes the tags it keeps and sends `$tags` (with its tags_version) and `$shadow`; on
// `$set_tags` with a greater version it subscribes new tag topics and unsubscribes removed ones; on
// `$update_shadow` it ignores an older version, otherwise keeps the version, applies `desired` and
// uploads `$shadow_updated`; on `$shadow_reply` it adopts a greater version; `ntp()` computes the
// time from `$set_ntp`. What the SDK keeps persistently (tags, tags_version, shadow version, own
// state) lives on this object and survives `close()`/`open()`. Every message it receives is kept,
// raw, in `messages` (every copy: the SDK's duplicate filter is not modelled, so tests can count).
// Topics are split here by hand on purpose: the gateway's parser is what is under test.
// (test/helpers/command-device.ts is the device for the command path.)
import { EventEmitter } from 'node:events'
import type { MqttClient } from 'mqtt'
import { connectDevice, newMessageId, type DeviceLogin, type ReceivedMessage } from './device.js'

export type { ReceivedMessage }

type Json = Record<string, unknown>


export interface NtpResult {
  deviceTime: number
  deviceRecv: number
  iothubRecv: number
  iothubSend: number
  /** PROTOCOL.md "NTP": (iothub_recv + iothub_send + device_recv - device_time) / 2. */
  now: number
}

export const tagFilterOf = (productId: string, tag: string): string => `tags/${productId}/${tag}/cmd/+/+/+/#`

export function jsonOf(m: ReceivedMessage): Json {
  return JSON.parse(m.payload.toString('utf8')) as Json
}

function parseJson(payload: Buffer): Json | undefined {
  try {
    const v: unknown = JSON.parse(payload.toString('utf8'))
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined
  } catch {
    return undefined
  }
}

/** Events: 'message' (ReceivedMessage, on arrival), 'handled' (ReceivedMessage, after the SDK acted on it). */
export class SdkDevice extends EventEmitter {
  readonly messages: ReceivedMessage[] = []
  /** What the SDK keeps persistently. */
  tags: string[] = []
  tagsVersion = 0
  shadowVersion = 0
  /** The device's own state: what desired state is applied to and what it reports. */
  state: Json = {}
  /** `$update_shadow` documents ignored because their version was lower than ours. */
  ignoredShadows = 0
  private client?: MqttClient
  // One message at a time: `$set_tags` finishes its (un)subscriptions before the next is handled.
  private chain: Promise<void> = Promise.resolve()
  private readonly ntpWaiters = new Map<number, (r: NtpResult) => void>()

  constructor(
    private url: string,
    readonly login: DeviceLogin,
  ) {
    super()
    this.setMaxListeners(50)
  }

  /** Construct and connect. */
  static async connect(url: string, login: DeviceLogin): Promise<SdkDevice> {
    const dev = new SdkDevice(url, login)
    await dev.open()
    return dev
  }

  get productId(): string {
    return this.login.productId
  }

  get deviceId(): string {
    return this.login.deviceId
  }

  /** (Re)connect, then subscribe the stored tags and ask for `$tags` and `$shadow`, as the SDK does. */
  async open(url = this.url): Promise<void> {
    if (this.client) throw new Error(`${this.productId}/${this.deviceId}: already connected`)
    this.url = url
    const client = await connectDevice(url, this.login)
    this.client = client
    client.on('message', (topic, payload, packet) => {
      const m: ReceivedMessage = { topic, levels: topic.split('/'), payload, qos: packet.qos, at: Date.now() }
      this.messages.push(m)
      this.emit('message', m)
      this.chain = this.chain.then(() => this.handle(m)).catch(() => undefined)
    })
    if (this.tags.length) await client.subscribeAsync(this.tags.map((t) => tagFilterOf(this.productId, t)), { qos: 1 })
    await this.get('$tags', { tags_version: this.tagsVersion })
    await this.get('$shadow')
  }

  /** Disconnect (what the SDK keeps stays on this object). */
  async close(): Promise<void> {
    const c = this.client
    this.client = undefined
    if (c) await c.endAsync(true)
    await this.chain
  }

  /** A factory reset: what the SDK keeps persistently is gone. */
  forget(): void {
    this.tags = []
    this.tagsVersion = 0
    this.shadowVersion = 0
    this.state = {}
  }

  private get mqtt(): MqttClient {
    if (!this.client) throw new Error(`${this.productId}/${this.deviceId}: not connected`)
    return this.client
  }

  /** Publish QoS 1; resolves on PUBACK. */
  async publish(topic: string, payload: Buffer | string): Promise<void> {
    await this.mqtt.publishAsync(topic, payload, { qos: 1 })
  }

  /** A data request `get/{p}/{d}/{resource}/{MessageId}`; an object payload is sent as JSON, none as empty. */
  async get(resource: string, payload: Json | string = '', messageId = newMessageId()): Promise<string> {
    const topic = `get/${this.productId}/${this.deviceId}/${resource}/${messageId}`
    await this.publish(topic, typeof payload === 'string' ? payload : JSON.stringify(payload))
    return topic
  }

  /** `upload_data/{p}/{d}/{dataType}/{MessageId}`; returns the topic. */
  async upload(dataType: string, body: unknown, messageId = newMessageId()): Promise<string> {
    const topic = `upload_data/${this.productId}/${this.deviceId}/${dataType}/${messageId}`
    await this.publish(topic, Buffer.isBuffer(body) ? body : typeof body === 'string' ? body : JSON.stringify(body))
    return topic
  }

  /** Report own state (`$shadow_reported`) with our shadow version, or the one given (a stale one). */
  async reportState(reported: Json, version = this.shadowVersion): Promise<string> {
    this.state = applyPatch(this.state, reported)
    return this.upload('$shadow_reported', { state: { reported }, version })
  }

  /** m2m to another device of the product; returns the MessageId. */
  async m2m(target: string, payload: string, messageId = newMessageId()): Promise<string> {
    await this.publish(`m2m/${this.productId}/${target}/${this.deviceId}/${messageId}`, payload)
    return messageId
  }

  /** One `$ntp` exchange: the time computed as PROTOCOL.md says, with the raw values. */
  ntp(timeoutMs = 5_000): Promise<NtpResult> {
    let deviceTime = Date.now()
    // Distinct device_time per pending request, so answers can be matched.
    while (this.ntpWaiters.has(deviceTime)) deviceTime++
    const answered = new Promise<NtpResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.ntpWaiters.delete(deviceTime)
        reject(new Error(`${this.productId}/${this.deviceId}: no $set_ntp within ${timeoutMs} ms`))
      }, timeoutMs)
      this.ntpWaiters.set(deviceTime, (r) => {
        clearTimeout(timer)
        resolve(r)
      })
    })
    return this.get('$ntp', { device_time: deviceTime }).then(() => answered)
  }

  /** Messages from index `from` on that match. */
  since(from: number, match: (m: ReceivedMessage) => boolean = () => true): ReceivedMessage[] {
    return this.messages.slice(from).filter(match)
  }

  /** The first message from index `from` on (received already or still to come) that matches. */
  waitFor(match: (m: ReceivedMessage) => boolean, timeoutMs = 5_000, what = 'a message', from = 0): Promise<ReceivedMessage> {
    return this.until(() => this.messages.slice(from).find(match), timeoutMs, what)
  }

  /** Resolves once `check` returns something other than undefined/false, re-checked after each handled message. */
  until<T>(check: () => T | undefined | false, timeoutMs = 5_000, what = 'a condition'): Promise<T> {
    const settled = (): T | undefined => {
      const v = check()
      return v === false ? undefined : v
    }
    const now = settled()
    if (now !== undefined) return Promise.resolve(now)
    return new Promise((resolve, reject) => {
      const on = (): void => {
        const v = settled()
        if (v === undefined) return
        done()
        resolve(v)
      }
      const timer = setTimeout(() => {
        done()
        const got = this.messages.slice(-20).map((m) => m.topic)
        reject(new Error(`${this.productId}/${this.deviceId}: ${what} did not happen within ${timeoutMs} ms; last received ${JSON.stringify(got)}`))
      }, timeoutMs)
      const done = (): void => {
        clearTimeout(timer)
        this.off('handled', on)
      }
      this.on('handled', on)
    })
  }

  private async handle(m: ReceivedMessage): Promise<void> {
    try {
      if (m.levels[0] !== 'cmd') return
      const body = parseJson(m.payload)
      switch (m.levels[3]) {
        case '$set_ntp':
          return this.onSetNtp(body, m.at)
        case '$set_tags':
          return await this.onSetTags(body)
        case '$update_shadow':
          return await this.onUpdateShadow(body)
        case '$shadow_reply':
          if (typeof body?.version === 'number' && body.version > this.shadowVersion) this.shadowVersion = body.version
          return
        default:
          return
      }
    } finally {
      this.emit('handled', m)
    }
  }

  private async onSetTags(body: Json | undefined): Promise<void> {
    const tags = body?.tags
    const version = body?.tags_version
    if (!Array.isArray(tags) || typeof version !== 'number' || version <= this.tagsVersion || !this.client) return
    const next = tags.filter((t): t is string => typeof t === 'string')
    const removed = this.tags.filter((t) => !next.includes(t))
    const added = next.filter((t) => !this.tags.includes(t))
    if (removed.length) await this.mqtt.unsubscribeAsync(removed.map((t) => tagFilterOf(this.productId, t)))
    if (added.length) await this.mqtt.subscribeAsync(added.map((t) => tagFilterOf(this.productId, t)), { qos: 1 })
    this.tags = next
    this.tagsVersion = version
  }

  private async onUpdateShadow(doc: Json | undefined): Promise<void> {
    if (typeof doc?.version !== 'number') return
    // The SDK ignores a document older than the version it holds.
    if (doc.version < this.shadowVersion) {
      this.ignoredShadows++
      return
    }
    this.shadowVersion = doc.version
    const desired = (doc.state as { desired?: Json } | undefined)?.desired
    if (!desired || Object.keys(desired).length === 0 || !this.client) return
    this.state = applyPatch(this.state, desired)
    await this.upload('$shadow_updated', { state: { desired: null }, version: doc.version })
  }

  // device_recv is when the answer arrived, not when it was handled.
  private onSetNtp(body: Json | undefined, deviceRecv: number): void {
    const deviceTime = body?.device_time
    const recv = body?.iothub_recv
    const send = body?.iothub_send
    if (typeof deviceTime !== 'number' || typeof recv !== 'number' || typeof send !== 'number') return
    const waiter = this.ntpWaiters.get(deviceTime)
    if (!waiter) return
    this.ntpWaiters.delete(deviceTime)
    waiter({ deviceTime, deviceRecv, iothubRecv: recv, iothubSend: send, now: (recv + send + deviceRecv - deviceTime) / 2 })
  }
}

/** A key set to null deletes it (PROTOCOL.md "Shadow"). */
function applyPatch(base: Json, patch: Json): Json {
  const out = { ...base }
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = v
  }
  return out
}
