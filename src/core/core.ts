// The core: the uplink pipeline, the command router and the services that play the hub's and the
// SDK's parts (tags, shadows, clock), the sessions, the intake gate and the gateway as a hub device.
// It knows no adapter, no transport, no bridge and no web: adapters reach it through the
// AdapterContext it gives each of them, the hub link through HubPort and three hooks, the web
// through what the composition root (src/gateway.ts) builds from it.
import type { Logger } from './log.js'
import { RateLimitedLog } from './log.js'
import type { Metrics } from './metrics.js'
import type { AdapterContext, DeviceDirectory, DeviceInfo, ReplyStatus } from './adapter-context.js'
import type { Command, DeviceRef, SouthboundAdapter, Transport, Uplink } from './types.js'
import { deviceKey } from './types.js'
import { CommandRouter } from './command-router.js'
import { TagService } from './tags.js'
import { ShadowService } from './shadows.js'
import { HubClock } from './clock.js'
import { DeviceRoutes } from './device-routes.js'
import { IntakeGate } from './intake.js'
import { SessionTracker } from './sessions.js'
import { UplinkPipeline } from './uplink-pipeline.js'
import { HubInbox } from './hub-inbox.js'
import { GatewayDevice, type HubPort } from './gateway-device.js'
import { newMessageId } from './message-id.js'
import { Observers, type PipelineObserver } from './observers.js'
import type { StoredCommand } from '../store/commands.js'
import type { LocalFiles } from './local-files.js'
import type { Store } from '../store/store.js'
import type { Device } from '../store/devices.js'
import type { BrokerSessionStore } from '../store/broker-sessions.js'

const SWEEP_INTERVAL_MS = 60_000

export interface CoreOptions {
  /** The gateway's own identity at the hub. */
  identity: DeviceRef
  dataDir: string
  /** How long a RequestId from the hub is remembered (store.commands.seenTtlSeconds). */
  seenTtlMs: number
}

export interface CoreDeps {
  store: Store
  hub: HubPort
  metrics: Metrics
  log: Logger
  options: CoreOptions
  /** The local broker's sessions: in broker.db (`broker.persistence: sqlite`) or in memory only. */
  brokerSessions?: BrokerSessionStore
  /** A read of gateway.db outside the outbox found it damaged (the outbox says so itself, with its 'error' event). */
  storeDamaged?: (err: Error) => void
}

export class Core {
  readonly clock = new HubClock()
  readonly routes: DeviceRoutes
  readonly router: CommandRouter
  readonly tags: TagService
  readonly shadows: ShadowService
  readonly intake: IntakeGate
  readonly sessions: SessionTracker
  readonly pipeline: UplinkPipeline
  readonly gatewayDevice: GatewayDevice
  private readonly inbox: HubInbox
  private readonly observers: Observers
  private readonly warn: RateLimitedLog
  private sweepTimer?: NodeJS.Timeout
  private localFiles?: LocalFiles
  private readonly statusParts = new Map<string, () => unknown>()

