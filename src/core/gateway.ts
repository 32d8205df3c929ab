// The composition root: builds every component from the config, starts sinks first (store,
// bridge) and sources last (adapters, HTTP), stops in reverse with a deadline.
import { createRequire } from 'node:module'
import type { Config } from '../config.js'
import { outboxQuota } from '../config.js'
import { freeBytes, isDiskFull, openDatabase, type Db } from '../store/db.js'
import { Outbox, RESUME_FREE_BYTES } from '../store/outbox.js'
import { DeviceRegistry } from '../store/devices.js'
import { ConnectionStore } from '../store/connections.js'
import { Bridge } from '../northbound/bridge.js'
import { BrokerAdapter } from '../southbound/broker/broker-adapter.js'
import { createLogger, RateLimitedLog, type Logger } from './log.js'
import { Metrics } from './metrics.js'
import { newMessageId } from './message-id.js'
import type { ClientSession, CoreApi, ReplyStatus } from './core-api.js'
import type { Command, DeviceRef, SouthboundAdapter, Uplink } from './types.js'
import { deviceKey, ErrorCodes } from './types.js'
import { HttpApi } from '../web/api.js'
import { CommandStore } from '../store/commands.js'
import { ShadowStore } from '../store/shadows.js'
import { HubSubscriptionStore } from '../store/hub-subscriptions.js'
import { CommandRouter } from './command-router.js'
import { TagService } from './tags.js'
import { ShadowService } from './shadows.js'
import { HubClock } from './clock.js'
import { parseJsonObject } from './shadow-doc.js'
import { formatDownTopic, parseDownTopic } from './hub-topics.js'

const require = createRequire(import.meta.url)
export const VERSION: string = (require('../../package.json') as { version: string }).version

const STATUS_INTERVAL_MS = 5 * 60_000
const DISK_PROBE_MS = 1_000
const SWEEP_INTERVAL_MS = 60_000
const NTP_INTERVAL_MS = 10 * 60_000

// Internal commands the hub sends with QoS 0 (PROTOCOL.md "QoS"): relayed to a native device if it
// is online, never queued (the device asks again on its next connect).
const QOS0_INTERNAL = new Set(['$set_tags', '$update_shadow', '$shadow_reply'])

export interface GatewayOptions {
  logger?: Logger
  /** More southbound adapters (mapped devices), built once the core exists. */
  adapters?: (core: CoreApi) => SouthboundAdapter[]
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
  commands!: CommandStore
  router!: CommandRouter
  tags!: TagService
  shadows!: ShadowService
  readonly clock = new HubClock()
  private adapters: SouthboundAdapter[] = []
  private intakeListeners: ((open: boolean) => void)[] = []
  private timers: NodeJS.Timeout[] = []
  private probeTimer?: NodeJS.Timeout
  private readonly warn: RateLimitedLog
  private stopping = false

  constructor(
    readonly cfg: Config,
    private readonly opts: GatewayOptions = {},
  ) {
    this.log = opts.logger ?? createLogger(cfg.log.level)
    this.warn = new RateLimitedLog(this.log)
  }

