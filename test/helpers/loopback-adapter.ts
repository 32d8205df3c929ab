// A native adapter that is not MQTT, for tests of the adapter seams: its "devices" are objects in
// the test that log in with their secret, subscribe tag filters and send up topics the way a CoAP or
// HTTP device would, and it records everything the core hands down to each. It registers through
// the adapter registry like a real one, with its own config section, metric and diagnostic route.
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { Counter } from 'prom-client'
import type { AdapterContext } from '../../src/core/adapter-context.js'
import { parseUpTopic } from '../../src/core/hub-topics.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../src/core/types.js'
import { deviceKey } from '../../src/core/types.js'
import type { KeyedAdapterEntry } from '../../src/southbound/registry.js'

export const LoopbackSchema = Type.Object(
  {
    label: Type.String({ default: 'loopback', description: 'shown by its diagnostic route' }),
    failStart: Type.Boolean({ default: false, description: 'start() throws (an adapter whose peer is missing)' }),
  },
  { additionalProperties: false },
)
export type LoopbackConfig = Static<typeof LoopbackSchema>

export class LoopbackAdapter implements SouthboundAdapter {
  readonly name = 'loopback'
  readonly kind = 'native'
  /** What the core handed down, per device key, in order. */
  readonly inbox = new Map<string, Command[]>()
  private readonly online = new Map<string, { clientId: string; device: DeviceRef }>()
  private deliveries?: Counter
  private waiters = new Set<() => void>()

  constructor(
    private readonly ctx: AdapterContext,
    readonly config: LoopbackConfig,
  ) {}

  async start(): Promise<void> {
    if (this.config.failStart) throw new Error('loopback: the peer it needs is not there (failStart)')
    this.deliveries = this.ctx.metrics.counter('deliveries_total', 'Commands handed to loopback devices')
  }

  async stop(): Promise<void> {
    for (const d of [...this.online.values()]) this.disconnect(d.device)
  }

  owns(device: DeviceRef): boolean {
    return this.online.has(deviceKey(device))
  }

  async deliver(command: Command): Promise<DeliveryResult> {
    if (!this.owns(command.device)) return 'offline'
    const key = deviceKey(command.device)
    this.inbox.set(key, [...(this.inbox.get(key) ?? []), command])
    this.deliveries?.inc()
    for (const w of this.waiters) w()
    return 'delivered'
  }

  /** A device logs in (as a CoAP client would with `u`/`p` on each request). */
  async connect(device: DeviceRef, secret: string): Promise<void> {
    const result = await this.ctx.devices.authenticate(device, secret)
    if (result !== 'ok') throw new Error(`loopback: ${deviceKey(device)} refused (${result})`)
    const session = { clientId: `loopback:${deviceKey(device)}`, device, transport: 'coap' as const, ipaddress: '127.0.0.1', keepalive: null, protoVer: null }
    this.online.set(deviceKey(device), session)
    this.ctx.sessionOpened(session)
  }

  disconnect(device: DeviceRef): void {
    const s = this.online.get(deviceKey(device))
    if (!s) return
    this.online.delete(deviceKey(device))
    this.ctx.sessionClosed({ ...s, transport: 'coap', ipaddress: '127.0.0.1', keepalive: null, protoVer: null })
  }

  subscribeTag(device: DeviceRef, filter: string): void {
    this.ctx.tagSubscribed(device, `loopback:${deviceKey(device)}`, filter)
  }

  /** A device sends an up topic; resolves once the core made it durable (or answered it). */
  send(topic: string, payload: string): Promise<void> {
    const up = parseUpTopic(topic)
    if (!up) throw new Error(`loopback: not an up topic: ${topic}`)
    return this.ctx.uplink({ topic: up, payload: Buffer.from(payload), transport: 'coap', receivedAt: Date.now(), meta: { remoteAddress: '127.0.0.1' } })
  }

  /** The first command for the device that matches, delivered already or still to come. */
  waitFor(device: DeviceRef, match: (c: Command) => boolean, timeoutMs = 10_000): Promise<Command> {
    const find = (): Command | undefined => this.inbox.get(deviceKey(device))?.find(match)
    const have = find()
    if (have) return Promise.resolve(have)
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const c = find()
        if (!c) return
        done()
        resolve(c)
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`loopback: nothing matching for ${deviceKey(device)} within ${timeoutMs} ms; got ${JSON.stringify(this.inbox.get(deviceKey(device))?.map((c) => c.name) ?? [])}`))
      }, timeoutMs)
      const done = (): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
      }
      this.waiters.add(check)
    })
  }

  /** Its diagnostic route: mounted by the gateway under /api/adapters/loopback/. */
  readonly routes: FastifyPluginAsync = async (app) => {
    app.get('/devices', async () => ({
      label: this.config.label,
      online: [...this.online.keys()],
      delivered: Object.fromEntries([...this.inbox].map(([k, cmds]) => [k, cmds.length])),
    }))
  }
}

/** The loopback adapter as a registry entry (config key `loopback`, runs only when configured). */
export function loopbackAdapterEntry(onCreate: (a: LoopbackAdapter) => void = () => undefined): KeyedAdapterEntry {
  return {
    key: 'loopback',
    name: 'loopback',
    transport: 'coap',
    schema: LoopbackSchema,
    configSchema: Type.Optional(LoopbackSchema),
    always: false,
    required: false,
    load: async () => ({
      adapterModule: {
        create: (ctx, config) => {
          const adapter = new LoopbackAdapter(ctx, config as LoopbackConfig)
          onCreate(adapter)
          return { adapter, routes: adapter.routes }
        },
      },
    }),
  }
}