  constructor(private readonly d: CoreDeps) {
    const { store, metrics, log, hub } = d
    this.warn = new RateLimitedLog(log)
    this.observers = new Observers(log.child({ component: 'observers' }))
    this.routes = new DeviceRoutes(log.child({ component: 'routes' }))
    const deliverNow = (cmd: Command): Promise<'delivered' | 'offline'> => this.routes.deliverNow(cmd)
    const isMapped = (dev: DeviceRef): boolean => this.routes.isMapped(dev)
    const uplink = (up: Uplink): Promise<void> => this.pipeline.uplink(up)
    this.router = new CommandRouter({
      store: store.commands,
      owner: (dev) => this.routes.owner(dev),
      log: log.child({ component: 'commands' }),
      metrics,
      seenTtlMs: d.options.seenTtlMs,
      storeDamaged: d.storeDamaged,
    })
    this.tags = new TagService({ registry: store.registry, store: store.commands, router: this.router, isMapped, deliverNow, log })
    this.shadows = new ShadowService({ store: store.shadows, router: this.router, isMapped, uplink, deliverNow, log: log.child({ component: 'shadows' }) })
    this.intake = new IntakeGate({ outbox: store.outbox, metrics, log, dataDir: d.options.dataDir })
    this.sessions = new SessionTracker({
      connections: store.connections,
      router: this.router,
      tags: this.tags,
      uplink,
      mappedJoined: () => hub.resubscribe(),
      log,
    })
    this.pipeline = new UplinkPipeline({
      metrics,
      router: this.router,
      tags: this.tags,
      shadows: this.shadows,
      clock: this.clock,
      hubConnected: () => hub.isConnected(),
      isChild: (dev) => store.registry.get(dev) !== undefined,
      isMapped,
      deliverNow,
      sink: (up) => store.outbox.enqueue(up),
    })
    this.gatewayDevice = new GatewayDevice({
      identity: d.options.identity,
      hub,
      clock: this.clock,
      metrics,
      log,
      uplink,
      outboxStats: () => store.outbox.stats(),
      children: () => store.registry.list(),
      onlineCount: () => this.sessions.onlineCount,
      // Native devices ask themselves when they connect; one that stayed connected while the hub
      // link was down would miss what the hub pushed meanwhile (QoS 0), so the gateway asks for it.
      asksFor: (dev) => this.routes.owner(dev) !== undefined,
      statusParts: () => {
        const out: Record<string, unknown> = {}
        for (const [key, part] of this.statusParts) {
          const v = part()
          if (v !== undefined) out[key] = v
        }
        return out
      },
    })
    this.inbox = new HubInbox({
      router: this.router,
      commands: store.commands,
      tags: this.tags,
      shadows: this.shadows,
      metrics,
      log,
      isGateway: (dev) => this.gatewayDevice.is(dev),
      forGateway: (cmd) => this.gatewayDevice.command(cmd),
      isChild: (dev) => store.registry.get(dev) !== undefined,
      isMapped,
    })
  }

