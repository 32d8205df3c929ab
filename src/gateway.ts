// The composition root (STYLE.md; zigbee2mqtt's controller, fastify's app.js vs server.js): builds
// the store, the core, the hub bridge, the southbound adapters and the web, in that order, starts
// them sinks first (store, bridge) and sources last (adapters, HTTP), and stops them in reverse
// within a deadline. Nothing else wires components together.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import type { Config } from './config.js'
import { createLogger, RateLimitedLog, type Logger } from './core/log.js'
import { Counter, Gauge } from 'prom-client'
import { Metrics } from './core/metrics.js'
import { Core } from './core/core.js'
import type { HubPort } from './core/gateway-device.js'
import { deviceKey, type DeviceRef } from './core/types.js'
import { lastSeen, type ConnectionInfo } from './store/connections.js'
import { ErrorCodes, StartError, type ErrorCode } from './core/errors.js'
import { VERSION } from './core/version.js'
import { openStore, type Store } from './store/store.js'
import { DataDirBusyError, DataDirLock } from './store/data-dir-lock.js'
import { describeUnusable, findUnusable } from './store/data-dir-access.js'
import { acknowledgeSalvage, BROKER_DB, openCheckedDatabase, pendingSalvage, type CheckKind, type SalvageReport } from './store/salvage.js'
import { isDamagedDatabase } from './core/damaged-file.js'
import { storeRoutes } from './web/routes/store.js'
import { Bridge } from './northbound/bridge.js'
import { HistoryRecorder } from './history/history-recorder.js'
import { csvLines } from './history/history-csv.js'
import { adapterEntries, type KeyedAdapterEntry } from './southbound/registry.js'
import type { AdapterInstance } from './southbound/adapter-module.js'
import type { AdapterHealth, HealthReport, HistoryReader, WebDeps } from './web/deps.js'
import { WebServer } from './web/server.js'
import { API_TOKEN_FILE, loadOrCreateApiToken } from './web/runtime-files.js'
import { DEFAULT_UI_DIR } from './web/routes/ui.js'
import { loadServerTls, type ServerTls } from './web/tls.js'
import { compileRules } from './rules/compile.js'
import { RulesEngine } from './rules/engine.js'
import { OtaRelay } from './ota/ota-relay.js'
import { apiRoutes as otaApiRoutes, fileRoutes as otaFileRoutes } from './ota/http-routes.js'
import type { OutboxRow } from './store/outbox.js'
import type { StoredCommand } from './store/commands.js'
import { LogRing } from './core/log-ring.js'
import { DeviceActivity } from './live/device-activity.js'
import { LiveEvents } from './live/live-events.js'
import { LiveHub } from './web/live-hub.js'
import { redactConfig } from './config-redact.js'
import { keepYoungGenerationSmall } from './core/young-generation.js'
import mqttPacket from 'mqtt-packet'
import { useScryptHelper } from './core/scrypt-process.js'
import { memoryBrokerSessions, openBrokerSessions, type BrokerSessionStore } from './store/broker-sessions.js'

const GAUGE_INTERVAL_MS = 5_000
/** The devices' last reported facts (src/live/device-activity.ts), kept across restarts. */
const ACTIVITY_FILE = 'device-facts.json'
const ACTIVITY_SAVE_MS = 30_000

export interface GatewayOptions {
  /** A logger of the caller's; the recent-logs ring (GET /api/logs) then stays empty unless `logRing` is its tap. */
  logger?: Logger
  logRing?: LogRing
  /** Adapters besides the built-in ones (tests register their own through the same seam). */
  adapters?: readonly KeyedAdapterEntry[]
  /**
   * The store was found damaged while running: the process must end without a clean stop (the
   * lock stays, so the next start runs quick_check and salvages). Default: nothing (tests).
   */
  onFatal?: (code: string) => void
}

interface RunningAdapter {
  entry: KeyedAdapterEntry
  health: AdapterHealth
  instance?: AdapterInstance
}

export class Gateway {
  readonly log: Logger
  readonly metrics = new Metrics()
  /** The recent log lines (GET /api/logs), tapped from the logger. */
  readonly logRing: LogRing
  /** The live stream's fan-out (GET /api/events). */
  readonly live: LiveHub
  /** Per device: last messages, radio, battery, firmware, errors (GET /api/devices). */
  readonly activity = new DeviceActivity()
  store!: Store
  core!: Core
  bridge!: Bridge
  web!: WebServer
  /** The local rules (src/rules), when the config has any. */
  rules?: RulesEngine
  /** The local history: an observer of the pipeline (absent when store.history.enabled is false, or when it could not start). */
  history?: HistoryRecorder
  ota!: OtaRelay
  private readonly adapters: RunningAdapter[] = []
  /** The local broker's persistent sessions, retained messages and wills: in broker.db, or in memory only (`broker.persistence: memory`, or broker.db unusable). */
  brokerSessions?: BrokerSessionStore
  private brokerSessionsLost = false
  private gaugeTimer?: NodeJS.Timeout
  private activityTimer?: NodeJS.Timeout
  private readonly activityWarn: RateLimitedLog
  private stopping = false
  /** storeDamaged() has spoken. */
  private damaged = false
  private lock?: DataDirLock
  /** A salvage of gateway.db no operator has acknowledged yet (store-salvage.json). */
  private salvage?: SalvageReport
  /** The same for broker.db (broker-salvage.json). */
  private brokerSalvage?: SalvageReport

