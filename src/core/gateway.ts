// The composition root: builds every component from the config, starts sinks first (store,
// bridge) and sources last (adapters, HTTP), stops in reverse with a deadline.
import { createRequire } from 'node:module'
import type { Config } from '../config.js'
import { outboxQuota } from '../config.js'
import { openDatabase, type Db } from '../store/db.js'
import { Outbox } from '../store/outbox.js'
import { DeviceRegistry } from '../store/devices.js'
import { ConnectionStore } from '../store/connections.js'
import { Bridge } from '../northbound/bridge.js'
import { BrokerAdapter } from '../southbound/broker/broker-adapter.js'
import { createLogger, RateLimitedLog, type Logger } from './log.js'
import { Metrics } from './metrics.js'
import { newMessageId } from './message-id.js'
import type { ClientSession, CoreApi } from './core-api.js'
import type { Command, SouthboundAdapter, Uplink } from './types.js'
import { deviceKey, ErrorCodes } from './types.js'
import { HttpApi } from '../web/api.js'

const require = createRequire(import.meta.url)
export const VERSION: string = (require('../../package.json') as { version: string }).version

const STATUS_INTERVAL_MS = 5 * 60_000
const DISK_PROBE_MS = 1_000

export interface GatewayOptions {
  logger?: Logger
}

export class Gateway implements CoreApi {
  readonly log: Logger
  readonly metrics = new Metrics()
  readonly startedAt = Date.now()
  private db!: Db
  outbox!: Outbox
  registry!: DeviceRegistry
  connections!: ConnectionStore
  bridge!: Bridge
  broker!: BrokerAdapter
  http!: HttpApi
  private adapters: SouthboundAdapter[] = []
  private intakeListeners: ((open: boolean) => void)[] = []
  private timers: NodeJS.Timeout[] = []
  private probeTimer?: NodeJS.Timeout
  private readonly warn: RateLimitedLog
  private stopping = false

  constructor(
    readonly cfg: Config,
    opts: GatewayOptions = {},
  ) {
    this.log = opts.logger ?? createLogger(cfg.log.level)
    this.warn = new RateLimitedLog(this.log)
  }

  async start(): Promise<void> {
    const cfg = this.cfg
    this.db = openDatabase(cfg.gateway.dataDir)
    this.outbox = new Outbox(this.db, { maxBytes: outboxQuota(cfg), rpcRespTtlMs: cfg.store.outbox.rpcRespTtlSeconds * 1000 })
    this.outbox.on('dropped', ({ reason, count }: { reason: string; count: number }) =>
      this.warn.warn(`drop:${reason}`, { reason, count, total: this.outbox.stats().dropped }, 'outbox dropped acknowledged messages'),
    )
    this.outbox.on('full', (err: Error) => this.onDiskFull(err))
    this.outbox.on('writable', () => this.onDiskWritable())
    this.outbox.on('error', (err: Error) => this.log.error({ err, code: ErrorCodes.STORE_FAILED }, 'outbox write failed'))
    this.registry = new DeviceRegistry(this.db, cfg.gateway.dataDir, cfg.northbound.mode === 'devices')
    this.connections = new ConnectionStore(this.db)
    const seeded = await this.registry.seed(cfg.devices)
    if (seeded.created || seeded.updated) this.log.info(seeded, 'device registry seeded from config')

    // A previous run that died left sessions marked open: tell the hub they are gone.
    for (const c of this.connections.closeStale()) {
      if (c.productId && c.deviceId) {
        await this.uplink(this.connectionUplink({ ...c, productId: c.productId, deviceId: c.deviceId }, false, c.disconnectAt ?? Date.now()))
      }
    }

    this.bridge = new Bridge(cfg, this.outbox, this.registry, this.metrics, this.log, (cmd) => this.route(cmd), () => void this.reportStatus())
    this.bridge.start()

    this.broker = new BrokerAdapter(this, { listeners: cfg.broker.listeners, aclDenyAction: cfg.broker.aclDenyAction })
    this.adapters = [this.broker]
    for (const a of this.adapters) await a.start()

    this.http = new HttpApi(this)
    await this.http.start()

    this.timers.push(setInterval(() => void this.reportStatus(), STATUS_INTERVAL_MS).unref())
    this.timers.push(setInterval(() => this.updateGauges(), 5_000).unref())
    this.updateGauges()
    this.log.info(
      { version: VERSION, dataDir: cfg.gateway.dataDir, mqtt: this.broker.ports, http: this.http.port, northbound: cfg.northbound.url ?? null },
      'gateway started',
    )
  }

  // --- CoreApi -------------------------------------------------------------------------------

  uplink(up: Uplink): Promise<void> {
    this.metrics.uplinks.inc({ transport: up.transport, kind: up.topic.kind })
    return this.outbox.enqueue(up)
  }

  intakeOpen(): boolean {
    return !this.outbox.isFull && !this.stopping
  }

  onIntakeChange(listener: (open: boolean) => void): void {
    this.intakeListeners.push(listener)
  }

