// What an adapter may use of the core. Adapters never write SQL, never touch the cloud link and
// never talk to each other: everything goes through this seam (DESIGN.md, "One pipeline").
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { Command, DeviceRef, Transport, Uplink } from './types.js'
import type { DeviceRegistry } from '../store/devices.js'

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

export interface CoreApi {
  readonly log: Logger
  readonly metrics: Metrics
  readonly registry: DeviceRegistry
  /** Resolves once the message is durable (the sender may be acknowledged); rejects when it is not. */
  uplink(up: Uplink): Promise<void>
  /** False while the store cannot write (disk full): refuse new work instead of acknowledging it. */
  intakeOpen(): boolean
  /** Register a listener for intake state changes (disk full / writable again). */
  onIntakeChange(listener: (open: boolean) => void): void
  sessionOpened(s: ClientSession): void
  sessionClosed(s: ClientSession): void
  /** A native device subscribed / unsubscribed a tag filter on a local listener (mirrored on the hub). */
  tagSubscribed(device: DeviceRef, clientId: string, filter: string): void
  tagUnsubscribed(clientId: string, filter: string): void
  /** A mapped device's own state changed: the gateway reports it to the shadow as the SDK would. */
  reportState(device: DeviceRef, reported: Record<string, unknown>): Promise<void>
  /**
   * Reply to a command on a mapped device's behalf (cmd_resp/rpc_resp through the outbox), with the
   * shape every gateway-written reply has.
   */
  replyFor(cmd: Command, status: ReplyStatus, extra?: { reason?: string; code?: number | string }): Promise<void>
}

export type ReplyStatus = 'ok' | 'sent' | 'acknowledged' | 'not_acknowledged' | 'failed' | 'expired'