  constructor(
    readonly cfg: Config,
    private readonly opts: GatewayOptions = {},
  ) {
    this.logRing = opts.logRing ?? new LogRing()
    this.log = opts.logger ?? createLogger({ level: cfg.log.level, format: cfg.log.format, gatewayId: cfg.gateway.id, tap: this.logRing.push })
    this.live = new LiveHub({ health: () => this.health() })
    this.activityWarn = new RateLimitedLog(this.log)
    this.liveMetrics()
    // Which gateway a scrape came from, the Prometheus way (an info metric to join on), rather than a
    // label on every sample: docs/operators/alerts.md.
    new Gauge({ name: 'iothub_edge_gateway_info', help: 'Always 1; labels: gateway.id and version', labelNames: ['gateway', 'version'], registers: [this.metrics.registry] }).set(
      { gateway: cfg.gateway.id, version: VERSION },
      1,
    )
  }

  async start(): Promise<void> {
    const { cfg, log, metrics } = this
    // mqtt-packet (the local broker's codec, aedes) otherwise makes a 2-byte Buffer for every 16-bit
    // number at its first write and keeps them: 65,536 Buffers, 6 MB of heap on an idle gateway
    // (docs/performance.md, "Memory"). MQTT.js turned it off for itself; nothing here needs it.
    mqttPacket.writeToStream.cacheNumbers = false
    // scrypt (the seeding's hashes, devices' and users' logins) in a helper process whose 16 MiB
    // buffers go back to the system (src/core/scrypt-process.ts, decision 0027-scrypt-helper-process).
    useScryptHelper()
    this.lockDataDir()
    // Before any database is opened: SQLite would open one the gateway's user may not write
    // read-only without a word, and fail at the first write (src/store/data-dir-access.ts).
    const unusable = findUnusable(cfg.gateway.dataDir)
    if (unusable) throw new StartError(ErrorCodes.DATA_FILE_UNWRITABLE, 'gateway.dataDir', describeUnusable(cfg.gateway.dataDir, unusable))
    // Before anything listens: a TLS pair that cannot be used stops the start at once.
    const tls = await loadServerTls(cfg.http.tls, cfg.gateway.dataDir)
    // After an unclean stop the whole database is checked (quick_check); else the cheap check
    // (decision 0014-damaged-store): either way a damaged one is moved aside and salvaged.
    const unclean = this.lock?.previous
    this.store = await openStore(cfg, log, unclean ? 'quick_check' : 'cheap')
    // The outbox's writer thread, when it has one, reset V8's young-generation setting.
    keepYoungGenerationSmall()
    const store = this.store
    this.storeOpened(unclean?.pid)
    const warn = new RateLimitedLog(log)
    store.outbox.on('dropped', ({ reason, count }: { reason: string; count: number }) =>
      warn.warn(`drop:${reason}`, { reason, count, total: store.outbox.stats().dropped }, 'outbox dropped acknowledged messages'),
    )
    store.outbox.on('error', (err: Error) => {
      if (!isDamagedDatabase(err)) return log.error({ err, code: ErrorCodes.STORE_FAILED }, 'outbox write failed')
      this.storeDamaged('gateway.db', err)
    })

    // The core reaches the hub link only through this port; the link exists from the next step on.
    const hub: HubPort = {
      isConnected: () => this.bridge?.status().connected ?? false,
      publishDirect: (topic, payload) => this.bridge?.publishDirect(topic, payload) ?? false,
      resubscribe: () => this.bridge?.resubscribe(),
    }
    this.openBrokerSessions(unclean ? 'quick_check' : 'cheap')
    this.core = new Core({
      store,
      hub,
      metrics,
      log,
      brokerSessions: this.brokerSessions,
      storeDamaged: (err) => this.storeDamaged('gateway.db', err),
      options: {
        identity: { productId: cfg.gateway.productId, deviceId: cfg.gateway.deviceId },
        dataDir: cfg.gateway.dataDir,
        seenTtlMs: cfg.store.commands.seenTtlSeconds * 1000,
      },
    })
    await this.startHistory()
    this.startLive()
    await this.core.start()
    this.startRules()

    const core = this.core
    // Before the hub link: an `$ota_upgrade` arriving at its first connect is held, not relayed.
    await this.startOta()
    this.bridge = new Bridge(cfg, store.outbox, store.registry, metrics, log, {
      onMessage: core.fromHub,
      onConnected: core.hubConnected,
      extraSubscriptions: core.hubFilters,
      heldSubscriptions: (link) => ({
        load: () => store.hubSubscriptions.load(link),
        save: (filters) => store.hubSubscriptions.save(link, filters),
        update: (add, remove) => store.hubSubscriptions.update(link, add, remove),
      }),
    })
    this.bridge.start()

    await this.startAdapters()
    core.adaptersStarted()

    this.web = new WebServer(this.webDeps(tls), { host: cfg.http.host, port: cfg.http.port, dataDir: cfg.gateway.dataDir, tls })
    await this.web.start()

    this.gaugeTimer = setInterval(() => {
      core.updateGauges()
      this.watchOutbox()
    }, GAUGE_INTERVAL_MS).unref()
    core.updateGauges()
    // A new user's first device would be refused without a word on why: say how to add one.
    if (this.store.registry.isEmpty()) {
      log.info('no device is registered yet: a device logs in with its ProductId, DeviceId and secret; add one with `iothub-edge devices add PRODUCT DEVICE` (prints its secret once) or on the web UI\'s Devices page')
    }
    log.info(
      { version: VERSION, dataDir: cfg.gateway.dataDir, adapters: this.adapters.map((a) => `${a.health.name}:${a.health.state}`), http: this.web.port, northbound: cfg.northbound.url ?? null },
      'gateway started',
    )
  }