  async start(): Promise<void> {
    const cfg = this.cfg
    this.db = openDatabase(cfg.gateway.dataDir)
    const maxBytes = this.defaultQuota()
    this.outbox = new Outbox(this.db, { maxBytes, rpcRespTtlMs: cfg.store.outbox.rpcRespTtlSeconds * 1000 })
    // The quota counts rows; SQLite needs about as much again (indexes, the WAL, room to checkpoint).
    // A quota near the free space means the disk fills before the quota ever evicts anything.
    const free = freeBytes(cfg.gateway.dataDir)
    if (cfg.store.outbox.maxBytes && maxBytes > free / 2) {
      this.log.warn(
        { maxBytes, freeBytes: free, dataDir: cfg.gateway.dataDir, code: ErrorCodes.CONFIG_INVALID },
        'store.outbox.maxBytes is more than half the free space of the data disk: the disk will fill before the quota applies; lower it or free space',
      )
    }
    this.outbox.on('dropped', ({ reason, count }: { reason: string; count: number }) =>
      this.warn.warn(`drop:${reason}`, { reason, count, total: this.outbox.stats().dropped }, 'outbox dropped acknowledged messages'),
    )
    this.outbox.on('full', (err: Error) => this.onDiskFull(err))
    this.outbox.on('writable', () => this.onDiskWritable())
    this.outbox.on('error', (err: Error) => this.log.error({ err, code: ErrorCodes.STORE_FAILED }, 'outbox write failed'))
    this.outbox.checkHeadroom()
    this.registry = new DeviceRegistry(this.db, cfg.gateway.dataDir, cfg.northbound.mode === 'devices')
    this.connections = new ConnectionStore(this.db)
    // A gateway restarted on a full disk must still come up (degraded) and serve what it has: the
    // bookkeeping below is retried at the next start if it cannot be written now.
    try {
      const seeded = await this.registry.seed(cfg.devices)
      if (seeded.created || seeded.updated) this.log.info(seeded, 'device registry seeded from config')
    } catch (err) {
      this.log.error({ err, code: isDiskFull(err) ? ErrorCodes.STORE_FULL : ErrorCodes.STORE_FAILED }, 'could not seed the device registry from the config')
    }
    try {
      // A previous run that died left sessions marked open: tell the hub they are gone.
      for (const c of this.connections.closeStale()) {
        if (c.productId && c.deviceId) {
          await this.uplink(this.connectionUplink({ ...c, productId: c.productId, deviceId: c.deviceId }, false, c.disconnectAt ?? Date.now()))
        }
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not report the connections a previous run left open')
    }

    this.commands = new CommandStore(this.db)
    this.router = new CommandRouter({
      store: this.commands,
      adapters: () => this.adapters,
      log: this.log.child({ component: 'commands' }),
      metrics: this.metrics,
      seenTtlMs: cfg.store.commands.seenTtlSeconds * 1000,
    })
    const publishLocal = (topic: string, payload: Buffer, qos: 0 | 1): Promise<void> => this.broker.publishLocal(topic, payload, qos)
    const isMapped = (d: DeviceRef): boolean => this.isMapped(d)
    this.tags = new TagService({ registry: this.registry, store: this.commands, router: this.router, isMapped, publishLocal, log: this.log })
    this.shadows = new ShadowService({
      store: new ShadowStore(this.db),
      router: this.router,
      isMapped,
      uplink: (up) => this.uplink(up),
      publishLocal,
      log: this.log.child({ component: 'shadows' }),
    })

    const held = new HubSubscriptionStore(this.db)
    this.bridge = new Bridge(cfg, this.outbox, this.registry, this.metrics, this.log, {
      onMessage: (topic, payload) => this.fromHub(topic, payload),
      onConnected: () => this.onHubConnected(),
      extraSubscriptions: (d) => this.tags.hubFilters(d),
      heldSubscriptions: (link) => ({ load: () => held.load(link), save: (filters) => held.save(link, filters) }),
    })
    this.tags.on('changed', this.bridge.resubscribe)
    this.registry.on('changed', () => this.tags.registryChanged())
    this.bridge.start()

    this.broker = new BrokerAdapter(this, { listeners: cfg.broker.listeners, aclDenyAction: cfg.broker.aclDenyAction })
    this.adapters = [this.broker, ...(this.opts.adapters?.(this) ?? [])]
    for (const a of this.adapters) await a.start()
    // Mapped devices that are reachable now get what waited for them.
    for (const d of this.registry.list()) if (this.isMapped(d)) this.router.deviceOnline(d)
    // A device counts as mapped once its adapter owns it: the hub link may have come up while the
    // adapters were starting, without the mapped devices' tag filters and their on-connect requests.
    this.bridge.resubscribe()
    this.askForMappedState()

    this.http = new HttpApi(this)
    await this.http.start()

    this.timers.push(setInterval(() => void this.reportStatus(), STATUS_INTERVAL_MS).unref())
    this.timers.push(setInterval(() => this.updateGauges(), 5_000).unref())
    this.timers.push(setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref())
    this.timers.push(setInterval(() => this.probeHubClock(), NTP_INTERVAL_MS).unref())
    this.updateGauges()
    this.log.info(
      { version: VERSION, dataDir: cfg.gateway.dataDir, mqtt: this.broker.ports, http: this.http.port, northbound: cfg.northbound.url ?? null },
      'gateway started',
    )
  }

  /**
   * The outbox quota. Configured, or derived from the disk at start; a derived quota never shrinks
   * across restarts (it is kept in the database): measured on a disk that filled up, it would be
   * tiny and would evict what was acknowledged before the restart.
   */
  private defaultQuota(): number {
    const measured = outboxQuota(this.cfg)
    if (this.cfg.store.outbox.maxBytes) return measured
    const row = this.db.prepare("SELECT value FROM counters WHERE name = 'outbox.default_quota'").get() as { value: number } | undefined
    const quota = Math.max(measured, row?.value ?? 0)
    if (quota !== row?.value) {
      try {
        this.db.prepare("INSERT INTO counters (name, value) VALUES ('outbox.default_quota', ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value").run(quota)
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'could not record the outbox quota')
      }
    }
    return quota
  }

