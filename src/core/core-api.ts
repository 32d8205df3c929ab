// What an adapter may use of the core. Adapters never write SQL, never touch the cloud link and
// never talk to each other: everything goes through this seam (DESIGN.md, "One pipeline").
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { DeviceRef, Transport, Uplink } from './types.js'
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
}