  /**
   * A database was found damaged while running (a write, or a read such as the drain's, answered
   * SQLITE_CORRUPT or SQLITE_NOTADB: damage done under the running gateway, or on a page the start's
   * check does not read). Said once, with what to do; then the process must end without a clean stop
   * (`onFatal`: exit 70), so that the lock stays and the next start runs quick_check and salvages
   * (decision 0014-damaged-store). Everything acknowledged is committed already.
   */
  storeDamaged(file: string, err: unknown): void {
    if (this.damaged) return
    this.damaged = true
    this.log.fatal(
      { err, code: ErrorCodes.STORE_CORRUPT, file: path.join(this.cfg.gateway.dataDir, file) },
      `${file} is damaged (${(err as Error).message}): exiting (code 70) without a clean stop, so that the next start checks it and salvages what can be read; systemd starts it again (Restart=always), else start it again by hand. If this repeats, the disk is failing: replace it`,
    )
    this.opts.onFatal?.(ErrorCodes.STORE_CORRUPT)
  }

  /**
   * The rules slot of the uplink pipeline. Started with the sinks, before any adapter takes input:
   * windows that ended while the gateway was down are closed first. The rules reach the rest of the
   * gateway only through RulesDeps.
   */
  private startRules(): void {
    const { cfg, store, core, log } = this
    if (cfg.rules.length === 0) return
    const rulesLog = log.child({ component: 'rules' })
    // The registry is SQLite: tags are read once per device until the registry changes.
    const tagCache = new Map<string, readonly string[]>()
    for (const e of ['changed', 'removed']) store.registry.on(e, () => tagCache.clear())
    this.rules = new RulesEngine(compileRules(cfg.rules).rules, {
      state: store.ruleState,
      emit: (up) => store.outbox.enqueue(up),
      sendCommand: (cmd) => void core.router.accept(cmd, 'rule'),
      devicesWithTag: (productId, tag) => this.enabledWithTag(productId, tag),
      republish: (topic, payload, retain) => {
        const broker = this.adapters.find((a) => a.health.state === 'running' && a.instance?.localPublish)
        return broker?.instance?.localPublish ? broker.instance.localPublish(topic, payload, retain) : Promise.reject(new Error('no local broker is running'))
      },
      tagsOf: (dev) => {
        const key = deviceKey(dev)
        let tags = tagCache.get(key)
        if (!tags) tagCache.set(key, (tags = store.registry.get(dev)?.tags ?? []))
        return tags
      },
      now: Date.now,
      log: { warn: (obj, msg) => rulesLog.warn({ ...obj, code: ErrorCodes.RULE_FAILED }, msg) },
    })
    this.rules.start()
    core.pipeline.setRules(this.rules.step)
    this.ruleMetrics(this.rules)
    log.info({ rules: cfg.rules.map((r) => r.name) }, `${cfg.rules.length} local rule(s) loaded`)
  }