  // --- CoreApi -------------------------------------------------------------------------------

  /**
   * Up: everything a device sends enters here. Most of it goes to the outbox; some of it the
   * gateway answers or delivers itself (PROTOCOL.md "Internal data requests", m2m between children,
   * replies to the gateway's own commands). Resolves once the message is durable or handled.
   */
  uplink(up: Uplink): Promise<void> {
    this.metrics.uplinks.inc({ transport: up.transport, kind: up.topic.kind })
    const t = up.topic
    const device = { productId: t.productId, deviceId: t.deviceId }
    try {
      switch (t.kind) {
        case 'get':
          // `$ntp` is always answered here: the gateway is closer than the hub, so more accurate.
          if (t.name === '$ntp') return this.answerNtp(up)
          // `$tags`/`$shadow`: the hub answers when it is reachable, the gateway's copies otherwise.
          if (t.name === '$tags' && !this.bridge.status().connected) return this.tags.answerLocally(device, up.payload, newMessageId())
          if (t.name === '$shadow' && !this.bridge.status().connected) return this.shadows.answerLocally(device)
          break
        case 'cmd_resp':
        case 'rpc_resp':
          // Replies to the gateway's own (local API) commands stay local.
          if (this.router.reply(device, t.requestId!, up.payload)) return Promise.resolve()
          break
        case 'm2m': {
          // Between two children of this gateway: delivered here, with or without the hub (which
          // would only echo it back).
          const target = { productId: t.productId, deviceId: t.targetDeviceId! }
          if (this.registry.get(target)) {
            this.router.accept(
              { type: 'm2m', device: target, name: '', encoding: 'plain', requestId: t.messageId, senderDeviceId: t.deviceId, payload: up.payload },
              'm2m',
            )
            return Promise.resolve()
          }
          break
        }
        case 'upload_data':
          if (up.transport !== 'internal' && (t.name === '$shadow_updated' || t.name === '$shadow_reported')) {
            this.shadows.onDeviceUpload(device, t.name, up.payload)
          }
          break
        default:
          break
      }
    } catch (err) {
      // A store write for a local path failed (disk full): not durable, so not acknowledged.
      return Promise.reject(err as Error)
    }
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
    const c = { ...s, ...s.device, connectedAt: s.connectedAt }
    this.recordConnection(() => this.connections.connected(c))
    this.uplink(this.connectionUplink(c, true, null)).catch((err: Error) =>
      this.warn.warn('connection-uplink', { err: err.message }, 'could not record a $connection event'),
    )
    // Commands that waited for this device go now, in order.
    this.router.deviceOnline(s.device)
    // A mapped device that joins now needs its tag filters on the hub.
    if (this.isMapped(s.device)) this.bridge.resubscribe()
  }

  sessionClosed(s: ClientSession): void {
    const at = Date.now()
    this.recordConnection(() => this.connections.disconnected(s.clientId, at))
    // A persistent session keeps its tag subscriptions while away, as the hub's broker would: the
    // broker queues what arrives for it meanwhile and hands it over when the device is back.
    if (!s.persistent) this.tags.clientGone(s.clientId)
    this.uplink(
      this.connectionUplink({ ...s, ...s.device, connectedAt: s.connectedAt ?? null }, false, at),
    ).catch((err: Error) => this.warn.warn('connection-uplink', { err: err.message }, 'could not record a $connection event'))
  }

