// The gateway's own types: the only ones that cross between adapters, core, store and bridge.
import type { UpTopic } from './hub-topics.js'

export interface DeviceRef {
  productId: string
  deviceId: string
}

export const deviceKey = (d: DeviceRef): string => `${d.productId}/${d.deviceId}`

/** The DeviceRef a deviceKey stands for. */
export function parseDeviceKey(key: string): DeviceRef {
  const slash = key.indexOf('/')
  return { productId: key.slice(0, slash), deviceId: key.slice(slash + 1) }
}

export type Transport = 'mqtt' | 'coap' | 'lorawan' | 'serial' | 'http' | 'internal'

/**
 * What the transport knew about a message besides its payload. Every field is optional: an adapter
 * fills what its peer tells it (ChirpStack's rxInfo, a serial port, a CoAP source address).
 */
export interface UplinkMeta {
  /** Best received signal strength, dBm. */
  rssi?: number
  /** Best signal-to-noise ratio, dB. */
  snr?: number
  /** LoRaWAN uplink frame counter (gaps mean lost frames). */
  frameCounter?: number
  /** How many radio gateways heard it. */
  gatewayCount?: number
  /** LoRaWAN FPort, or the serial port path (`/dev/ttyUSB0`). */
  port?: number | string
  /** Modbus: the unit (slave) id on the bus. */
  unitId?: number
  /** Battery level, percent. */
  battery?: number
  /** Where it came from on the network (CoAP/HTTP source address). */
  remoteAddress?: string
}

/** One message on its way up to the hub. The MessageId is fixed when it enters the gateway. */
export interface Uplink {
  /** Parsed hub topic: kind, device, MessageId and the kind-specific levels. */
  topic: UpTopic
  payload: Buffer
  transport: Transport
  /** Milliseconds since the epoch when the gateway received it. */
  receivedAt: number
  meta?: UplinkMeta
}

/** A command on its way down to one device. */
export interface Command {
  type: 'cmd' | 'rpc' | 'm2m'
  device: DeviceRef
  name: string
  encoding: 'plain' | 'base64'
  requestId: string
  expiresAt?: number
  /** m2m: the sending device. */
  senderDeviceId?: string
  payload: Buffer
  /** 1 unless the protocol says otherwise (`$set_tags`, `$update_shadow`, `$shadow_reply` are QoS 0). */
  qos?: 0 | 1
  /**
   * Why this device gets it when it was not addressed to it alone: the hub sent it to a tag the
   * device carries (a native device expects it on the tag's topic, PROTOCOL.md "Tags").
   */
  via?: { tag: string }
}

/** Whether a command's ExpiresAt (seconds since the epoch) has passed: it must not reach the device (PROTOCOL.md). */
export function isExpired(cmd: Pick<Command, 'expiresAt'>, now = Date.now()): boolean {
  return cmd.expiresAt !== undefined && cmd.expiresAt * 1000 < now
}

export type DeliveryResult = 'delivered' | 'offline'

/**
 * The one southbound plug point. Every adapter (broker, coap, lorawan, serial, http) implements it
 * and passes the contract suite of its kind in test/contract/. Constructors only store their
 * arguments; everything the core sends to a device reaches it through `deliver()`.
 */
export interface SouthboundAdapter {
  readonly name: string
  /**
   * native: its devices speak PROTOCOL.md themselves (the gateway relays); mapped: the gateway plays
   * the device SDK's part for them (tags, shadow, replies).
   */
  readonly kind: 'native' | 'mapped'
  start(): Promise<void>
  /** Stop taking input, finish what is in flight, release ports. Idempotent. */
  stop(): Promise<void>
  /**
   * Whether this adapter is the route to the device. native: while the device holds a connection
   * (from its CONNACK on, or the transport's equivalent). mapped: for every device it maps, reachable
   * or not (then `deliver()` answers 'offline' and the core keeps the command queued).
   */
  owns(device: DeviceRef): boolean
  /** Hand a command to the device. 'offline' means nothing was sent and the core keeps it. */
  deliver(command: Command): Promise<DeliveryResult>
}

/**
 * Durable state of the local rules (src/rules): window accumulators, last reported values, alarm
 * states, one JSON value per key. Changes are staged and written inside the outbox's next group
 * commit, in the same transaction as the messages the rules let through or made (decision
 * 0013-rules), so a message and what it did to the rules are durable together or not at all.
 */
export interface RuleStateStore {
  /** Everything kept, at start. */
  load(): Map<string, string>
  /** Stage a change (undefined deletes the key); it is written with the next group commit. */
  stage(key: string, value: string | undefined): void
  /** Resolves once everything staged so far is committed; rejects if that commit failed. */
  committed(): Promise<void>
  /** Called after a failed commit: the staged changes are gone, memory must go back to `load()`. */
  onFailed(listener: () => void): void
}