  /** The start lines about the store: an unclean stop before this start, a salvage (now or not yet acknowledged). */
  private storeOpened(previousPid: number | undefined): void {
    const { log, store, cfg } = this
    const { check, checkMs, salvage } = store.opened
    const s = store.outbox.stats()
    if (previousPid !== undefined) {
      log.warn(
        { previousPid, check, checkMs, outbox: { messages: s.messages, bytes: s.bytes, oldestAgeMs: s.oldestAgeMs } },
        `the previous run (pid ${previousPid}) ended without a clean stop (killed, crashed or power lost); database checked (${check}, ${checkMs} ms); ${s.messages} message(s) waiting in the outbox`,
      )
    }
    this.salvage = this.salvageLines('gateway.db', ErrorCodes.STORE_SALVAGED, salvage, pendingSalvage(cfg.gateway.dataDir))
    const gateway = this
    const salvages = (): [string, SalvageReport | undefined][] => [
      ['gateway.db', gateway.salvage],
      ['broker.db', gateway.brokerSalvage],
    ]
    const perTable = (name: string, help: string, field: 'rows' | 'readErrors'): void =>
      void new Gauge({
        name,
        help,
        labelNames: ['table', 'database'],
        registers: [this.metrics.registry],
        collect() {
          this.reset()
          for (const [database, s] of salvages()) for (const t of s?.tables ?? []) this.set({ table: t.table, database }, t[field])
        },
      })
    perTable('iothub_edge_store_salvaged_rows', 'Rows salvaged from a damaged gateway.db or broker.db, by table (until the salvage is acknowledged)', 'rows')
    perTable('iothub_edge_store_salvage_read_errors', 'Reads that failed on damaged pages during the salvage, by table: rows there may be lost (until acknowledged)', 'readErrors')
    new Gauge({
      name: 'iothub_edge_store_salvage_pending',
      help: '1 while a salvage of a damaged gateway.db or broker.db waits for an operator to acknowledge it',
      registers: [this.metrics.registry],
      collect() {
        this.set(salvages().some(([, s]) => s) ? 1 : 0)
      },
    })
  }

  /** The log lines of a salvage: made at this start (error), or an earlier one not yet acknowledged (warn). Returns the pending one. */
  private salvageLines(file: string, code: ErrorCode, fresh: SalvageReport | undefined, pending: SalvageReport | undefined): SalvageReport | undefined {
    if (fresh) {
      const counts = fresh.tables.filter((t) => t.rows || t.readErrors).map((t) => `${t.table} ${t.rows}${t.readErrors ? ` (${t.readErrors} unreadable read(s))` : ''}`)
      this.log.error(
        { code, reason: fresh.reason, movedTo: fresh.movedTo, headerRebuilt: fresh.headerRebuilt, tables: fresh.tables },
        `${file} was damaged (${fresh.reason}): moved aside to ${fresh.movedTo} and salvaged into a new one: ${counts.join(', ') || 'no rows'}. Rows on damaged pages may be lost. Check the disk, then acknowledge: iothub-edge store ack`,
      )
    } else if (pending) {
      this.log.warn({ code, at: pending.at, movedTo: pending.movedTo }, `${file} was salvaged at ${pending.at} and nobody has acknowledged it yet: iothub-edge store ack`)
    }
    return pending
  }

  /** The operator has seen the salvage report: health goes back to what the rest says. */
  acknowledgeSalvage(): boolean {
    const had = acknowledgeSalvage(this.cfg.gateway.dataDir)
    if (had) this.log.info({ code: this.salvage ? ErrorCodes.STORE_SALVAGED : ErrorCodes.BROKER_SESSIONS_SALVAGED }, `the salvage of ${[this.salvage && 'gateway.db', this.brokerSalvage && 'broker.db'].filter(Boolean).join(' and ')} was acknowledged`)
    this.salvage = undefined
    this.brokerSalvage = undefined
    return had
  }

  /**
   * broker.db beside the store (decision 0017-broker-persistence), checked as gateway.db is: a
   * damaged one is moved aside and salvaged (decision 0014-damaged-store). One that cannot be opened
   * even so is left where it is for the operator, and the broker runs on with its sessions in
   * memory (health says so): devices are served either way.
   */
  private openBrokerSessions(check: CheckKind): void {
    const { cfg, log } = this
    const limits = { maxMessages: cfg.broker.maxQueuedMessages, maxBytes: cfg.broker.maxQueuedBytes }
    // Memory only: the same store without its file, so the queue limits hold as well.
    if (cfg.broker.persistence !== 'sqlite') return void (this.brokerSessions = memoryBrokerSessions(limits))
    const warn = new RateLimitedLog(log)
    try {
      const checked = openCheckedDatabase(cfg.gateway.dataDir, check, Date.now(), BROKER_DB)
      checked.db.close()
      this.brokerSalvage = this.salvageLines('broker.db', ErrorCodes.BROKER_SESSIONS_SALVAGED, checked.salvage, pendingSalvage(cfg.gateway.dataDir, BROKER_DB))
      const sessions = openBrokerSessions(cfg.gateway.dataDir, limits)
      sessions.on('error', (err: Error) => {
        // Damaged under the running gateway: as for gateway.db, the next start salvages it.
        if (isDamagedDatabase(err)) return this.storeDamaged('broker.db', err)
        warn.warn('broker-sessions', { err: err.message, code: ErrorCodes.BROKER_SESSIONS_FAILED }, "the local broker's sessions could not be written to broker.db (retried every second): what it queued since may not survive a restart; check the data disk")
      })
      this.brokerSessions = sessions
    } catch (err) {
      this.brokerSessionsLost = true
      this.brokerSessions = memoryBrokerSessions(limits)
      log.error(
        { err, code: ErrorCodes.BROKER_SESSIONS_FAILED, dataDir: cfg.gateway.dataDir },
        "broker.db could not be opened: the local broker keeps persistent sessions, retained messages and wills in memory until restart (lost then); move the file aside to start a new one",
      )
    }
  }