  async start(): Promise<void> {
    const { store, hub } = this.d
    this.intake.start()
    this.tags.on('changed', () => hub.resubscribe())
    store.registry.on('changed', () => this.tags.registryChanged())
    await this.sessions.reportStale()
    this.gatewayDevice.start()
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS).unref()
  }

  /**
   * Watch the flow without driving it (the local history): committed uplinks after each group
   * commit, command deliveries and replies. Returns the function that stops it.
   */
  observe(o: PipelineObserver): () => void {
    if (!this.observers.any) this.tellObservers()
    return this.observers.observe(o)
  }

  private tellObservers(): void {
    const { store } = this.d
    store.outbox.on('uplinks', (batch: Uplink[]) => this.observers.committed(batch))
    const detail = (sc: StoredCommand): Record<string, string> => ({ type: sc.command.type, name: sc.command.name, requestId: sc.command.requestId, origin: sc.origin })
    this.router.on('delivered', (sc: StoredCommand) => this.observers.deviceEvent({ device: sc.command.device, at: Date.now(), type: 'command_delivered', detail: detail(sc) }))
    this.router.on('reply', ({ command, payload }: { command: StoredCommand; payload: Buffer }) =>
      this.observers.deviceEvent({ device: command.command.device, at: Date.now(), type: 'command_replied', detail: { ...detail(command), reply: payload.subarray(0, 256).toString('utf8') } }),
    )
  }

  /** Hooks for the hub link. */
  readonly fromHub = (topic: string, payload: Buffer): Promise<void> => this.inbox.fromHub(topic, payload)
  readonly hubConnected = (): void => this.gatewayDevice.hubConnected()
  /** Tag filters to hold on the hub: all of them, or one child's (devices mode). */
  readonly hubFilters = (device?: DeviceRef): string[] => this.tags.hubFilters(device)

  /** Where the transports find the files they serve devices (the OTA relay's images). */
  setLocalFiles(files: LocalFiles | undefined): void {
    this.localFiles = files
  }

  /** A part of the gateway's own update_status a service reports (undefined: left out this time). */
  addStatusPart(key: string, part: () => unknown): void {
    this.statusParts.set(key, part)
  }

  /** An adapter started: it may own devices from now on. */
  attach(adapter: SouthboundAdapter): void {
    this.routes.add(adapter)
  }

  /**
   * Every adapter has started. Mapped devices that are owned now get what waited for them; the hub
   * link may have come up while the adapters were starting, without the mapped devices' tag
   * filters and without asking for their state.
   */
  adaptersStarted(): void {
    for (const dev of this.d.store.registry.list()) if (this.routes.isMapped(dev)) this.router.deviceOnline(dev)
    this.d.hub.resubscribe()
    this.gatewayDevice.askForChildrenState()
  }

  /** What one adapter may use of the core. */
  contextFor(adapter: string, transport: Transport): AdapterContext {
    const { store, metrics, log } = this.d
    return {
      log: log.child({ component: adapter }),
      metrics: metrics.forAdapter(adapter),
      devices: this.directory(),
      seen: (name, ttlMs) => ({
        firstTime: (id) => store.seen.firstTime(`${adapter}/${name}`, id, ttlMs),
        has: (id) => store.seen.has(`${adapter}/${name}`, id),
        forget: (id) => store.seen.forget(`${adapter}/${name}`, id),
      }),
      records: (name) => store.records.scoped(`${adapter}/${name}`),
      uplink: (up) => this.pipeline.uplink(up),
      intakeOpen: () => this.intake.isOpen(),
      onIntakeChange: (l) => this.intake.onChange(l),
      sessionOpened: (s) => this.sessions.opened(s),
      sessionClosed: (s) => this.sessions.closed(s),
      tagSubscribed: (dev, clientId, filter) => this.tags.localSubscribed(dev, clientId, filter),
      tagUnsubscribed: (clientId, filter) => this.tags.localUnsubscribed(clientId, filter),
      deviceReachable: (dev) => this.sessions.mappedReachable(adapter, dev, transport),
      deviceAway: (dev) => this.sessions.mappedAway(dev),
      reportState: (dev, reported) => this.shadows.reportState(dev, reported),
      replyFor: (cmd, status, extra) => this.replyFor(cmd, status, extra),
      localFile: (token) => this.localFiles?.open(token),
      brokerSessions: () => this.d.brokerSessions,
    }
  }

  private directory(): DeviceDirectory {
    const registry = this.d.store.registry
    const info = (dev: Device): DeviceInfo => ({ productId: dev.productId, deviceId: dev.deviceId, tags: dev.tags, enabled: dev.enabled })
    return {
      authenticate: (dev, secret) => registry.authenticate(dev, secret),
      get: (dev) => {
        const found = registry.get(dev)
        return found && info(found)
      },
      list: () => registry.list().map(info),
      register: async (dev, opts) => {
        const found = registry.get(dev)
        if (found) return info(found)
        try {
          return info((await registry.add({ ...dev, tags: opts?.tags ?? [] })).device)
        } catch (err) {
          // Two events of a new device in flight at once: the other one created it meanwhile.
          const now = registry.get(dev)
          if (now && (err as { code?: string }).code === 'EXISTS') return info(now)
          throw err
        }
      },
      onRevoked: (listener) => {
        registry.on('disabled', (ref: DeviceRef) => listener(ref, 'disabled'))
        registry.on('removed', (ref: DeviceRef) => listener(ref, 'removed'))
      },
    }
  }

  /** A reply written on a mapped device's behalf: `{status, reason?, code?}`. */
  replyFor(cmd: Command, status: ReplyStatus, extra: { reason?: string; code?: number | string } = {}): Promise<void> {
    if (cmd.type === 'm2m') return Promise.resolve()
    return this.pipeline.uplink({
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

  /** Reasons the core is degraded (the composition root adds the adapters'). */
  healthReasons(): string[] {
    const outbox = this.d.store.outbox
    const reasons: string[] = []
    if (outbox.isFull) reasons.push('disk_full')
    if (outbox.stats().bytes > 0.9 * outbox.maxBytes) reasons.push('outbox_near_quota')
    return reasons
  }

  updateGauges(): void {
    const s = this.d.store.outbox.stats()
    const m = this.d.metrics
    m.outboxMessages.set(s.messages)
    m.outboxBytes.set(s.bytes)
    m.outboxQuota.set(s.maxBytes)
    m.outboxOldest.set(s.oldestAgeMs / 1000)
    for (const [reason, n] of Object.entries(s.dropped)) m.dropped.set({ reason }, n)
  }

  private sweep(): void {
    try {
      this.router.sweep(this.d.store.registry.list().map((dev) => deviceKey(dev)))
      this.d.store.seen.sweep()
      this.d.store.records.sweep()
    } catch (err) {
      this.warn.warn('sweep', { err: (err as Error).message }, 'command housekeeping failed')
    }
  }

  /** Stop taking new work and let command deliveries in flight finish. */
  closeIntake(): void {
    this.intake.close()
  }

  async stop(): Promise<void> {
    this.intake.close()
    this.gatewayDevice.stop()
    clearInterval(this.sweepTimer)
    await this.router.stop()
  }
}
