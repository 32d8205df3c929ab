// A device on the command path as the device SDK is on the wire (PROTOCOL.md "Down"): it relies on
// the broker's server-side subscriptions to cmd/rpc/m2m (it does not subscribe to them itself,
// except against Mosquitto, which has none), replies to RPCs on `rpc_resp` at once, and to commands
// on `cmd_resp` when told to. Unlike the SDK it keeps every message it receives, duplicates and
// expired ones included: tests look at what the broker handed it, not at what an SDK would have
// filtered. (test/helpers/sdk-device.ts models the SDK's tags/shadow/NTP state instead.)
import type { Socket } from 'node:net'
import type { MqttClient } from 'mqtt'
import { connectDevice, newMessageId, type DeviceLogin, type ReceivedMessage } from './device.js'

export type { ReceivedMessage }


export interface CommandDeviceOptions {
  /** Subscribe to its own cmd/rpc/m2m topics itself (Mosquitto has no server-side subscriptions). */
  subscribeOwnTopics?: boolean
  /** Reply to every `rpc/...` on `rpc_resp` (default true, payload `{"ok":true}`); the function builds the reply. */
  rpcReply?: false | ((m: ReceivedMessage) => Buffer | string)
  /** Reply to every ordinary `cmd/...` on `cmd_resp` (default: no reply). */
  cmdReply?: (m: ReceivedMessage) => Buffer | string
}

export class CommandDevice {
  readonly messages: ReceivedMessage[] = []
  private readonly waiters = new Set<() => void>()

  private constructor(
    readonly client: MqttClient,
    readonly login: DeviceLogin,
    private readonly opts: CommandDeviceOptions,
  ) {
    client.on('message', (topic, payload, packet) => {
      const m: ReceivedMessage = { topic, levels: topic.split('/'), payload, qos: packet.qos, at: performance.now() }
      this.messages.push(m)
      this.answer(m)
      for (const w of [...this.waiters]) w()
    })
  }

  static async connect(url: string, login: DeviceLogin, opts: CommandDeviceOptions = {}): Promise<CommandDevice> {
    const client = await connectDevice(url, login)
    // An SDK answers an RPC at once; Nagle would hold the rpc_resp behind the PUBACK for ~40 ms.
    ;(client.stream as Socket).setNoDelay?.(true)
    const device = new CommandDevice(client, login, opts)
    if (opts.subscribeOwnTopics) {
      const { productId: p, deviceId: d } = login
      const granted = await client.subscribeAsync([`cmd/${p}/${d}/+/+/+/#`, `rpc/${p}/${d}/+/+/+/#`, `m2m/${p}/${d}/+/+`], { qos: 1 })
      if (granted.some((g) => g.qos === 128)) throw new Error(`${p}/${d}: own topic subscription refused`)
    }
    return device
  }

  get productId(): string {
    return this.login.productId
  }

  get deviceId(): string {
    return this.login.deviceId
  }

  private answer(m: ReceivedMessage): void {
    const [kind, p, d, name, , requestId] = m.levels
    // Internal (`$`) commands are never handed to application code (PROTOCOL.md), so never answered here.
    if (p !== this.productId || d !== this.deviceId || name === undefined || name.startsWith('$')) return
    if (kind === 'rpc' && this.opts.rpcReply !== false) {
      const payload = this.opts.rpcReply ? this.opts.rpcReply(m) : Buffer.from(JSON.stringify({ ok: true }))
      this.client.publish(`rpc_resp/${p}/${d}/${name}/${requestId}/${newMessageId()}`, payload, { qos: 1 })
    } else if (kind === 'cmd' && this.opts.cmdReply) {
      this.client.publish(`cmd_resp/${p}/${d}/${name}/${requestId}/${newMessageId()}`, this.opts.cmdReply(m), { qos: 1 })
    }
  }

  /** Publish with QoS 1; resolves on PUBACK. */
  async publish(topic: string, payload: Buffer | string): Promise<void> {
    await this.client.publishAsync(topic, payload, { qos: 1 })
  }

  /** A `get/.../{resource}/{MessageId}` data request. */
  async get(resource: string, payload: Buffer | string | object = ''): Promise<void> {
    const body = typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload)
    await this.publish(`get/${this.productId}/${this.deviceId}/${resource}/${newMessageId()}`, body)
  }

  /** An `upload_data` with a given DataType; returns its topic. */
  async upload(dataType: string, payload: Buffer | string | object, messageId = newMessageId()): Promise<string> {
    const body = typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload)
    const topic = `upload_data/${this.productId}/${this.deviceId}/${dataType}/${messageId}`
    await this.publish(topic, body)
    return topic
  }

  /** Commands (`cmd/...`) received so far, optionally only those named `name`. */
  commands(name?: string): ReceivedMessage[] {
    return this.messages.filter((m) => m.levels[0] === 'cmd' && (name === undefined || m.levels[3] === name))
  }

  /** Messages received since index `from` that match. */
  since(from: number, match: (m: ReceivedMessage) => boolean = () => true): ReceivedMessage[] {
    return this.messages.slice(from).filter(match)
  }

  /** The first message from index `from` on (already received or still to come) that matches. */
  waitFor(match: string | ((m: ReceivedMessage) => boolean), timeoutMs = 5_000, what?: string, from = 0): Promise<ReceivedMessage> {
    const matches = typeof match === 'string' ? (m: ReceivedMessage): boolean => m.topic === match : match
    return this.until(() => this.messages.slice(from).find(matches), timeoutMs, what ?? String(match))
  }

  /** Resolves once `n` messages from index `from` on match. */
  waitForCount(match: (m: ReceivedMessage) => boolean, n: number, timeoutMs = 5_000, what = 'messages', from = 0): Promise<ReceivedMessage[]> {
    return this.until(
      () => {
        const got = this.messages.slice(from).filter(match)
        return got.length >= n ? got : undefined
      },
      timeoutMs,
      `${n} ${what}`,
    )
  }

  private until<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const now = check()
    if (now !== undefined) return Promise.resolve(now)
    return new Promise((resolve, reject) => {
      const waiter = (): void => {
        const found = check()
        if (found === undefined) return
        clearTimeout(timer)
        this.waiters.delete(waiter)
        resolve(found)
      }
      const timer = setTimeout(() => {
        this.waiters.delete(waiter)
        const got = this.messages.slice(-15).map((m) => `  ${m.topic} ${JSON.stringify(m.payload.toString('utf8').slice(0, 80))}`)
        reject(new Error(`${this.productId}/${this.deviceId}: ${what} not received within ${timeoutMs} ms; last received:\n${got.join('\n') || '  (nothing)'}`))
      }, timeoutMs)
      this.waiters.add(waiter)
    })
  }

  async close(): Promise<void> {
    await this.client.endAsync(true)
  }
}