  /** The enabled devices of a product carrying a tag (a rule's or an OTA campaign's tag target). */
  private enabledWithTag(productId: string, tag: string) {
    return this.store.registry.list().filter((d) => d.enabled && d.productId === productId && d.tags.includes(tag))
  }

  /** Per-rule counters, read from the engine at each scrape. */
  private ruleMetrics(engine: RulesEngine): void {
    const registers = [this.metrics.registry]
    for (const field of ['matched', 'dropped', 'emitted', 'errors', 'evalSeconds'] as const) {
      const name = field === 'evalSeconds' ? 'iothub_edge_rule_eval_seconds_total' : `iothub_edge_rule_${field}_total`
      const help = {
        matched: 'Messages a rule acted on (from matched and where held)',
        dropped: 'Messages a rule kept from going up (drop, rateLimit, reportOnChange)',
        emitted: 'Messages a rule made (window aggregates, alarm changes)',
        errors: 'Messages on which an expression of the rule failed (they went on unchanged)',
        evalSeconds: 'Time spent evaluating the rule (estimated from every 8th message)',
      }[field]
      new Counter({
        name,
        help,
        labelNames: ['rule'] as const,
        registers,
        collect() {
          this.reset()
          for (const s of engine.ruleStats()) this.inc({ rule: s.name }, s[field])
        },
      })
    }
  }

  /**
   * The technician's live view watches like the history does: the committed flow (device activity,
   * stream events), command changes and the log lines. The stream's sources do nothing while no
   * client listens.
   */
  private startLive(): void {
    const { core, store, activity } = this
    this.loadActivity()
    this.activityTimer = setInterval(() => {
      if (activity.changed) this.saveActivity()
    }, ACTIVITY_SAVE_MS).unref()
    core.observe(activity)
    this.logRing.onLine(activity.logLine)
    // A registered device's warnings and errors go into its timeline (the local history's events).
    activity.onError = (device, e) => {
      const slash = device.indexOf('/')
      const ref = { productId: device.slice(0, slash), deviceId: device.slice(slash + 1) }
      if (this.history && store.registry.get(ref)) this.history.deviceEvent({ device: ref, at: e.time, type: 'error', detail: { code: e.code, msg: e.msg } })
    }
    store.registry.on('removed', (ref: DeviceRef) => activity.forget(deviceKey(ref)))
    const events = new LiveEvents({
      sink: this.live,
      alarm: (rule, alarm, productId, deviceId) => this.rules?.alarms().find((a) => a.rule === rule && a.alarm === alarm && a.productId === productId && a.deviceId === deviceId),
      command: (id) => {
        const sc = store.commands.byId(id)
        if (!sc) return undefined
        const c = sc.command
        return { ...c.device, requestId: c.requestId, name: c.name, type: c.type, origin: sc.origin, state: sc.state, reason: sc.reason ?? null, updatedAt: sc.updatedAt }
      },
    })
    core.observe(events)
    store.commands.watch(events.commandChanged)
    this.logRing.onLine(events.logLine)
  }

  private activityFile(): string {
    return path.join(this.cfg.gateway.dataDir, ACTIVITY_FILE)
  }

  /** What devices reported before the restart (firmware, battery, radio): shown until they report again. */
  private loadActivity(): void {
    try {
      if (existsSync(this.activityFile())) this.activity.restore(JSON.parse(readFileSync(this.activityFile(), 'utf8')))
    } catch (err) {
      this.log.warn({ err: (err as Error).message, file: this.activityFile() }, 'the devices\' last reported facts could not be read; the device table fills again as devices report')
    }
  }

  // A file beside the databases, replaced whole (written aside, then renamed): it is a cache of what
  // devices said, not data the gateway must keep; a write that fails (full disk) is tried again later.
  private saveActivity(): void {
    const file = this.activityFile()
    try {
      writeFileSync(`${file}.tmp`, JSON.stringify(this.activity.facts()), { mode: 0o600 })
      renameSync(`${file}.tmp`, file)
    } catch (err) {
      this.activityWarn.warn('save', { err: (err as Error).message, file }, 'could not save the devices\' last reported facts')
    }
  }

  /** The live stream's clients and what it dropped, read at each scrape. */
  private liveMetrics(): void {
    const live = this.live
    const registers = [this.metrics.registry]
    new Gauge({
      name: 'iothub_edge_live_stream_clients',
      help: 'Clients of the live stream (GET /api/events)',
      registers,
      collect() {
        this.set(live.stats().clients)
      },
    })
    new Counter({
      name: 'iothub_edge_live_stream_dropped_total',
      help: 'Live stream events not sent to a client that read too slowly',
      registers,
      collect() {
        this.reset()
        this.inc(live.stats().dropped)
      },
    })
  }

