// What an adapter may use of the core: everything goes through this seam (DESIGN.md, "One
// pipeline"). Adapters never write SQL, never touch the cloud link and never talk to each other.
// Each adapter gets its own context: its logger, its metrics and its seen-set are its own.
import type { Counter, Gauge } from 'prom-client'
import type { Logger } from './log.js'
import type { Command, DeviceRef, Transport, Uplink } from './types.js'
import type { LocalFile } from './local-files.js'
import type { BrokerSessionStore, PacketMarks, QueueDrop } from '../store/broker-sessions.js'

export type { BrokerSessionStore, PacketMarks, QueueDrop }

/** A native device's connection (an MQTT session, a CoAP client that registered). */
export interface ClientSession {
  clientId: string
  device: DeviceRef
  transport: Transport
  ipaddress: string | null
  keepalive: number | null
  protoVer: number | null
  /** Set by the core when the session opens. */
  connectedAt?: number
  /** A persistent session (MQTT clean session off): its subscriptions outlive the connection. */
  persistent?: boolean
}

export type AuthResult = 'ok' | 'unknown' | 'disabled' | 'bad_secret'

/** A device as an adapter sees it: identity, tags and whether it may connect. Never its secret. */
export interface DeviceInfo extends DeviceRef {
  tags: string[]
  enabled: boolean
}

/** Authentication and device lookups (not the registry store itself). */
export interface DeviceDirectory {
  /** One scrypt the first time, microseconds after: fine per request for transports without sessions. */
  authenticate(device: DeviceRef, secret: string): Promise<AuthResult>
  get(device: DeviceRef): DeviceInfo | undefined
  list(): DeviceInfo[]
  /**
   * Mapped adapters: make sure a device the adapter maps exists as a child (a LoRaWAN device heard
   * from for the first time under an auto-registration rule). Creates it with these tags when
   * absent, with a random secret nobody is told (it cannot log in itself: the adapter speaks for
   * it); returns the existing device unchanged otherwise.
   */
  register(device: DeviceRef, opts?: { tags?: string[] }): Promise<DeviceInfo>
  /** The device was disabled or removed: close what it holds open. */
  onRevoked(listener: (device: DeviceRef, why: 'disabled' | 'removed') => void): void
}

/** A durable set of ids this adapter has handled, each remembered for `ttlMs` (also across restarts). */
export interface SeenSet {
  /** True the first time within its time to live; false for a repeat. A synchronous durable write. */
  firstTime(id: string): boolean
  /**
   * Whether `id` was recorded (and has not expired), recording nothing. For marking only once the
   * work is durable: check with `has()`, do the work, then `firstTime()`; a crash in between then
   * repeats the work instead of losing it.
   */
  has(id: string): boolean
  /** Forget `id` (the work it guarded failed and may be retried). A synchronous durable write. */
  forget(id: string): void
}

/**
 * Durable records of work this adapter has in flight at its peer, kept across restarts (a LoRaWAN
 * downlink queued at ChirpStack and the command whose reply its fate becomes). Values are JSON; each
 * record has its own expiry, after which it is gone.
 */
export interface RecordSet<T> {
  /** Write or replace one record: a synchronous durable write. */
  put(id: string, value: T, expiresAt: number): void
  get(id: string): T | undefined
  delete(id: string): void
  /** Every record not expired, oldest first. */
  list(): { id: string; value: T; expiresAt: number }[]
}

/** The adapter's own metrics, named `iothub_edge_{adapter}_{name}` on /metrics. */
export interface AdapterMetrics {
  counter<L extends string>(name: string, help: string, labelNames?: readonly L[]): Counter<L>
  gauge<L extends string>(name: string, help: string, labelNames?: readonly L[]): Gauge<L>
  /** The core's count of refused input, by reason (bad_topic, acl_denied, auth_failed, malformed_packet, store_full). */
  rejected(reason: string): void
}

export type ReplyStatus = 'ok' | 'sent' | 'acknowledged' | 'not_acknowledged' | 'failed' | 'expired'

export interface AdapterContext {
  readonly log: Logger
  readonly metrics: AdapterMetrics
  readonly devices: DeviceDirectory
  /** A durable seen-set scoped to this adapter; `name` tells sets of one adapter apart. */
  seen(name: string, ttlMs: number): SeenSet
  /** Durable records scoped to this adapter; `name` tells sets of one adapter apart. */
  records<T>(name: string): RecordSet<T>
  /** Resolves once the message is durable (the sender may be acknowledged); rejects when it is not. */
  uplink(up: Uplink): Promise<void>
  /** False while the store cannot write (disk full) or the gateway stops: refuse new work instead of acknowledging it. */
  intakeOpen(): boolean
  /** Register a listener for intake state changes (disk full / writable again). */
  onIntakeChange(listener: (open: boolean) => void): void

  // native devices
  /** A native device connected: `$connection` goes up, what waited for it is delivered. */
  sessionOpened(s: ClientSession): void
  sessionClosed(s: ClientSession): void
  /** A native device subscribed / unsubscribed a tag filter (the core holds it on the hub and relays tag commands). */
  tagSubscribed(device: DeviceRef, clientId: string, filter: string): void
  tagUnsubscribed(clientId: string, filter: string): void

  // mapped devices
  /** A mapped device can be reached now (joined, heard from, its bus is back): what waited for it is delivered. */
  deviceReachable(device: DeviceRef): void
  /** A mapped device cannot be reached for now (out of range, bus unplugged): commands wait. */
  deviceAway(device: DeviceRef): void
  /** A mapped device's own state changed: the gateway reports it to the shadow as the SDK would. */
  reportState(device: DeviceRef, reported: Record<string, unknown>): Promise<void>
  /**
   * Reply to a command on a mapped device's behalf (cmd_resp/rpc_resp through the outbox), with the
   * shape every gateway-written reply has.
   */
  replyFor(cmd: Command, status: ReplyStatus, extra?: { reason?: string; code?: number | string }): Promise<void>

  /** A file the gateway serves its devices (an OTA image) by the token in its URL; undefined if none or no longer. */
  localFile(token: string): LocalFile | undefined

  /**
   * The state of an MQTT broker's sessions, retained messages and wills (aedes' persistence
   * interface): in {dataDir}/broker.db, or in memory only when `broker.persistence` is memory (or
   * broker.db could not be opened; `file` is then undefined). Undefined only for a core built
   * without one (tests): the broker then uses aedes' own memory persistence.
   */
  brokerSessions(): BrokerSessionStore | undefined
}