  tagSubscribed(device: DeviceRef, clientId: string, filter: string): void {
    this.tags.localSubscribed(device, clientId, filter)
  }

  tagUnsubscribed(clientId: string, filter: string): void {
    this.tags.localUnsubscribed(clientId, filter)
  }

  reportState(device: DeviceRef, reported: Record<string, unknown>): Promise<void> {
    return this.shadows.reportState(device, reported)
  }

  /** A reply written on a mapped device's behalf: `{status, reason?, code?}` (cloud-to-device issue, 8). */
  replyFor(cmd: Command, status: ReplyStatus, extra: { reason?: string; code?: number | string } = {}): Promise<void> {
    if (cmd.type === 'm2m') return Promise.resolve()
    return this.uplink({
      topic: {
        kind: cmd.type === 'rpc' ? 'rpc_resp' : 'cmd_resp',
        productId: cmd.device.productId,
        deviceId: cmd.device.deviceId,
        name: cmd.name,
        requestId: cmd.requestId,
        messageId: newMessageId(),
      },
      payload: Buffer.from(JSON.stringify({ status, ...extra })),
      transport: 'internal',
      receivedAt: Date.now(),
    })
  }

  isMapped(d: DeviceRef): boolean {
    return this.adapters.some((a) => a.kind === 'mapped' && a.owns(d))
  }

  /** Down: a message from the hub. Resolves once it is durable (then the hub gets its PUBACK). */
  async fromHub(topic: string, payload: Buffer): Promise<void> {
    const t = parseDownTopic(topic)
    if (!t) {
      this.metrics.downlinks.inc({ outcome: 'malformed' })
      this.warn.warn('hub-malformed', { topic, code: ErrorCodes.BAD_TOPIC }, 'message from the hub on a topic that is not PROTOCOL.md\'s; dropped')
      return
    }
    if (t.kind === 'tags') {
      const r = await this.tags.fromHub(t, topic, payload)
      this.metrics.downlinks.inc({ outcome: r === 'relayed' ? 'delivered' : r })
      return
    }
    const device = { productId: t.productId, deviceId: t.deviceId! }
    if (device.productId === this.cfg.gateway.productId && device.deviceId === this.cfg.gateway.deviceId) {
      if (t.kind === 'cmd' && t.name === '$set_ntp') this.clock.answer(parseJsonObject(payload))
      this.metrics.clockOffset.set(this.clock.offsetMs)
      return
    }
    if (!this.registry.get(device)) {
      this.metrics.downlinks.inc({ outcome: 'unknown_device' })
      return
    }
    const cmd: Command =
      t.kind === 'm2m'
        ? { type: 'm2m', device, name: '', encoding: 'plain', requestId: t.messageId!, senderDeviceId: t.senderDeviceId, payload }
        : { type: t.kind, device, name: t.name!, encoding: t.encoding!, requestId: t.requestId!, expiresAt: t.expiresAt, payload }
    if (cmd.type === 'cmd' && QOS0_INTERNAL.has(cmd.name)) return this.internalFromHub(cmd)
    this.router.accept(cmd, t.kind === 'm2m' ? 'm2m' : 'hub')
  }

  /** `$set_tags`, `$update_shadow`, `$shadow_reply`: update the copies, relay to a native device. */
  private async internalFromHub(cmd: Command): Promise<void> {
    if (this.router.isExpired(cmd)) return
    if (!this.commands.accept(deviceKey(cmd.device), cmd, 'hub').fresh) return
    if (cmd.name === '$set_tags') this.tags.onSetTags(cmd.device, cmd.payload)
    else if (cmd.name === '$update_shadow') this.shadows.onUpdateShadow(cmd.device, cmd.payload)
    else this.shadows.onShadowReply(cmd.device, cmd.payload)
    if (!this.isMapped(cmd.device) && this.broker.owns(cmd.device)) {
      await this.broker.deliver({ ...cmd, qos: 0 })
    }
  }