  /**
   * The local history watches the committed flow through the core's observer seam; it never drives
   * it. One that cannot start is logged and left out: the gateway runs on without it.
   */
  private async startHistory(): Promise<void> {
    const { cfg, core, store } = this
    if (!cfg.store.history.enabled) return
    const history = new HistoryRecorder({
      dataDir: cfg.gateway.dataDir,
      config: cfg.store.history,
      log: this.log.child({ component: 'history' }),
      registry: this.metrics.registry,
      gateway: deviceKey({ productId: cfg.gateway.productId, deviceId: cfg.gateway.deviceId }),
      // A new isolate resets V8's young-generation growth setting (src/core/young-generation.ts).
      threadStarted: keepYoungGenerationSmall,
      vitals: () => {
        const s = store.outbox.stats()
        return {
          outbox_messages: s.messages,
          outbox_bytes: s.bytes,
          outbox_oldest_s: s.oldestAgeMs / 1000,
          hub_connected: this.bridge?.status().connected ? 1 : 0,
          devices_online: core.sessions.onlineCount,
        }
      },
    })
    try {
      await history.start()
    } catch (err) {
      this.log.error({ err, code: ErrorCodes.HISTORY_FAILED }, 'the local history could not start and is off until restart; everything else runs: check gateway.dataDir')
      return
    }
    core.observe(history)
    this.history = history
  }

  /** The history's queries for the web; each call reaches the current tables (they are new after a quarantine). */
  private historyReader(): HistoryReader | undefined {
    const history = this.history
    if (!history) return undefined
    const tables = (): NonNullable<HistoryRecorder['tables']> => {
      const t = history.tables
      if (!t) throw new Error('the local history is off after a failure; its log says why')
      return t
    }
    return {
      series: (device) => ({ series: tables().listSeries(device), rejected: tables().rejected(device) }),
      find: (id) => tables().series(id),
      findByName: (device, name) => tables().seriesByName(device, name),
      query: (series, from, to, points) => tables().query(series, from, to, points),
      events: (device, from, to, limit) => tables().events(deviceKey(device), from, to, limit),
      csv: (range) => csvLines(tables(), range),
    }
  }

  /** The OTA relay (src/ota): the command hold for `$ota_upgrade`, the files devices fetch, the observer of their status. */
  private async startOta(): Promise<void> {
    const { cfg, core, store } = this
    this.ota = new OtaRelay({
      cfg: cfg.ota,
      dataDir: cfg.gateway.dataDir,
      held: core.router,
      uplink: (up) => core.pipeline.uplink(up),
      isMapped: (dev) => core.routes.isMapped(dev),
      transportOf: (dev) =>
        store.connections
          .list()
          .filter((c) => c.productId === dev.productId && c.deviceId === dev.deviceId)
          .sort((a, b) => (b.connectedAt ?? 0) - (a.connectedAt ?? 0))[0]?.transport,
      httpPort: () => this.web?.port ?? 0,
      coapPort: () => this.adapter<{ port: number }>('coap')?.port,
      tls: { ca: cfg.northbound.tls?.ca, rejectUnauthorized: cfg.northbound.tls?.rejectUnauthorized ?? true },
      sendLocal: (cmd) => core.router.accept(cmd, 'local'),
      devicesWithTag: (productId, tag) => this.enabledWithTag(productId, tag).map((d) => ({ productId: d.productId, deviceId: d.deviceId })),
      isRegistered: (d) => this.store.registry.get(d) !== undefined,
      metrics: this.metrics.forAdapter('ota'),
      log: this.log.child({ component: 'ota' }),
    })
    await this.ota.start()
    core.setLocalFiles(this.ota)
    core.addStatusPart('ota', () => this.ota.statusPart())
    core.router.on('delivered', (sc: StoredCommand) => this.ota.delivered(sc))
    store.outbox.on('committed', (rows: OutboxRow[]) => this.ota.observe(rows))
    core.router.setHold(this.ota)
  }

  private outboxNear = false

  /**
   * The outbox passing 90 % of its quota: eviction of acknowledged telemetry is next. Said once,
   * until it is below 80 % again. (The backlog drained after an outage is the hub link's line.)
   */
  private watchOutbox(): void {
    const s = this.store.outbox.stats()
    const share = s.maxBytes ? s.bytes / s.maxBytes : 0
    if (!this.outboxNear && share >= 0.9) {
      this.outboxNear = true
      this.log.warn(
        { bytes: s.bytes, maxBytes: s.maxBytes, messages: s.messages, oldestAgeMs: s.oldestAgeMs },
        `outbox at ${Math.round(share * 100)} % of its quota: the oldest telemetry is evicted next; restore the hub link or raise store.outbox.maxBytes`,
      )
    } else if (this.outboxNear && share < 0.8) {
      this.outboxNear = false
    }
  }

