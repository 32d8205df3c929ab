// Who is connected: native devices' sessions and mapped devices' reachability, recorded in the
// connection table and told to the hub as `$connection` uploads (PROTOCOL.md, "Up": behind a
// gateway the hub can no longer see its children connect). A device that comes in gets what
// waited for it; a native device that leaves without a persistent session drops its tag filters.
import type { Logger } from './log.js'
import { RateLimitedLog } from './log.js'
import type { ClientSession } from './adapter-context.js'
import type { CommandRouter } from './command-router.js'
import type { TagService } from './tags.js'
import type { DeviceRef, Transport, Uplink } from './types.js'
import { deviceKey } from './types.js'
import { ErrorCodes } from './errors.js'
import { newMessageId } from './message-id.js'
import type { ConnectionStore } from '../store/connections.js'
import { isDiskFull } from '../store/db.js'

interface ConnectionFacts {
  productId: string
  deviceId: string
  clientId: string
  ipaddress: string | null
  protoVer: number | null
  keepalive: number | null
  transport: string
  connectedAt: number | null
}

export interface SessionDeps {
  connections: ConnectionStore
  router: CommandRouter
  tags: TagService
  uplink: (up: Uplink) => Promise<void>
  /** A mapped device came in: its tag filters must be held on the hub. */
  mappedJoined: () => void
  log: Logger
}

export class SessionTracker {
  private readonly warn: RateLimitedLog
  // Mapped devices reachable now, by device key: their pseudo-session (they have no connection).
  private readonly reachable = new Map<string, ClientSession>()
  private open = 0

  constructor(private readonly d: SessionDeps) {
    this.warn = new RateLimitedLog(d.log)
  }

  /** Native sessions and reachable mapped devices right now. */
  get onlineCount(): number {
    return this.open + this.reachable.size
  }

  /** A mapped device its adapter reported reachable (and not away since). */
  isMappedReachable(device: DeviceRef): boolean {
    return this.reachable.has(deviceKey(device))
  }

  /** A previous run that died left sessions marked open: tell the hub they are gone. */
  async reportStale(): Promise<void> {
    try {
      for (const c of this.d.connections.closeStale()) {
        if (c.productId && c.deviceId) {
          await this.d.uplink(connectionUplink({ ...c, productId: c.productId, deviceId: c.deviceId }, false, c.disconnectAt ?? Date.now()))
        }
      }
    } catch (err) {
      this.d.log.warn({ err: (err as Error).message }, 'could not report the connections a previous run left open')
    }
  }

  opened(s: ClientSession): void {
    this.open++
    s.connectedAt = Date.now()
    const c = { ...s, ...s.device, connectedAt: s.connectedAt }
    this.record(() => this.d.connections.connected(c))
    this.announce(c, true, null)
    this.d.log.info({ device: deviceKey(s.device), clientId: s.clientId, transport: s.transport, ip: s.ipaddress, protoVer: s.protoVer, keepalive: s.keepalive }, 'device connected')
    // Commands that waited for this device go now, in order.
    this.d.router.deviceOnline(s.device)
  }

  closed(s: ClientSession): void {
    this.open = Math.max(0, this.open - 1)
    const at = Date.now()
    this.record(() => this.d.connections.disconnected(s.clientId, at))
    // A persistent session keeps its tag subscriptions while away, as the hub's broker would: the
    // core queues what arrives for it meanwhile and hands it over when the device is back.
    if (!s.persistent) this.d.tags.clientGone(s.clientId)
    this.announce({ ...s, ...s.device, connectedAt: s.connectedAt ?? null }, false, at)
    this.d.log.info(
      { device: deviceKey(s.device), clientId: s.clientId, transport: s.transport, connectedForS: s.connectedAt ? Math.round((at - s.connectedAt) / 1000) : null },
      'device disconnected',
    )
  }

  /** A mapped device can be reached: delivered what waits, and `$connection` on the change. */
  mappedReachable(adapter: string, device: DeviceRef, transport: Transport): void {
    const key = deviceKey(device)
    if (!this.reachable.has(key)) {
      const s: ClientSession = { clientId: `${adapter}:${key}`, device, transport, ipaddress: null, keepalive: null, protoVer: null, connectedAt: Date.now() }
      this.reachable.set(key, s)
      const c = { ...s, ...device, connectedAt: s.connectedAt! }
      this.record(() => this.d.connections.connected(c))
      this.announce(c, true, null)
      this.d.log.info({ device: key, adapter, transport }, 'device reachable')
      this.d.mappedJoined()
    }
    this.d.router.deviceOnline(device)
  }

  mappedAway(device: DeviceRef): void {
    const s = this.reachable.get(deviceKey(device))
    if (!s) return
    this.reachable.delete(deviceKey(device))
    const at = Date.now()
    this.record(() => this.d.connections.disconnected(s.clientId, at))
    this.announce({ ...s, ...device, connectedAt: s.connectedAt ?? null }, false, at)
    this.d.log.info({ device: deviceKey(device), clientId: s.clientId, transport: s.transport }, 'device away')
  }

  private announce(c: ConnectionFacts, connected: boolean, disconnectAt: number | null): void {
    this.d.uplink(connectionUplink(c, connected, disconnectAt)).catch((err: Error) =>
      this.warn.warn('connection-uplink', { err: err.message }, 'could not record a $connection event'),
    )
  }

  // The connection table is bookkeeping: a write it cannot make (full disk) is logged, never thrown
  // into an adapter's event handlers, where it would take the process down. A close it misses is
  // reported as stale on the next start.
  private record(write: () => unknown): void {
    try {
      write()
    } catch (err) {
      this.warn.warn('connection-record', { err: (err as Error).message, code: isDiskFull(err) ? ErrorCodes.STORE_FULL : ErrorCodes.STORE_FAILED },
        'could not record a device connection')
    }
  }
}

/** The `$connection` extension upload (PROTOCOL.md, "Up"). */
function connectionUplink(c: ConnectionFacts, connected: boolean, disconnectAt: number | null): Uplink {
  const payload = {
    connected,
    client_id: c.clientId,
    ipaddress: c.ipaddress,
    proto_ver: c.protoVer,
    keepalive: c.keepalive,
    transport: c.transport,
    connected_at: c.connectedAt,
    disconnect_at: disconnectAt,
  }
  return {
    topic: { kind: 'upload_data', productId: c.productId, deviceId: c.deviceId, name: '$connection', messageId: newMessageId() },
    payload: Buffer.from(JSON.stringify(payload)),
    transport: 'internal',
    receivedAt: Date.now(),
  }
}