  sessionOpened(s: ClientSession): void {
    s.connectedAt = Date.now()
    const info = this.connections.connected({ ...s, ...s.device, connectedAt: s.connectedAt })
    this.uplink(this.connectionUplink({ ...info, ...s.device }, true, null)).catch((err: Error) =>
      this.warn.warn('connection-uplink', { err: err.message }, 'could not record a $connection event'),
    )
  }

  sessionClosed(s: ClientSession): void {
    const at = Date.now()
    this.connections.disconnected(s.clientId, at)
    this.uplink(
      this.connectionUplink({ ...s, ...s.device, connectedAt: s.connectedAt ?? null }, false, at),
    ).catch((err: Error) => this.warn.warn('connection-uplink', { err: err.message }, 'could not record a $connection event'))
  }

  // --- internals -----------------------------------------------------------------------------

  /** The `$connection` extension upload (PROTOCOL.md, "Up"): the hub can no longer see child connections. */
  private connectionUplink(
    c: { productId: string; deviceId: string; clientId: string; ipaddress: string | null; protoVer: number | null; keepalive: number | null; transport: string; connectedAt: number | null },
    connected: boolean,
    disconnectAt: number | null,
  ): Uplink {
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

  /** The gateway is itself a device of the hub: version, uptime, outbox depth, children online. */
  private async reportStatus(): Promise<void> {
    const s = this.outbox.stats()
    const status = {
      version: VERSION,
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      outbox_messages: s.messages,
      outbox_bytes: s.bytes,
      outbox_oldest_age_ms: s.oldestAgeMs,
      outbox_dropped: s.dropped,
      children_online: this.connections.list().filter((c) => c.connected).length,
      local_clients: this.broker?.clientCount ?? 0,
    }
    try {
      await this.uplink({
        topic: { kind: 'update_status', productId: this.cfg.gateway.productId, deviceId: this.cfg.gateway.deviceId, messageId: newMessageId() },
        payload: Buffer.from(JSON.stringify(status)),
        transport: 'internal',
        receivedAt: Date.now(),
      })
    } catch (err) {
      this.warn.warn('status', { err: (err as Error).message }, 'could not queue the gateway status report')
    }
  }

  /** Down: a command from the hub to the adapter that owns the device (durable queueing: cloud-to-device issue). */
  route(cmd: Command): void {
    if (cmd.expiresAt !== undefined && cmd.expiresAt * 1000 < Date.now()) {
      this.metrics.downlinks.inc({ outcome: 'expired' })
      return
    }
    const adapter = this.adapters.find((a) => a.owns(cmd.device))
    if (!adapter) {
      this.metrics.downlinks.inc({ outcome: 'offline' })
      this.log.info({ device: deviceKey(cmd.device), name: cmd.name, requestId: cmd.requestId }, 'command for a device that is not connected')
      return
    }
    adapter.deliver(cmd).then(
      (r) => this.metrics.downlinks.inc({ outcome: r }),
      (err: Error) => this.log.warn({ err: err.message, device: deviceKey(cmd.device) }, 'command delivery failed'),
    )
  }

  private onDiskFull(err: Error): void {
    this.metrics.storeFull.set(1)
    this.metrics.rejected.inc({ reason: 'store_full' })
    this.log.error(
      { err: err.message, code: ErrorCodes.STORE_FULL, dataDir: this.cfg.gateway.dataDir },
      'data disk is full: no longer acknowledging messages; free space in the data folder and intake resumes by itself',
    )
    for (const l of this.intakeListeners) l(false)
    clearInterval(this.probeTimer)
    this.probeTimer = setInterval(() => {
      if (this.outbox.probe()) clearInterval(this.probeTimer)
    }, DISK_PROBE_MS)
  }

  private onDiskWritable(): void {
    clearInterval(this.probeTimer)
    this.metrics.storeFull.set(0)
    this.log.info('data disk writable again: intake resumed')
    for (const l of this.intakeListeners) l(true)
  }

  updateGauges(): void {
    const s = this.outbox.stats()
    this.metrics.outboxMessages.set(s.messages)
    this.metrics.outboxBytes.set(s.bytes)
    this.metrics.outboxQuota.set(s.maxBytes)
    this.metrics.outboxOldest.set(s.oldestAgeMs / 1000)
    for (const [reason, n] of Object.entries(s.dropped)) this.metrics.dropped.set({ reason }, n)
  }

  health(): { status: 'ok' | 'degraded'; reasons: string[] } {
    const reasons: string[] = []
    if (this.outbox.isFull) reasons.push('disk_full')
    if (this.outbox.stats().bytes > 0.9 * this.outbox.maxBytes) reasons.push('outbox_near_quota')
    return { status: reasons.length ? 'degraded' : 'ok', reasons }
  }

  /** Stop intake, finish the batch in flight, close the database. Bounded by `deadlineMs`. */
  async stop(deadlineMs = 8_000): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    const work = async (): Promise<void> => {
      for (const t of this.timers) clearInterval(t)
      clearInterval(this.probeTimer)
      await this.http?.stop()
      for (const a of [...this.adapters].reverse()) await a.stop()
      await this.bridge?.stop()
    }
    await Promise.race([work(), new Promise((r) => setTimeout(r, deadlineMs).unref())])
    this.outbox?.close()
    this.db?.close()
    this.log.info('gateway stopped')
  }
}