  /** One gateway per data folder (src/store/data-dir-lock.ts); also proves the folder is writable. */
  private lockDataDir(): void {
    const dir = this.cfg.gateway.dataDir
    const lock = new DataDirLock(dir)
    try {
      if (!lock.acquire()) {
        this.log.warn({ dataDir: dir, code: ErrorCodes.STORE_FULL }, 'the data disk is full: running without the data folder lock (a second gateway on this folder would not be refused)')
      }
    } catch (err) {
      if (err instanceof DataDirBusyError) throw new StartError(ErrorCodes.DATA_DIR_BUSY, 'gateway.dataDir', err.message)
      const e = err as NodeJS.ErrnoException
      // The folder (or a lock file left by another user's run) exists but is not this user's to write: say whose it is.
      const denied = (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS') && e.path !== undefined && existsSync(e.path)
      throw new StartError(
        ErrorCodes.DATA_DIR_UNWRITABLE,
        'gateway.dataDir',
        denied
          ? `cannot create or write ${dir}: ${describeUnusable(dir, { path: e.path!, need: 'write', errno: e.code! })}`
          : `cannot create or write ${dir} (${e.code ?? e.message}): make it writable by the user the gateway runs as (uid ${process.getuid?.() ?? '?'}), or set gateway.dataDir to a folder that is`,
      )
    }
    this.lock = lock
  }

  /**
   * Each configured adapter: loaded, built with its own context and config section, started. One
   * that fails is named, logged, reported in health and left out; the gateway carries on, unless it
   * is one the gateway cannot run without (the broker).
   */
  private async startAdapters(): Promise<void> {
    for (const entry of adapterEntries(this.opts.adapters)) {
      const section = (this.cfg as unknown as Record<string, unknown>)[entry.key]
      if (section === undefined && !entry.always) continue
      const running: RunningAdapter = { entry, health: { name: entry.name, kind: 'native', state: 'starting' } }
      this.adapters.push(running)
      try {
        const { adapterModule } = await entry.load()
        running.instance = adapterModule.create(this.core.contextFor(entry.name, entry.transport), section as never)
        running.health.kind = running.instance.adapter.kind
        await running.instance.adapter.start()
        running.health.state = 'running'
        this.core.attach(running.instance.adapter)
      } catch (err) {
        running.health.state = 'failed'
        running.health.error = (err as Error).message
        if (entry.required) {
          // What it opened before failing (the listeners bound so far) would keep the process alive.
          await running.instance?.adapter.stop().catch(() => undefined)
          throw err
        }
        this.log.error(
          { err, adapter: entry.name, code: ErrorCodes.ADAPTER_FAILED },
          `adapter ${entry.name} failed to start; the rest of the gateway carries on without it: fix its "${entry.key}" config section or its device, then restart`,
        )
        await running.instance?.adapter.stop().catch(() => undefined)
      }
    }
  }

  /** A running adapter by name (tests and diagnostics). */
  adapter<T>(name: string): T | undefined {
    return this.adapters.find((a) => a.health.name === name && a.health.state === 'running')?.instance?.adapter as T | undefined
  }

  health(): HealthReport {
    const reasons = this.core.healthReasons()
    if (this.salvage) reasons.push('store_salvaged')
    if (this.brokerSalvage) reasons.push('broker_sessions_salvaged')
    if (this.brokerSessionsLost) reasons.push('broker_sessions_in_memory')
    for (const a of this.adapters) {
      if (a.health.state === 'failed') reasons.push(`adapter_failed:${a.health.name}`)
      else if (a.health.state === 'running') for (const r of a.instance?.health?.() ?? []) reasons.push(`${a.health.name}:${r}`)
    }
    const nb = this.bridge.status()
    const after = this.cfg.northbound.degradedAfterSeconds * 1000
    if (nb.configured && after > 0 && nb.downSince !== null && Date.now() - nb.downSince >= after) reasons.push('northbound_down')
    const s = this.store.outbox.stats()
    return {
      status: reasons.length ? 'degraded' : 'ok',
      reasons,
      northbound: {
        configured: nb.configured,
        connected: nb.connected,
        since: nb.since,
        downSince: nb.downSince,
        links: nb.links,
        linksConnected: nb.linksConnected,
        lastError: nb.lastError && { ...nb.lastError },
        nextRetryAt: nb.nextRetryAt,
      },
      outbox: { messages: s.messages, bytes: s.bytes, oldestAgeMs: s.oldestAgeMs, maxBytes: s.maxBytes, drainRate: this.bridge.drainRate() },
      clock: { offsetMs: this.core.clock.offsetMs, measuredAt: this.core.clock.lastSample?.measuredAt ?? null },
      adapters: this.adapters.map((a) => ({ ...a.health })),
      ...(this.history ? { history: this.history.health() } : {}),
      ...(this.salvage || this.brokerSalvage ? { store: { salvage: this.salvage, brokerSalvage: this.brokerSalvage } } : {}),
    }
  }

  /** The narrow interface the web is built on (src/web/deps.ts). */
  private webDeps(tls: ServerTls | undefined): WebDeps {
    const { store, core, metrics } = this
    // A native device is online while its adapter owns it; a mapped one is owned while away too.
    const online = (ref: DeviceRef): boolean => {
      const owner = core.routes.owner(ref)
      return owner !== undefined && (owner.kind === 'native' || core.sessions.isMappedReachable(ref))
    }
    const connectionsOf = (ref: DeviceRef): ConnectionInfo[] =>
      store.connections.list().filter((c) => c.productId === ref.productId && c.deviceId === ref.deviceId)
    return {
      log: this.log.child({ component: 'http' }),
      // Never into the log stream (journals are kept and shipped): the log says where the file is.
      apiToken: loadOrCreateApiToken(this.cfg.gateway.dataDir, this.cfg.http.apiToken, (file) =>
        this.log.info({ file }, `API token generated into ${file} (mode 0600): send it as "Authorization: Bearer <token>"; set http.apiToken to choose your own`),
      ),
      apiTokenWhere: this.cfg.http.apiToken ? "the gateway's config (http.apiToken)" : path.join(this.cfg.gateway.dataDir, API_TOKEN_FILE),
      health: () => this.health(),
      metrics: async () => {
        core.updateGauges()
        return { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() }
      },
      outboxStats: () => store.outbox.stats(),
      devices: {
        list: () => store.registry.list(),
        get: (ref) => store.registry.get(ref),
        add: (d) => store.registry.add(d),
        setEnabled: (ref, enabled) => void store.registry.setEnabled(ref, enabled),
        setSecret: async (ref, secret) => void (await store.registry.setSecret(ref, secret)),
        setTags: (ref, tags) => core.tags.editLocally(ref, tags),
        remove: (ref) => store.registry.remove(ref),
        connections: connectionsOf,
        online,
        lastSeen: (ref) => lastSeen(connectionsOf(ref), core.pipeline.lastHeard(ref)),
        shadow: (ref) => core.shadows.get(ref),
        activity: (ref) => {
          const a = this.activity.view(deviceKey(ref))
          // No message since the start: the transport of its latest session (kept across restarts).
          return a.protocol ? a : { ...a, protocol: connectionsOf(ref).sort((x, y) => (y.connectedAt ?? 0) - (x.connectedAt ?? 0))[0]?.transport ?? null }
        },
        messages: (ref, limit) => this.activity.messages(deviceKey(ref), limit),
        waitingCommands: () => store.commands.waitingCounts(),
      },
      commands: {
        history: (ref, limit) => core.router.history(ref, limit),
        send: (cmd) => core.router.accept(cmd, 'local'),
        waitForReply: (ref, requestId, timeoutMs) => core.router.waitForReply(ref, requestId, timeoutMs),
      },
      adapterRoutes: this.adapters.flatMap((a) => (a.instance?.routes && a.health.state === 'running' ? [{ adapter: a.health.name, plugin: a.instance.routes }] : [])),
      history: this.historyReader(),
      deviceRoutes: this.adapters.flatMap((a) => (a.instance?.deviceRoutes && a.health.state === 'running' ? [{ adapter: a.health.name, plugin: a.instance.deviceRoutes }] : [])),
      rules: this.rules && { list: () => this.rules!.ruleStats(), alarms: () => this.rules!.alarms() },
      serviceRoutes: [
        { prefix: 'ota', api: otaApiRoutes(this.ota), files: otaFileRoutes(this.ota) },
        { prefix: 'store', api: storeRoutes({ salvage: () => this.salvage, acknowledge: () => this.acknowledgeSalvage() }) },
      ],
      live: this.live,
      logs: { lines: (minLevel, limit) => this.logRing.lines(minLevel, limit) },
      support: { version: VERSION, dataDir: this.cfg.gateway.dataDir, redactedConfig: () => redactConfig(this.cfg) },
      uiDir: DEFAULT_UI_DIR,
      ui: {
        store: store.uiAuth,
        dataDir: this.cfg.gateway.dataDir,
        idleTimeoutSeconds: this.cfg.http.session.idleTimeoutSeconds,
        maxLifetimeSeconds: this.cfg.http.session.maxLifetimeSeconds,
        secureCookie: tls !== undefined,
        countFailure: (reason) => metrics.uiLoginFailures.inc({ reason }),
      },
    }
  }

  /** Stop intake, stop sources first and sinks last, close the database. Bounded by `deadlineMs`. */
  async stop(deadlineMs = 8_000): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    const work = async (): Promise<void> => {
      clearInterval(this.gaugeTimer)
      this.core?.closeIntake()
      await this.web?.stop()
      for (const a of [...this.adapters].reverse()) {
        if (a.instance && a.health.state === 'running') {
          this.core.routes.remove(a.instance.adapter)
          await a.instance.adapter.stop()
          a.health.state = 'stopped'
        }
      }
      this.rules?.stop()
      await this.core?.stop()
      await this.ota?.stop()
      await this.bridge?.stop()
    }
    await Promise.race([work(), new Promise((r) => setTimeout(r, deadlineMs).unref())])
    // Only a gateway that loaded the file writes it (one that failed to start must not empty it).
    if (this.activityTimer) {
      clearInterval(this.activityTimer)
      this.saveActivity()
    }
    // After the bridge: what the last commits brought is written before history.db closes.
    await this.history?.stop()
    this.store?.close()
    this.brokerSessions?.close()
    this.lock?.release()
    this.log.info('gateway stopped')
  }
}
