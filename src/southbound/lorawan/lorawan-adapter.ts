// The LoRaWAN adapter (issue 8): LoRaWAN end devices behind ChirpStack v4 become mapped children of
// the hub. Events come from the broker ChirpStack's MQTT integration publishes to (the gateway is a
// client there: ChirpStack speaks MQTT 5 only, which the gateway's own broker does not), over a
// persistent session with QoS 1, and each is PUBACKed only once what it turned into is durable in
// the outbox (DESIGN.md, "Durability rules"): events published while the gateway is down wait in
// the broker's session queue. Commands and shadow changes from the hub go back as `command/down`
// publishes with an id of our own, whose fate (`txack`, `ack`, `log`) becomes the command's reply.
import { createHash, randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import type { Counter, Gauge } from 'prom-client'
import type { AdapterContext, RecordSet } from '../../core/adapter-context.js'
import { RateLimitedLog } from '../../core/log.js'
import { ErrorCodes } from '../../core/errors.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../core/types.js'
import { deviceKey } from '../../core/types.js'
import { newMessageId } from '../../core/message-id.js'
import { BadEventError, encodeDownlink, isEventType, parseJsonEvent, parseProtobufEvent, type LoraEvent } from './chirpstack-events.js'
import { CayenneError, decodeCayenne } from './cayenne-lpp.js'
import { DeviceMap } from './device-map.js'
import { CodecError, JsCodec } from './js-codec.js'
import { HttpIntake } from './http-intake.js'
import { ChirpstackApi, EnqueueError } from './chirpstack-api.js'
import { silentTooLong, UplinkRhythm } from './uplink-rhythm.js'
import type { DeviceSettings, LorawanConfig } from './schema.js'
import type { LoraChildDiagnostics, LoraChildFacts, LoraDiagnostics, LoraProblem, QueuedDownlinkView } from './diagnostics-types.js'

// Housekeeping (downlinks past their life, silent devices) runs this often, or more often for a
// short awayAfterSeconds.
const SWEEP_MS = 60_000
// A status change this large goes up at once, whatever the interval (issue 8: "unless something
// changed materially").
const BATTERY_STEP = 5

/** What the adapter knows of one child, for its diagnostics route and update_status. */
export interface LoraChildState extends LoraChildFacts {
  /** The update_status last sent (its JSON), and when. */
  statusSent?: { at: number; battery?: number; externalPower?: boolean }
  /** How often it usually sends (from ChirpStack's times of its uplinks). */
  rhythm: UplinkRhythm
}

// Problems kept per child (in memory, for this run).
const PROBLEMS_KEPT = 20

type Fate = { kind: 'txack' } | { kind: 'ack'; acknowledged: boolean } | { kind: 'log'; code: string; description: string }

// Fates of queue items not (yet) known: kept this long, at most this many (see keepEarly).
const EARLY_TTL_MS = 60_000
const EARLY_MAX = 1_000

/**
 * A downlink handed to ChirpStack whose fate the gateway still follows, kept durably under its queue
 * item id (a restart between the hand-over and the `txack`/`ack` must not lose the reply).
 */
export interface PendingDownlink {
  device: DeviceRef
  fPort: number
  confirmed: boolean
  /** The command it carries (a shadow change has none: its fate is logged, not replied). */
  cmd?: Pick<Command, 'type' | 'name' | 'requestId' | 'encoding'>
  what: string
  queuedAt: number
  /** Followed until then (the command's ExpiresAt, else downlinkTtlSeconds). */
  until: number
  sent: boolean
}

export class LorawanAdapter implements SouthboundAdapter {
  readonly name = 'lorawan'
  readonly kind = 'mapped'
  private client?: MqttClient
  private http?: HttpIntake
  private api?: ChirpstackApi
  private started = false
  private connected = false
  private readonly map: DeviceMap
  private readonly children = new Map<string, LoraChildState>()
  private readonly pending: RecordSet<PendingDownlink>
  private readonly early = new Map<string, { at: number; fates: Fate[] }>()
  // JavaScript codecs by file, each in its own sandbox engine; null: it did not load.
  private readonly codecs = new Map<string, JsCodec | null>()
  private readonly warn: RateLimitedLog
  private readonly seen
  private sweepTimer?: NodeJS.Timeout
  private readonly m: {
    events: Counter<'type'>
    bad: Counter<'reason'>
    duplicates: Counter<'type'>
    unknown: Counter
    decodeErrors: Counter<'codec'>
    codecLoadFailures: Counter
    downlinks: Counter<'result'>
    logs: Counter<'code' | 'level'>
    connectedGauge: Gauge
  }

  constructor(
    private readonly ctx: AdapterContext,
    private readonly cfg: LorawanConfig,
  ) {
    this.map = new DeviceMap(cfg)
    this.warn = new RateLimitedLog(ctx.log, 10 * 60_000)
    this.seen = ctx.seen('events', cfg.dedupTtlSeconds * 1000)
    this.pending = ctx.records<PendingDownlink>('downlinks')
    const mt = ctx.metrics
    this.m = {
      events: mt.counter('events_total', 'ChirpStack events taken in, by type', ['type']),
      bad: mt.counter('bad_events_total', 'ChirpStack messages refused as unreadable (acknowledged and dropped), by reason', ['reason']),
      duplicates: mt.counter('duplicate_events_total', 'events dropped as repeats of a deduplicationId already handled', ['type']),
      unknown: mt.counter('unknown_device_events_total', 'events of devEuis neither listed nor auto-registered'),
      decodeErrors: mt.counter('decode_errors_total', 'uplinks whose payload the configured codec could not decode (sent raw)', ['codec']),
      codecLoadFailures: mt.counter('codec_load_failures_total', 'JavaScript codec files that could not be loaded (their devices get raw payloads)'),
      downlinks: mt.counter('downlinks_total', 'downlinks and their fate: queued, sent, acknowledged, not_acknowledged, failed, expired, refused', ['result']),
      logs: mt.counter('log_events_total', 'ChirpStack log events, by code and level', ['code', 'level']),
      connectedGauge: mt.gauge('broker_connected', '1 while connected to ChirpStack\'s broker'),
    }
  }

  async start(): Promise<void> {
    this.started = true
    // Listed devices are children from the start, so the hub link holds their command topics.
    for (const d of this.map.configured) {
      const ref = { productId: d.productId, deviceId: d.deviceId }
      await this.ctx.devices.register(ref, { tags: d.tags })
      this.child(ref, d.devEui.toLowerCase())
    }
    await this.loadCodecs()
    if (this.cfg.chirpstack.api) this.api = new ChirpstackApi(this.cfg.chirpstack.api)
    const h = this.cfg.chirpstack.http
    if (h) {
      this.http = new HttpIntake(h, (source, type, body, encoding) => this.onEvent(source, type, body, encoding), (status, why, remote) =>
        this.warn.warn(`http:${status}`, { status, why, remote }, 'refused a request on the ChirpStack HTTP integration endpoint'))
      await this.http.start()
      this.ctx.log.info({ host: h.host, port: this.http.port, path: h.path }, 'taking ChirpStack HTTP integration events')
    }
    this.connect()
    const away = this.cfg.awayAfterSeconds * 1000
    this.sweepTimer = setInterval(() => this.sweep(), away > 0 ? Math.min(SWEEP_MS, Math.max(1_000, away / 4)) : SWEEP_MS).unref()
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    clearInterval(this.sweepTimer)
    await this.http?.stop()
    this.http = undefined
    const client = this.client
    this.client = undefined
    this.connected = false
    this.m.connectedGauge.set(0)
    // Not forced: events in flight finish (and are PUBACKed) before the connection closes; the
    // session stays at the broker, which queues what comes meanwhile.
    if (client) await new Promise<void>((resolve) => client.end(false, {}, () => resolve()))
    this.api?.close()
    this.api = undefined
    for (const c of this.codecs.values()) c?.dispose()
    this.codecs.clear()
  }

  /** Load every JavaScript codec the config names; one that fails is reported and its devices get raw payloads. */
  private async loadCodecs(): Promise<void> {
    const files = new Set<string>()
    for (const s of [...this.cfg.devices, ...Object.values(this.cfg.deviceProfiles)]) if (s.codec?.startsWith('/')) files.add(s.codec)
    for (const file of files) {
      try {
        this.codecs.set(file, await JsCodec.load(file))
      } catch (err) {
        if (!(err instanceof CodecError)) throw err
        this.codecs.set(file, null)
        this.m.codecLoadFailures.inc()
        this.ctx.log.error({ err: err.message, file, code: ErrorCodes.CONFIG_INVALID }, 'LoRaWAN codec not loaded; its devices\' payloads go up raw until it is fixed and the gateway restarted')
      }
    }
  }

  private jsCodec(settings: DeviceSettings): JsCodec | undefined {
    return settings.codec?.startsWith('/') ? (this.codecs.get(settings.codec) ?? undefined) : undefined
  }

  /** Connected to ChirpStack's broker. */
  get isConnected(): boolean {
    return this.connected
  }

  /** The HTTP integration endpoint's port (when configured). */
  get httpPort(): number | undefined {
    return this.http?.port
  }

  owns(device: DeviceRef): boolean {
    return this.started && (this.children.has(deviceKey(device)) || this.map.isOurs(device))
  }

  /**
   * Per child: last uplink, radio quality, frame counter, battery, log counts, what went wrong, and
   * its downlink queue (the downlinks ChirpStack holds for it that the gateway still follows).
   */
  diagnostics(): LoraDiagnostics {
    const queues = new Map<string, QueuedDownlinkView[]>()
    for (const { id, value: p, expiresAt } of this.pending.list()) {
      const k = deviceKey(p.device)
      let q = queues.get(k)
      if (!q) queues.set(k, (q = []))
      q.push({
        id,
        what: p.what,
        command: p.cmd?.name,
        requestId: p.cmd?.requestId,
        fPort: p.fPort,
        confirmed: p.confirmed,
        state: p.sent ? 'sent' : 'queued',
        queuedAt: p.queuedAt,
        followedUntil: expiresAt,
      })
    }
    return {
      connected: this.connected,
      devices: [...this.children.values()].map((c) => {
        const downlinks = (queues.get(deviceKey(c.device)) ?? []).sort((a, b) => a.queuedAt - b.queuedAt)
        return { ...view(c), pendingDownlinks: downlinks.length, downlinks }
      }),
    }
  }

  /** One child as in diagnostics(); undefined when not a LoRaWAN child. */
  diagnosticsOf(device: DeviceRef): LoraChildDiagnostics | undefined {
    return this.diagnostics().devices.find((d) => deviceKey(d.device) === deviceKey(device))
  }

  /** Note something that went wrong with a child (kept for the diagnostics route, newest last). */
  private problem(c: LoraChildState | undefined, p: Omit<LoraProblem, 'at'> & { at?: number }): void {
    if (!c) return
    c.problems.push({ ...p, at: p.at ?? Date.now() })
    if (c.problems.length > PROBLEMS_KEPT) c.problems.splice(0, c.problems.length - PROBLEMS_KEPT)
  }

  // ---- events in -------------------------------------------------------------------------------

  private connect(): void {
    const c = this.cfg.chirpstack.mqtt
    const tls = c.tls
    const o: IClientOptions = {
      clientId: c.clientId,
      username: c.username,
      password: c.password,
      keepalive: c.keepaliveSeconds,
      // A persistent session: what ChirpStack publishes while the gateway is away waits for it.
      clean: false,
      protocolVersion: c.protocolVersion,
      // [MQTT-3.1.2-23] without a Session Expiry Interval an MQTT 5 session ends with the connection.
      ...(c.protocolVersion === 5 ? { properties: { sessionExpiryInterval: c.sessionExpirySeconds } } : {}),
      reconnectPeriod: 2_000,
      connectTimeout: 15_000,
      ...(tls
        ? {
            ca: tls.ca ? readFileSync(tls.ca) : undefined,
            cert: tls.cert ? readFileSync(tls.cert) : undefined,
            key: tls.key ? readFileSync(tls.key) : undefined,
            rejectUnauthorized: tls.rejectUnauthorized,
          }
        : {}),
    }
    const client = mqtt.connect(c.url, o)
    this.client = client
    client.on('connect', (connack) => {
      this.connected = true
      this.m.connectedGauge.set(1)
      this.ctx.log.info({ url: c.url, clientId: c.clientId, sessionPresent: connack.sessionPresent }, 'connected to ChirpStack\'s broker')
      // Commands that waited while ChirpStack's broker was away go now to the devices heard from.
      for (const child of this.children.values()) if (child.reachable) this.ctx.deviceReachable(child.device)
      if (!connack.sessionPresent) {
        client.subscribe(c.eventTopic, { qos: 1 }, (err) => {
          if (err) this.ctx.log.error({ err: err.message, topic: c.eventTopic, code: ErrorCodes.ADAPTER_FAILED }, 'could not subscribe to ChirpStack\'s events')
        })
      }
    })
    client.on('close', () => {
      if (this.connected) this.ctx.log.warn({ url: c.url }, 'lost ChirpStack\'s broker; reconnecting')
      this.connected = false
      this.m.connectedGauge.set(0)
    })
    client.on('error', (err) => this.warn.warn('mqtt-error', { err: err.message, url: c.url, code: ErrorCodes.ADAPTER_FAILED }, 'ChirpStack broker connection error'))
    // MQTT.js sends the PUBACK when handleMessage calls back: only once the event is durable. An
    // event that cannot be made durable is not acknowledged; dropping the connection makes the
    // broker send it again from the persistent session.
    client.handleMessage = (packet, done) => {
      const topic = packet.topic
      this.onEvent(topic, topic.slice(topic.lastIndexOf('/') + 1), packet.payload as Buffer, this.cfg.chirpstack.encoding).then(
        () => done(),
        (err: Error) => {
          this.warn.warn('not-durable', { err: err.message, topic: packet.topic, code: ErrorCodes.STORE_FAILED }, 'could not store a ChirpStack event; the broker will send it again')
          done(err)
          client.end(true, {}, () => {
            if (this.started && this.client === client) this.connect()
          })
        },
      )
    }
  }

  /**
   * One event from ChirpStack (an MQTT message, or an HTTP integration POST): `source` names where
   * it came from in logs. Resolves once it may be acknowledged: 'taken' (durable, a duplicate, or of
   * an unknown device) or 'bad' (unreadable: counted, logged, dropped); rejects when it could not be
   * made durable.
   */
  private async onEvent(source: string, type: string, body: Buffer, encoding: 'json' | 'protobuf'): Promise<'taken' | 'bad'> {
    if (!isEventType(type)) {
      this.m.bad.inc({ reason: 'bad_event_type' })
      this.warn.warn(`type:${type.slice(0, 20)}`, { source }, 'not a ChirpStack event type (up, join, ack, txack, status, log, location); dropped')
      return 'bad'
    }
    let ev: LoraEvent
    try {
      ev = encoding === 'protobuf' ? parseProtobufEvent(type, body) : parseJsonEvent(type, body)
    } catch (err) {
      if (!(err instanceof BadEventError)) throw err
      this.m.bad.inc({ reason: err.reason })
      this.ctx.metrics.rejected('malformed_packet')
      this.warn.warn(`bad:${err.reason}`, { source, err: err.message, bytes: body.length }, `unreadable ChirpStack ${type} event; dropped`)
      return 'bad'
    }
    this.m.events.inc({ type })
    // [ChirpStack README] deduplicate on event type + deduplicationId (an `up` and its `status`
    // share one id); QoS 1 means at-least-once. The id is recorded only once what the event turned
    // into is durable: a crash in between makes the broker send it again and it is taken in again,
    // under the same MessageId (the hub's duplicate filter drops the copy), never lost.
    const dedupKey = ev.deduplicationId ? `${type}/${ev.deduplicationId}` : undefined
    if (dedupKey && this.seen.has(dedupKey)) {
      this.m.duplicates.inc({ type })
      return 'taken'
    }
    await this.handle(ev)
    if (dedupKey) this.seen.firstTime(dedupKey)
    return 'taken'
  }

  private async handle(ev: LoraEvent): Promise<void> {
    const mapping = this.map.map(ev.device)
    if (!mapping) {
      this.m.unknown.inc()
      this.warn.warn(`unknown:${ev.device.devEui}`, { devEui: ev.device.devEui, application: ev.device.applicationName },
        'event of a LoRaWAN device that is neither in lorawan.devices nor auto-registered; dropped')
      return
    }
    const dev = mapping.device
    if (!this.ctx.devices.get(dev)) await this.ctx.devices.register(dev, { tags: mapping.tags })
    const c = this.child(dev, ev.device.devEui)
    c.applicationId = ev.device.applicationId || c.applicationId
    c.deviceProfileName = ev.device.deviceProfileName || c.deviceProfileName
    c.deviceClass = ev.device.deviceClass ?? c.deviceClass
    switch (ev.type) {
      case 'up':
        this.heard(c)
        return this.onUp(c, ev)
      case 'join':
        this.heard(c)
        return
      case 'status':
        this.heard(c)
        c.battery = { level: ev.batteryLevel, margin: ev.margin, externalPower: ev.externalPowerSource }
        return this.maybeStatus(c)
      case 'txack':
        return this.onTxAck(ev.queueItemId)
      case 'ack':
        return this.onAck(ev.queueItemId, ev.acknowledged)
      case 'log':
        return this.onLog(c, ev)
      case 'location':
        return
    }
  }

  private child(dev: DeviceRef, devEui: string): LoraChildState {
    const k = deviceKey(dev)
    let c = this.children.get(k)
    if (!c) this.children.set(k, (c = { device: dev, devEui, reachable: false, logs: {}, problems: [], rhythm: new UplinkRhythm() }))
    return c
  }

  /** The device was heard from: reachable (a `$connection` on the change, waiting commands go). */
  private heard(c: LoraChildState): void {
    c.lastSeen = Date.now()
    if (!c.reachable) {
      c.reachable = true
      this.ctx.deviceReachable(c.device)
    }
  }

  private async onUp(c: LoraChildState, ev: Extract<LoraEvent, { type: 'up' }>): Promise<void> {
    const best = ev.rxInfo.reduce<{ rssi?: number; snr?: number }>(
      (b, g) => ({ rssi: b.rssi === undefined || g.rssi > b.rssi ? g.rssi : b.rssi, snr: b.snr === undefined || g.snr > b.snr ? g.snr : b.snr }),
      {},
    )
    c.radio = { ...best, gateways: ev.rxInfo.length, fCnt: ev.fCnt, dr: ev.dr, frequency: ev.frequency }
    c.lastUplink = { at: Date.now(), fPort: ev.fPort, fCnt: ev.fCnt }
    const sentAt = ev.time ? Date.parse(ev.time) : NaN
    c.rhythm.note(Number.isFinite(sentAt) ? sentAt : Date.now())
    // fPort 0 carries MAC commands only: nothing for the hub but the radio facts.
    if (ev.fPort > 0) {
      const settings = this.map.settings(c.device, ev.device.deviceProfileName)
      const decoded = await this.decode(ev, settings, c.device)
      const payload: Record<string, unknown> = this.cfg.radioInPayload ? { ...decoded, _radio: { ...c.radio } } : decoded
      const dataType = settings.dataTypes?.[String(ev.fPort)] ?? `fport_${ev.fPort}`
      await this.ctx.uplink({
        topic: {
          kind: 'upload_data',
          productId: c.device.productId,
          deviceId: c.device.deviceId,
          name: dataType,
          messageId: messageIdFor('up', ev.deduplicationId, ev.time),
        },
        payload: Buffer.from(JSON.stringify(payload)),
        transport: 'lorawan',
        receivedAt: Date.now(),
        meta: { rssi: best.rssi, snr: best.snr, frameCounter: ev.fCnt, gatewayCount: ev.rxInfo.length, port: ev.fPort, battery: c.battery?.level },
      })
      c.lastUplink = { ...c.lastUplink, dataType, payload }
      const keys = settings.shadow?.reportedKeys ?? []
      const reported = Object.fromEntries(keys.filter((k) => k in decoded).map((k) => [k, decoded[k]]))
      if (Object.keys(reported).length) await this.ctx.reportState(c.device, reported)
    }
    await this.maybeStatus(c)
  }

  /** ChirpStack's `object`, else the configured codec, else the raw bytes (issue 8, "Payload decoding"). */
  private async decode(ev: Extract<LoraEvent, { type: 'up' }>, settings: DeviceSettings, device: DeviceRef): Promise<Record<string, unknown>> {
    if (ev.object) return ev.object
    const js = this.jsCodec(settings)
    if (js) {
      try {
        const { data, warnings } = await js.decodeUplink(ev.data, ev.fPort, ev.time ?? new Date().toISOString())
        if (warnings.length) this.warn.warn(`codec-warn:${ev.device.devEui}`, { devEui: ev.device.devEui, codec: js.file, warnings }, 'codec warnings')
        return data
      } catch (err) {
        if (!(err instanceof CodecError)) throw err
        this.m.decodeErrors.inc({ codec: 'js' })
        this.problem(this.children.get(deviceKey(device)), { source: 'gateway', level: 'ERROR', code: 'CODEC', description: `fPort ${ev.fPort}: ${err.message}; sent raw` })
        this.warn.warn(`codec:${js.file}`, { devEui: ev.device.devEui, device: deviceKey(device), fPort: ev.fPort, codec: js.file, err: err.message }, 'JavaScript codec failed; payload sent raw')
      }
    }
    if (settings.codec === 'cayenne') {
      try {
        return decodeCayenne(ev.data)
      } catch (err) {
        if (!(err instanceof CayenneError)) throw err
        this.m.decodeErrors.inc({ codec: 'cayenne' })
        this.problem(this.children.get(deviceKey(device)), { source: 'gateway', level: 'ERROR', code: 'CODEC', description: `fPort ${ev.fPort}: Cayenne LPP: ${err.message}; sent raw` })
        this.warn.warn(`cayenne:${ev.device.devEui}`, { devEui: ev.device.devEui, device: deviceKey(device), fPort: ev.fPort, err: err.message }, 'Cayenne LPP payload did not decode; sent raw')
      }
    }
    return { raw: ev.data.toString('base64'), fPort: ev.fPort }
  }

  /** Radio quality and battery as the child's update_status, at most once per interval unless it moved materially. */
  private async maybeStatus(c: LoraChildState): Promise<void> {
    const now = Date.now()
    const last = c.statusSent
    const material =
      !last ||
      (c.battery?.level !== undefined && (last.battery === undefined || Math.abs(c.battery.level - last.battery) >= BATTERY_STEP)) ||
      (c.battery !== undefined && c.battery.externalPower !== last.externalPower)
    if (!material && now - last.at < this.cfg.statusIntervalSeconds * 1000) return
    const status: Record<string, unknown> = { transport: 'lorawan', devEui: c.devEui, last_seen: c.lastSeen ?? now }
    if (c.radio) Object.assign(status, { rssi: c.radio.rssi, snr: c.radio.snr, gateways: c.radio.gateways, fcnt: c.radio.fCnt, dr: c.radio.dr, frequency: c.radio.frequency })
    if (c.battery) Object.assign(status, { battery: c.battery.level ?? null, margin: c.battery.margin, external_power: c.battery.externalPower })
    await this.ctx.uplink({
      topic: { kind: 'update_status', productId: c.device.productId, deviceId: c.device.deviceId, messageId: newMessageId() },
      payload: Buffer.from(JSON.stringify(status)),
      transport: 'lorawan',
      receivedAt: now,
    })
    c.statusSent = { at: now, battery: c.battery?.level, externalPower: c.battery?.externalPower }
  }

  // ---- downlinks and their fate ----------------------------------------------------------------

  async deliver(cmd: Command): Promise<DeliveryResult> {
    const c = this.children.get(deviceKey(cmd.device))
    const devEui = c?.devEui
    // Downlinks go through the gRPC API when configured, else through ChirpStack's broker (whose
    // topic needs the application id, learnt from the device's events).
    if (!this.started || !devEui || !c?.reachable || (!this.api && (!c.applicationId || !this.connected))) return 'offline'
    const settings = this.map.settings(cmd.device, c.deviceProfileName)
    if (cmd.name === '$update_shadow') return this.applyDesired(c, cmd, settings)
    // The core's other internals ($set_tags, $set_ntp, ...) have no LoRaWAN form: the core keeps
    // tags and time for mapped devices itself.
    if (cmd.name.startsWith('$')) return 'delivered'
    if (cmd.type === 'm2m') {
      this.m.downlinks.inc({ result: 'refused' })
      this.warn.warn('m2m', { device: deviceKey(cmd.device) }, 'm2m messages have no LoRaWAN form; dropped')
      return 'delivered'
    }
    // A Class A device listens only right after its own uplink: it cannot answer within the RPC
    // window (PROTOCOL.md: the hub waits ~5 s).
    if (cmd.type === 'rpc' && (c.deviceClass ?? 'CLASS_A') === 'CLASS_A') {
      this.m.downlinks.inc({ result: 'refused' })
      await this.ctx.replyFor(cmd, 'failed', { reason: 'a LoRaWAN Class A device cannot answer within the RPC window; send a command instead', code: 'class_a_rpc' })
      return 'delivered'
    }
    const spec = settings.commands?.[cmd.name]
    const js = this.jsCodec(settings)
    if (!spec && js?.canEncode) return this.encodeCommand(c, devEui, cmd, js)
    if (!spec) {
      this.m.downlinks.inc({ result: 'refused' })
      this.warn.warn(`no-spec:${cmd.name}`, { device: deviceKey(cmd.device), command: cmd.name }, 'no fPort configured for this command (lorawan.devices[].commands); refused')
      await this.ctx.replyFor(cmd, 'failed', { reason: `no LoRaWAN fPort configured for command ${cmd.name}`, code: 'no_fport' })
      return 'delivered'
    }
    const data = cmd.encoding === 'base64' ? Buffer.from(cmd.payload.toString('utf8'), 'base64') : cmd.payload
    const what = cmd.via ? `${cmd.name} (tag ${cmd.via.tag})` : cmd.name
    // ExpiresAt is in UNIX seconds (PROTOCOL.md, "Identities").
    const expiresAt = cmd.expiresAt !== undefined ? cmd.expiresAt * 1000 : undefined
    const sent = await this.sendDownlink(c, devEui, { fPort: spec.fPort, confirmed: spec.confirmed, data, expiresAt }, cmd, what)
    return sent ? 'delivered' : 'offline'
  }

  /** A command without a configured fPort, encoded by the codec's encodeDownlink from its JSON payload. */
  private async encodeCommand(c: LoraChildState, devEui: string, cmd: Command, js: JsCodec): Promise<DeliveryResult> {
    let encoded: { bytes: Buffer; fPort?: number }
    try {
      const text = cmd.encoding === 'base64' ? Buffer.from(cmd.payload.toString('utf8'), 'base64').toString('utf8') : cmd.payload.toString('utf8')
      let data: unknown
      try {
        data = JSON.parse(text)
      } catch {
        throw new CodecError('the command payload is not JSON, which encodeDownlink needs')
      }
      encoded = await js.encodeDownlink(data)
      if (encoded.fPort === undefined) throw new CodecError('encodeDownlink returned no fPort')
    } catch (err) {
      if (!(err instanceof CodecError)) throw err
      this.m.downlinks.inc({ result: 'refused' })
      await this.ctx.replyFor(cmd, 'failed', { reason: err.message, code: 'codec' })
      return 'delivered'
    }
    const expiresAt = cmd.expiresAt !== undefined ? cmd.expiresAt * 1000 : undefined
    const sent = await this.sendDownlink(c, devEui, { fPort: encoded.fPort!, confirmed: false, data: encoded.bytes, expiresAt }, cmd, cmd.name)
    return sent ? 'delivered' : 'offline'
  }

  /** `$update_shadow` {desired, version}: the changed keys as one downlink (adapters.md). */
  private async applyDesired(c: LoraChildState, cmd: Command, settings: DeviceSettings): Promise<DeliveryResult> {
    let desired: unknown
    try {
      desired = (JSON.parse(cmd.payload.toString('utf8')) as { desired?: unknown }).desired
    } catch {
      desired = undefined
    }
    if (typeof desired !== 'object' || desired === null) {
      this.warn.warn('shadow-bad', { device: deviceKey(c.device) }, '$update_shadow without a desired object; ignored')
      return 'delivered'
    }
    const spec = settings.shadow
    const js = this.jsCodec(settings)
    let down: { fPort: number; data: Buffer } | undefined
    if (js?.canEncode) {
      try {
        const encoded = await js.encodeDownlink(desired)
        const fPort = encoded.fPort ?? spec?.fPort
        if (fPort === undefined) throw new CodecError('encodeDownlink returned no fPort and shadow.fPort is not configured')
        down = { fPort, data: encoded.bytes }
      } catch (err) {
        if (!(err instanceof CodecError)) throw err
        this.m.downlinks.inc({ result: 'refused' })
        this.warn.warn(`shadow-codec:${deviceKey(c.device)}`, { device: deviceKey(c.device), err: err.message }, 'desired state could not be encoded; it stays queued')
        return 'offline'
      }
    } else if (spec) {
      down = { fPort: spec.fPort, data: Buffer.from(JSON.stringify(desired)) }
    }
    if (!down) {
      // Kept queued by the core: it applies once the device's shadow downlink is configured.
      this.m.downlinks.inc({ result: 'refused' })
      this.warn.warn(`shadow-nospec:${deviceKey(c.device)}`, { device: deviceKey(c.device) },
        'desired state for a LoRaWAN device with neither `shadow.fPort` nor a codec with encodeDownlink; it waits until one is configured')
      return 'offline'
    }
    const sent = await this.sendDownlink(c, c.devEui, { ...down, confirmed: spec?.confirmed ?? false }, undefined, '$update_shadow')
    return sent ? 'delivered' : 'offline'
  }

  /**
   * Hand a downlink to ChirpStack: `DeviceService.Enqueue` when the API is configured, else a publish
   * to `command/down` with an id of our own. Resolves true once ChirpStack (or its broker) has it;
   * false when it should be tried again later. A downlink ChirpStack refuses outright is answered
   * `failed` for its command and counts as handed over (true), so it does not wait forever.
   */
  private async sendDownlink(
    c: LoraChildState,
    devEui: string,
    d: { fPort: number; confirmed: boolean; data: Buffer; expiresAt?: number },
    cmd: Command | undefined,
    what: string,
  ): Promise<boolean> {
    const until = d.expiresAt ?? Date.now() + this.cfg.downlinkTtlSeconds * 1000
    if (this.api) {
      let id: string
      try {
        id = await this.api.enqueue({ devEui, ...d })
      } catch (err) {
        if (!(err instanceof EnqueueError)) throw err
        this.warn.warn(`enqueue:${err.transient}`, { err: err.message, device: deviceKey(c.device), what }, 'ChirpStack\'s API did not queue a downlink')
        if (err.transient || !cmd) return false
        this.m.downlinks.inc({ result: 'failed' })
        this.problem(c, { source: 'gateway', level: 'ERROR', code: 'ENQUEUE', description: `ChirpStack's API refused the downlink: ${err.message}`, downlink: what })
        await this.ctx.replyFor(cmd, 'failed', { reason: err.message, code: 'enqueue' })
        return true
      }
      this.pending.put(id, pendingOf(c.device, d, cmd, what, until), until)
      this.m.downlinks.inc({ result: 'queued' })
      await this.applyEarly(id)
      return true
    }
    const client = this.client
    if (!client || !this.connected) return false
    const id = randomUUID()
    const topic = this.cfg.chirpstack.mqtt.commandTopic.replace('{applicationId}', c.applicationId ?? '').replace('{devEui}', devEui)
    const body = encodeDownlink({ id, devEui, ...d }, this.cfg.chirpstack.encoding)
    // Registered before publishing: a txack may come back before our PUBACK callback runs.
    this.pending.put(id, pendingOf(c.device, d, cmd, what, until), until)
    try {
      await client.publishAsync(topic, body, { qos: 1 })
    } catch (err) {
      this.pending.delete(id)
      this.warn.warn('downlink-publish', { err: (err as Error).message, device: deviceKey(c.device) }, 'could not hand a downlink to ChirpStack\'s broker; it stays queued')
      return false
    }
    this.m.downlinks.inc({ result: 'queued' })
    this.ctx.log.debug({ device: deviceKey(c.device), id, fPort: d.fPort, confirmed: d.confirmed, what }, 'downlink queued at ChirpStack')
    return true
  }

  private async onTxAck(queueItemId: string): Promise<void> {
    const p = this.pending.get(queueItemId)
    if (p) await this.applyFate(queueItemId, p, { kind: 'txack' })
    else this.keepEarly(queueItemId, { kind: 'txack' })
  }

  private async onAck(queueItemId: string, acknowledged: boolean): Promise<void> {
    const p = this.pending.get(queueItemId)
    if (p) await this.applyFate(queueItemId, p, { kind: 'ack', acknowledged })
    else this.keepEarly(queueItemId, { kind: 'ack', acknowledged })
  }

  /**
   * ChirpStack's log events: counted per device and code. Those about a queue item end that downlink:
   * ChirpStack v4.19 deletes the item and names it in `context.queue_item_id` for EXPIRED,
   * DOWNLINK_PAYLOAD_SIZE and F_CNT_DOWN (chirpstack/src/downlink/data.rs). DOWNLINK_GATEWAY (a radio
   * gateway refused the transmission, chirpstack/src/downlink/tx_ack.rs) carries no context and the
   * item stays queued for the next receive window: counted only.
   */
  private async onLog(c: LoraChildState, ev: Extract<LoraEvent, { type: 'log' }>): Promise<void> {
    c.logs[ev.code] = (c.logs[ev.code] ?? 0) + 1
    this.m.logs.inc({ code: ev.code, level: ev.level })
    const id = ev.context.queue_item_id
    const p = id ? this.pending.get(id) : undefined
    if (ev.level !== 'INFO') {
      const at = ev.time ? Date.parse(ev.time) : NaN
      this.problem(c, { at: Number.isFinite(at) ? at : undefined, source: 'chirpstack', level: ev.level, code: ev.code, description: ev.description, downlink: p?.what })
    }
    if (p) return this.applyFate(id!, p, { kind: 'log', code: ev.code, description: ev.description })
    if (id) this.keepEarly(id, { kind: 'log', code: ev.code, description: ev.description })
    if (ev.level !== 'INFO') this.warn.warn(`log:${ev.code}:${c.devEui}`, { devEui: c.devEui, code: ev.code, level: ev.level, description: ev.description }, 'ChirpStack reported a problem with a device')
  }

  /**
   * What ChirpStack says became of a downlink, as the reply to its command. The reply is made durable
   * before the record changes: a crash in between repeats a reply (the event comes again, it was not
   * acknowledged yet) rather than losing it.
   */
  private async applyFate(id: string, p: PendingDownlink, f: Fate): Promise<void> {
    const cmd: Command | undefined = p.cmd && { ...p.cmd, device: p.device, payload: Buffer.alloc(0) }
    const child = this.children.get(deviceKey(p.device))
    switch (f.kind) {
      case 'txack':
        this.m.downlinks.inc({ result: 'sent' })
        if (!p.sent && cmd) await this.ctx.replyFor(cmd, 'sent')
        // An unconfirmed downlink's story ends here; a confirmed one waits for its ack.
        if (!p.confirmed) this.pending.delete(id)
        else if (!p.sent) this.pending.put(id, { ...p, sent: true }, p.until)
        return
      case 'ack':
        this.m.downlinks.inc({ result: f.acknowledged ? 'acknowledged' : 'not_acknowledged' })
        if (!f.acknowledged) this.problem(child, { source: 'gateway', level: 'WARNING', code: 'NOT_ACKNOWLEDGED', description: 'the device did not acknowledge the confirmed downlink', downlink: p.what })
        if (cmd) await this.ctx.replyFor(cmd, f.acknowledged ? 'acknowledged' : 'not_acknowledged')
        else if (!f.acknowledged) this.ctx.log.warn({ device: deviceKey(p.device), what: p.what }, 'a confirmed LoRaWAN downlink was not acknowledged by the device')
        this.pending.delete(id)
        return
      case 'log': {
        const expired = f.code === 'EXPIRED'
        this.m.downlinks.inc({ result: expired ? 'expired' : 'failed' })
        if (cmd) await this.ctx.replyFor(cmd, expired ? 'expired' : 'failed', expired ? {} : { reason: `${f.code}: ${f.description}` })
        else this.ctx.log.warn({ device: deviceKey(p.device), what: p.what, code: f.code, description: f.description }, 'a LoRaWAN downlink failed; the device keeps its values until it reports them')
        this.pending.delete(id)
        return
      }
    }
  }

  /**
   * With the gRPC API the queue item id is ChirpStack's, known only once Enqueue has answered: a fate
   * that overtakes that answer (a Class C device served at once) is kept briefly and applied then.
   */
  private keepEarly(id: string, f: Fate): void {
    if (!this.api || this.early.size >= EARLY_MAX) return
    const e = this.early.get(id) ?? { at: Date.now(), fates: [] }
    e.fates.push(f)
    this.early.set(id, e)
  }

  private async applyEarly(id: string): Promise<void> {
    const e = this.early.get(id)
    if (!e) return
    this.early.delete(id)
    for (const f of e.fates) {
      const p = this.pending.get(id)
      if (p) await this.applyFate(id, p, f)
    }
  }

  /** Forget early fates nobody claimed; report devices silent for too long as away (downlinks past their life expire in the store). */
  private sweep(): void {
    const now = Date.now()
    for (const [id, e] of this.early) if (now - e.at > EARLY_TTL_MS) this.early.delete(id)
    const away = this.cfg.awayAfterSeconds * 1000
    if (away > 0) {
      for (const c of this.children.values()) {
        if (c.reachable && c.lastSeen !== undefined && silentTooLong(now - c.lastSeen, c.rhythm.usualMs, away)) {
          c.reachable = false
          this.ctx.deviceAway(c.device)
        }
      }
    }
  }
}

/**
 * A MessageId fixed by the event itself where it has an id: the same ChirpStack event taken in twice
 * (a crash between the seen-set and the outbox) reaches the hub with one MessageId, which the hub's
 * duplicate filter drops. 24 hex characters in the ObjectId shape (PROTOCOL.md, "Identities").
 */
export function messageIdFor(type: string, deduplicationId: string | undefined, time: string | undefined): string {
  if (!deduplicationId) return newMessageId()
  const at = time ? Date.parse(time) : NaN
  const seconds = Math.floor((Number.isFinite(at) ? at : Date.now()) / 1000)
  const b = Buffer.alloc(12)
  b.writeUInt32BE(seconds >>> 0, 0)
  createHash('sha256').update(`${type}/${deduplicationId}`).digest().copy(b, 4, 0, 8)
  return b.toString('hex')
}

/** What is kept of a downlink in flight (the command without its payload: only its reply is still to come). */
function pendingOf(device: DeviceRef, d: { fPort: number; confirmed: boolean; expiresAt?: number }, cmd: Command | undefined, what: string, until: number): PendingDownlink {
  return {
    device,
    fPort: d.fPort,
    confirmed: d.confirmed,
    cmd: cmd && { type: cmd.type, name: cmd.name, requestId: cmd.requestId, encoding: cmd.encoding },
    what,
    queuedAt: Date.now(),
    until,
    sent: false,
  }
}

type LoraChildView = LoraChildFacts & { usualIntervalSeconds?: number }

function view(c: LoraChildState): LoraChildView {
  const { statusSent: _statusSent, rhythm, ...rest } = c
  const usual = rhythm.usualMs
  return { ...rest, ...(usual !== undefined ? { usualIntervalSeconds: Math.round(usual / 1000) } : {}) }
}
