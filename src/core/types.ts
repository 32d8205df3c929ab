// The gateway's own types: the only ones that cross between adapters, core, store and bridge.
import type { UpTopic } from './hub-topics.js'

export interface DeviceRef {
  productId: string
  deviceId: string
}

export const deviceKey = (d: DeviceRef): string => `${d.productId}/${d.deviceId}`

export type Transport = 'mqtt' | 'coap' | 'lorawan' | 'serial' | 'http' | 'internal'

/** One message on its way up to the hub. The MessageId is fixed when it enters the gateway. */
export interface Uplink {
  /** Parsed hub topic: kind, device, MessageId and the kind-specific levels. */
  topic: UpTopic
  payload: Buffer
  transport: Transport
  /** Milliseconds since the epoch when the gateway received it. */
  receivedAt: number
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
}

export type DeliveryResult = 'delivered' | 'offline'

/**
 * The one southbound plug point. Every adapter (broker, coap, lorawan, serial, http) implements it
 * and passes the contract suite in test/contract/. Constructors only store their arguments.
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
  /** Whether this adapter is the route to the device (a native device with a live session, a mapped device it owns). */
  owns(device: DeviceRef): boolean
  /** Hand a command to the device. 'offline' means nothing was sent and the core keeps it. */
  deliver(command: Command): Promise<DeliveryResult>
}

/** Stable error codes, one catalogue (docs/troubleshooting.md lists what to do for each). */
export const ErrorCodes = {
  CONFIG_INVALID: 'IHE_CONFIG_INVALID',
  STORE_FULL: 'IHE_STORE_FULL',
  STORE_FAILED: 'IHE_STORE_FAILED',
  BAD_TOPIC: 'IHE_BAD_TOPIC',
  ACL_DENIED: 'IHE_ACL_DENIED',
  AUTH_FAILED: 'IHE_AUTH_FAILED',
  LISTENER_FAILED: 'IHE_LISTENER_FAILED',
  NORTHBOUND: 'IHE_NORTHBOUND',
} as const