  private async answerNtp(up: Uplink): Promise<void> {
    const device_time = parseJsonObject(up.payload)?.device_time
    const topic = formatDownTopic({
      kind: 'cmd',
      productId: up.topic.productId,
      deviceId: up.topic.deviceId,
      name: '$set_ntp',
      encoding: 'plain',
      requestId: newMessageId(),
    })
    // iothub_recv is when the request arrived; iothub_send is taken now, just before publishing.
    await this.broker.publishLocal(topic, this.clock.answerFor(device_time, up.receivedAt), 1)
  }

  private onHubConnected(): void {
    void this.reportStatus()
    this.askForMappedState()
    // A few probes right away: the clock filter keeps the one with the shortest round trip.
    for (let i = 0; i < 4; i++) setTimeout(() => this.probeHubClock(), i * 250).unref()
  }

  /**
   * The SDK sends `$tags` and `$shadow` on every connect (PROTOCOL.md "Tags", "Shadow"); for mapped
   * devices the hub link is that connection, so the gateway asks on their behalf, and for native
   * devices that are connected while the link comes back. What the hub pushed at QoS 0 while the
   * link was down (a desired change, new tags) is not lost that way.
   */
  private askForMappedState(): void {
    if (!this.bridge.status().connected) return
    for (const d of this.registry.list()) {
      // Native devices ask themselves when they connect; one that stayed connected while the hub
      // link was down would miss what the hub pushed meanwhile (QoS 0), so the gateway asks for it.
      if (!d.enabled || !(this.isMapped(d) || this.broker?.owns(d))) continue
      const asks: [string, Buffer][] = [['$tags', Buffer.from(JSON.stringify({ tags_version: d.tagsVersion }))], ['$shadow', Buffer.alloc(0)]]
      for (const [name, payload] of asks) {
        this.uplink({ topic: { kind: 'get', productId: d.productId, deviceId: d.deviceId, name, messageId: newMessageId() }, payload, transport: 'internal', receivedAt: Date.now() })
          .catch((err: Error) => this.warn.warn('mapped-ask', { err: err.message }, `could not queue ${name} for a mapped device`))
      }
    }
  }

  /** Measure our clock against the hub's with the same `$ntp` exchange a device uses. */
  private probeHubClock(): void {
    const messageId = newMessageId()
    this.bridge.publishDirect(`get/${this.cfg.gateway.productId}/${this.cfg.gateway.deviceId}/$ntp/${messageId}`, this.clock.request(messageId))
  }

  private sweep(): void {
    try {
      this.router.sweep(this.registry.list().map((d) => deviceKey(d)))
    } catch (err) {
      this.warn.warn('sweep', { err: (err as Error).message }, 'command housekeeping failed')
    }
  }

  // --- internals -----------------------------------------------------------------------------

  // The connection table is bookkeeping: a write it cannot make (full disk) is logged, never thrown
  // into the broker's event handlers, where it would take the process down. A close it misses is
  // reported as stale on the next start.
  private recordConnection(write: () => unknown): void {
    try {
      write()
    } catch (err) {
      this.warn.warn('connection-record', { err: (err as Error).message, code: isDiskFull(err) ? ErrorCodes.STORE_FULL : ErrorCodes.STORE_FAILED },
        'could not record a device connection')
    }
  }

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

  private onDiskFull(err: Error): void {
    this.metrics.storeFull.set(1)
    this.metrics.rejected.inc({ reason: 'store_full' })
    this.log.error(
      { err: err.message, code: ErrorCodes.STORE_FULL, dataDir: this.cfg.gateway.dataDir },
      `data disk is full: no longer acknowledging messages; free space in the data folder and intake resumes by itself (once ${RESUME_FREE_BYTES >> 20} MiB are free)`,
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
      await this.router?.stop()
      await this.bridge?.stop()
    }
    await Promise.race([work(), new Promise((r) => setTimeout(r, deadlineMs).unref())])
    this.outbox?.close()
    this.db?.close()
    this.log.info('gateway stopped')
  }
}
