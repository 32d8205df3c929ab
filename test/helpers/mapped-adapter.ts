// A mapped-device adapter for tests: it stands for the LoRaWAN, serial and CoAP-sensor adapters to
// come, whose devices have no device SDK and for which the gateway plays the SDK's part (DESIGN.md,
// "Two kinds of device"). It has no transport of its own: a test plays the device by calling
// `receive()` (a reading arrives) and `reportState()` (the device's own state changed), and reads
// what the gateway handed down from `delivered`.
import { Type } from '@sinclair/typebox'
import type { AdapterContext } from '../../src/core/adapter-context.js'
import type { KeyedAdapterEntry } from '../../src/southbound/registry.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter, Transport } from '../../src/core/types.js'
import { deviceKey } from '../../src/core/types.js'

export interface TestMappedAdapterOptions {
  /** The devices this adapter maps (its configuration, like a ChirpStack application or a serial bus). */
  devices: DeviceRef[]
  /**
   * Which devices are joined from the start (default all; false: none). A device that has not joined
   * yet (the LoRaWAN sense: never heard from) is not owned; `join()` brings it in.
   */
  joined?: boolean | DeviceRef[]
  /** What the uplinks say they came over (default 'serial'; 'internal' is the gateway's own). */
  transport?: Exclude<Transport, 'internal'>
  /** How long `start()` takes (default 0): a real one connects to ChirpStack or opens serial ports first. */
  startDelayMs?: number
  /** Whether its transport is up at start (default true). */
  reachable?: boolean
}

export class TestMappedAdapter implements SouthboundAdapter {
  readonly name = 'test-mapped'
  readonly kind = 'mapped'
  /** Every command handed to a reachable device, in order. */
  readonly delivered: Command[] = []
  private readonly devices: Map<string, DeviceRef>
  private readonly joined = new Set<string>()
  private started = false
  private reachable = true
  private waiters = new Set<() => void>()

  constructor(
    private readonly core: AdapterContext,
    private readonly opts: TestMappedAdapterOptions,
  ) {
    this.devices = new Map(opts.devices.map((d) => [deviceKey(d), d]))
    this.reachable = opts.reachable ?? true
  }

  async start(): Promise<void> {
    if (this.opts.startDelayMs) await new Promise((r) => setTimeout(r, this.opts.startDelayMs))
    this.started = true
    const joined = this.opts.joined ?? true
    for (const k of this.devices.keys()) {
      if (joined === true || (Array.isArray(joined) && joined.some((j) => deviceKey(j) === k))) this.joined.add(k)
    }
  }

  async stop(): Promise<void> {
    this.started = false
    for (const w of this.waiters) w()
  }

  /**
   * The route to a mapped device it knows, reachable or not: a sleeping device stays mapped (the
   * core keeps its shadow and tags and queues its commands); `deliver()` says 'offline' meanwhile.
   */
  owns(device: DeviceRef): boolean {
    return this.started && this.joined.has(deviceKey(device))
  }

  async deliver(command: Command): Promise<DeliveryResult> {
    if (!this.owns(command.device) || !this.reachable) return 'offline'
    this.delivered.push(command)
    for (const w of this.waiters) w()
    return 'delivered'
  }

  /** A device is heard from for the first time (a LoRaWAN join, a first poll answered). */
  join(device: DeviceRef): void {
    const k = deviceKey(device)
    if (!this.devices.has(k)) throw new Error(`TestMappedAdapter: ${k} is not one of its devices`)
    this.joined.add(k)
    if (this.reachable) this.opened(device)
  }

  /**
   * The transport goes down (radio out of range, serial bus unplugged) or comes back. Coming back
   * reports each joined device reachable, which is how the core learns to deliver what waited.
   */
  setReachable(reachable: boolean): void {
    if (reachable === this.reachable) return
    this.reachable = reachable
    for (const k of this.joined) {
      const d = this.devices.get(k)!
      if (reachable) this.opened(d)
      else this.closed(d)
    }
  }

  /** A reading from a device: resolves once the core made it durable (acknowledge the device then). */
  receive(device: DeviceRef, dataType: string, messageId: string, payload: Buffer): Promise<void> {
    if (!this.owns(device)) return Promise.reject(new Error(`TestMappedAdapter: ${deviceKey(device)} is not joined`))
    return this.core.uplink({
      topic: { kind: 'upload_data', productId: device.productId, deviceId: device.deviceId, name: dataType, messageId },
      payload,
      transport: this.opts.transport ?? 'serial',
      receivedAt: Date.now(),
    })
  }

  /** The device's own state changed: the core reports it to the shadow on its behalf. */
  reportState(device: DeviceRef, reported: Record<string, unknown>): Promise<void> {
    return this.core.reportState(device, reported)
  }

  /** Commands delivered to one device (optionally only those with this name). */
  deliveredTo(device: DeviceRef, name?: string): Command[] {
    return this.delivered.filter((c) => deviceKey(c.device) === deviceKey(device) && (name === undefined || c.name === name))
  }

  /** Resolves with the first delivered command (already delivered or still to come) that matches. */
  waitForDelivery(match: (c: Command) => boolean, timeoutMs = 5_000, what = 'a command'): Promise<Command> {
    const have = this.delivered.find(match)
    if (have) return Promise.resolve(have)
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.delivered.find(match)
        if (found) {
          done()
          resolve(found)
        } else if (!this.started) {
          done()
          reject(new Error(`TestMappedAdapter: stopped while waiting for ${what}`))
        }
      }
      const timer = setTimeout(() => {
        done()
        const got = this.delivered.map((c) => `${deviceKey(c.device)} ${c.name} ${c.requestId}`)
        reject(new Error(`TestMappedAdapter: ${what} was not delivered within ${timeoutMs} ms; delivered: ${JSON.stringify(got)}`))
      }, timeoutMs)
      const done = (): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
      }
      this.waiters.add(check)
    })
  }

  private opened(device: DeviceRef): void {
    this.core.deviceReachable(device)
  }

  private closed(device: DeviceRef): void {
    this.core.deviceAway(device)
  }
}

/**
 * The test mapped adapter as an entry of the adapter registry (config key `testMapped`, always on),
 * built by `create` so the test keeps a handle on it.
 */
export function testMappedAdapterEntry(create: (ctx: AdapterContext) => TestMappedAdapter): KeyedAdapterEntry {
  const schema = Type.Object({}, { additionalProperties: false, default: {} })
  return {
    key: 'testMapped',
    name: 'test-mapped',
    transport: 'serial',
    schema,
    configSchema: schema,
    always: true,
    required: true,
    load: async () => ({ adapterModule: { create: (ctx) => ({ adapter: create(ctx) }) } }),
  }
}
