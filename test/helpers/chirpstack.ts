// ChirpStack's side for the LoRaWAN tests: a plain Mosquitto (MQTT 5, anonymous, persistent) in a
// temp dir stands in for the broker ChirpStack's MQTT integration publishes to, and `ChirpstackSim`
// plays ChirpStack on it: it publishes events as ChirpStack v4 does (QoS 1, MQTT 5, its topic
// scheme, JSON from ../shared/chirpstack/ or protobuf built with @chirpstack/chirpstack-api's own
// classes) and records the downlinks the gateway sends to `command/down`. `ChirpstackApiServer` is
// ChirpStack's gRPC API: a grpc-js server built from the package's own service definitions.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import integration from '@chirpstack/chirpstack-api/integration/integration_pb.js'
import gw from '@chirpstack/chirpstack-api/gw/gw_pb.js'
import common from '@chirpstack/chirpstack-api/common/common_pb.js'
import structPb from 'google-protobuf/google/protobuf/struct_pb.js'
import timestampPb from 'google-protobuf/google/protobuf/timestamp_pb.js'
import { Server as GrpcServer, ServerCredentials, status as GrpcStatus, type sendUnaryData, type ServerUnaryCall, type ServiceError, type UntypedServiceImplementation } from '@grpc/grpc-js'
import { DeviceServiceService } from '@chirpstack/chirpstack-api/api/device_grpc_pb.js'
import { ApplicationServiceService } from '@chirpstack/chirpstack-api/api/application_grpc_pb.js'
import devicePb from '@chirpstack/chirpstack-api/api/device_pb.js'
import applicationPb from '@chirpstack/chirpstack-api/api/application_pb.js'
import { isRunning, trackChild, waitForExit } from './child-processes.js'
import { writeMosquittoPasswords } from './hub-broker.js'
import { freePort, waitForTcp } from './ports.js'

const MOSQUITTO = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto'
export const APP_ID = '17c82e96-be03-4f38-aef3-f83d48582d97'
// shared/ sits beside the checkout (as in CI's clone); the workplace's own copy otherwise.
const EXAMPLES =
  process.env.CHIRPSTACK_EXAMPLES ??
  [path.resolve(fileURLToPath(new URL('../../../shared/chirpstack', import.meta.url))), '/work/shared/chirpstack'].find((d) => existsSync(d)) ??
  '/work/shared/chirpstack'

/** One of ChirpStack's documented example events (../shared/chirpstack/{name}.json), parsed. */
export function example(name: 'up' | 'join' | 'ack' | 'txack' | 'status' | 'log'): Record<string, unknown> {
  return JSON.parse(readFileSync(path.join(EXAMPLES, `${name}-1.json`), 'utf8')) as Record<string, unknown>
}

/** Mosquitto as ChirpStack's broker: MQTT 5, anonymous, persistence on (sessions survive its restart). */
export class ChirpstackBroker {
  private dir?: string
  private port?: number
  private child?: ChildProcess

  private tlsPort?: number

  /**
   * `tls`: also a TLS listener with this certificate (the plain one stays, for ChirpStack's side).
   * `users`: only these may connect (no anonymous access), as on a broker shared beyond the box.
   */
  constructor(private readonly opts: { maxQueuedMessages?: number; tls?: { cert: string; key: string }; users?: { username: string; password: string }[] } = {}) {}

  get url(): string {
    if (this.port === undefined) throw new Error('ChirpstackBroker: start() first')
    return `mqtt://127.0.0.1:${this.port}`
  }

  /** The TLS listener (constructed with `tls`). */
  get tlsUrl(): string {
    if (this.tlsPort === undefined) throw new Error('ChirpstackBroker: no TLS listener (construct with tls, then start())')
    return `mqtts://127.0.0.1:${this.tlsPort}`
  }

  async log(): Promise<string> {
    const file = this.dir && path.join(this.dir, 'mosquitto.log')
    return file && existsSync(file) ? readFile(file, 'utf8') : ''
  }

  async start(): Promise<void> {
    if (!existsSync(MOSQUITTO)) throw new Error(`ChirpstackBroker: ${MOSQUITTO} not found; install Debian's mosquitto (scripts/test.sh does)`)
    if (!this.dir) {
      this.dir = await mkdtemp(path.join(os.tmpdir(), 'chirpstack-broker-'))
      this.port = await freePort()
      const tls = this.opts.tls
      if (tls) this.tlsPort = await freePort()
      const conf = [
        ...(process.getuid?.() === 0 ? ['user root'] : []),
        `listener ${this.port} 127.0.0.1`,
        ...(tls ? [`listener ${this.tlsPort} 127.0.0.1`, `certfile ${tls.cert}`, `keyfile ${tls.key}`] : []),
        ...(this.opts.users ? ['allow_anonymous false', `password_file ${path.join(this.dir, 'passwd')}`] : ['allow_anonymous true']),
        'persistence true',
        `persistence_location ${this.dir}/`,
        `max_queued_messages ${this.opts.maxQueuedMessages ?? 1000}`,
        'set_tcp_nodelay true',
        `log_dest file ${path.join(this.dir, 'mosquitto.log')}`,
        'log_type error',
        'log_type warning',
        'log_type notice',
        '',
      ]
      if (this.opts.users) await writeMosquittoPasswords(path.join(this.dir, 'passwd'), this.opts.users)
      await writeFile(path.join(this.dir, 'mosquitto.conf'), conf.join('\n'))
    }
    const child = spawn(MOSQUITTO, ['-c', path.join(this.dir, 'mosquitto.conf')], { cwd: this.dir, stdio: 'ignore' })
    this.child = child
    trackChild(child)
    const abort = (): string | undefined => (isRunning(child) ? undefined : `mosquitto exited (${child.exitCode})`)
    await waitForTcp(this.port!, { timeoutMs: 10_000, abort })
    if (this.tlsPort !== undefined) await waitForTcp(this.tlsPort, { timeoutMs: 10_000, abort })
  }

  /** SIGTERM and wait (Mosquitto saves sessions and queued messages); start() brings it back on the same port. */
  async stop(): Promise<void> {
    const child = this.child
    if (child && isRunning(child)) {
      child.kill('SIGTERM')
      await waitForExit(child, 10_000)
    }
  }

  async close(): Promise<void> {
    const child = this.child
    if (child && isRunning(child)) {
      child.kill('SIGTERM')
      await waitForExit(child, 10_000).catch(() => child.kill('SIGKILL'))
    }
    if (this.dir) await rm(this.dir, { recursive: true, force: true })
    this.dir = undefined
  }
}

export interface DeviceInfoArgs {
  devEui: string
  applicationName?: string
  deviceProfileName?: string
  deviceClass?: 'CLASS_A' | 'CLASS_B' | 'CLASS_C'
  tags?: Record<string, string>
}

/** A downlink the gateway published to `command/down`, as ChirpStack would read it. */
export interface SeenDownlink {
  topic: string
  id: string
  devEui: string
  confirmed: boolean
  fPort: number
  data: Buffer
  expiresAt?: string
}

/** ChirpStack's MQTT integration, played on the broker. */
export class ChirpstackSim {
  readonly downlinks: SeenDownlink[] = []
  private client?: MqttClient
  private seq = 0

  constructor(
    private readonly url: string,
    readonly encoding: 'json' | 'protobuf' = 'json',
    private readonly login?: { username: string; password: string },
  ) {}

  async start(): Promise<void> {
    this.client = await mqtt.connectAsync(this.url, { protocolVersion: 5, clientId: `chirpstack-${process.pid}-${Date.now()}`, clean: true, reconnectPeriod: 500, ...this.login })
    this.client.on('message', (topic, payload) => this.downlinks.push(this.readDownlink(topic, payload)))
    // ChirpStack >= 4.17 subscribes with a shared subscription.
    await this.client.subscribeAsync('$share/chirpstack/application/+/device/+/command/down', { qos: 1 })
  }

  async stop(): Promise<void> {
    await this.client?.endAsync()
  }

  /** A fresh deduplicationId (ChirpStack: a UUID per deduplicated uplink). */
  nextId(): string {
    this.seq++
    return `00000000-0000-4000-8000-${String(this.seq).padStart(6, '0')}${Date.now().toString(16).slice(-6)}`
  }

  /** Publish raw bytes on an event topic (QoS 1), as ChirpStack does. */
  async publishRaw(devEui: string, event: string, body: Buffer | string): Promise<void> {
    await this.client!.publishAsync(`application/${APP_ID}/device/${devEui}/event/${event}`, body, { qos: 1 })
  }

  /**
   * An event in the configured encoding. `fields` are ChirpStack's JSON fields (lowerCamelCase) of
   * that event; for protobuf they are set through the package's message classes.
   */
  async publish(event: 'up' | 'join' | 'ack' | 'txack' | 'status' | 'log', dev: DeviceInfoArgs, fields: Record<string, unknown>): Promise<void> {
    await this.publishRaw(dev.devEui, event, this.encode(event, dev, fields))
  }

  encode(event: 'up' | 'join' | 'ack' | 'txack' | 'status' | 'log', dev: DeviceInfoArgs, fields: Record<string, unknown>): Buffer {
    if (this.encoding === 'json') {
      return Buffer.from(JSON.stringify({ ...fields, deviceInfo: jsonDeviceInfo(dev) }))
    }
    return Buffer.from(protobufEvent(event, dev, fields).serializeBinary())
  }

  waitForDownlink(match: (d: SeenDownlink) => boolean, timeoutMs = 10_000, what = 'a downlink'): Promise<SeenDownlink> {
    const deadline = Date.now() + timeoutMs
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.downlinks.find(match)
        if (found) return resolve(found)
        if (Date.now() > deadline) return reject(new Error(`${what} did not reach ChirpStack within ${timeoutMs} ms; got ${JSON.stringify(this.downlinks.map((d) => [d.devEui, d.fPort, d.data.toString('hex')]))}`))
        setTimeout(check, 20)
      }
      check()
    })
  }

  private readDownlink(topic: string, payload: Buffer): SeenDownlink {
    if (this.encoding === 'json') {
      const o = JSON.parse(payload.toString('utf8')) as { id: string; devEui: string; confirmed: boolean; fPort: number; data: string; expiresAt?: string }
      return { topic, ...o, data: Buffer.from(o.data, 'base64') }
    }
    const c = integration.DownlinkCommand.deserializeBinary(new Uint8Array(payload))
    const data = c.getData()
    return {
      topic,
      id: c.getId(),
      devEui: c.getDevEui(),
      confirmed: c.getConfirmed(),
      fPort: c.getFPort(),
      data: typeof data === 'string' ? Buffer.from(data, 'base64') : Buffer.from(data),
      expiresAt: c.getExpiresAt()?.toDate().toISOString(),
    }
  }
}

function jsonDeviceInfo(dev: DeviceInfoArgs): Record<string, unknown> {
  return {
    tenantId: '52f14cd4-c6f1-4fbd-8f87-4025e1d49242',
    tenantName: 'ChirpStack',
    applicationId: APP_ID,
    applicationName: dev.applicationName ?? 'Test application',
    deviceProfileId: '14855bf7-d10d-4aee-b618-ebfcb64dc7ad',
    deviceProfileName: dev.deviceProfileName ?? 'Test device-profile',
    deviceName: `dev-${dev.devEui}`,
    devEui: dev.devEui,
    ...(dev.deviceClass ? { deviceClassEnabled: dev.deviceClass } : {}),
    ...(dev.tags ? { tags: dev.tags } : {}),
  }
}

function pbDeviceInfo(dev: DeviceInfoArgs): integration.DeviceInfo {
  const d = new integration.DeviceInfo()
  d.setTenantId('52f14cd4-c6f1-4fbd-8f87-4025e1d49242')
  d.setTenantName('ChirpStack')
  d.setApplicationId(APP_ID)
  d.setApplicationName(dev.applicationName ?? 'Test application')
  d.setDeviceProfileId('14855bf7-d10d-4aee-b618-ebfcb64dc7ad')
  d.setDeviceProfileName(dev.deviceProfileName ?? 'Test device-profile')
  d.setDeviceName(`dev-${dev.devEui}`)
  d.setDevEui(dev.devEui)
  d.setDeviceClassEnabled(common.DeviceClass[dev.deviceClass ?? 'CLASS_A'])
  for (const [k, v] of Object.entries(dev.tags ?? {})) d.getTagsMap().set(k, v)
  return d
}

const ts = (iso: unknown): timestampPb.Timestamp => timestampPb.Timestamp.fromDate(typeof iso === 'string' ? new Date(iso) : new Date())

/** The event as ChirpStack's protobuf message, every field set through the package's classes. */
function protobufEvent(event: string, dev: DeviceInfoArgs, f: Record<string, unknown>): { serializeBinary(): Uint8Array } {
  const info = pbDeviceInfo(dev)
  switch (event) {
    case 'up': {
      const e = new integration.UplinkEvent()
      e.setDeduplicationId(String(f.deduplicationId ?? ''))
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setDevAddr(String(f.devAddr ?? '00189440'))
      e.setAdr(Boolean(f.adr))
      e.setDr(Number(f.dr ?? 0))
      e.setFCnt(Number(f.fCnt ?? 0))
      e.setFPort(Number(f.fPort ?? 0))
      e.setConfirmed(Boolean(f.confirmed))
      e.setData(new Uint8Array(Buffer.from(String(f.data ?? ''), 'base64')))
      if (f.object) e.setObject(structPb.Struct.fromJavaScript(f.object as Record<string, structPb.JavaScriptValue>))
      for (const r of (f.rxInfo as { gatewayId: string; rssi: number; snr: number }[] | undefined) ?? []) {
        const rx = new gw.UplinkRxInfo()
        rx.setGatewayId(r.gatewayId)
        rx.setRssi(r.rssi)
        rx.setSnr(r.snr)
        e.addRxInfo(rx)
      }
      const tx = new gw.UplinkTxInfo()
      tx.setFrequency(Number((f.txInfo as { frequency?: number } | undefined)?.frequency ?? 868100000))
      e.setTxInfo(tx)
      return e
    }
    case 'join': {
      const e = new integration.JoinEvent()
      e.setDeduplicationId(String(f.deduplicationId ?? ''))
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setDevAddr(String(f.devAddr ?? ''))
      return e
    }
    case 'ack': {
      const e = new integration.AckEvent()
      e.setDeduplicationId(String(f.deduplicationId ?? ''))
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setQueueItemId(String(f.queueItemId ?? ''))
      e.setAcknowledged(Boolean(f.acknowledged))
      e.setFCntDown(Number(f.fCntDown ?? 0))
      return e
    }
    case 'txack': {
      const e = new integration.TxAckEvent()
      e.setDownlinkId(Number(f.downlinkId ?? 1))
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setQueueItemId(String(f.queueItemId ?? ''))
      e.setFCntDown(Number(f.fCntDown ?? 0))
      e.setGatewayId(String(f.gatewayId ?? '0016c001f153a14c'))
      return e
    }
    case 'status': {
      const e = new integration.StatusEvent()
      e.setDeduplicationId(String(f.deduplicationId ?? ''))
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setMargin(Number(f.margin ?? 0))
      e.setExternalPowerSource(Boolean(f.externalPowerSource))
      e.setBatteryLevelUnavailable(Boolean(f.batteryLevelUnavailable))
      e.setBatteryLevel(Number(f.batteryLevel ?? 0))
      return e
    }
    case 'log': {
      const e = new integration.LogEvent()
      e.setTime(ts(f.time))
      e.setDeviceInfo(info)
      e.setLevel(integration.LogLevel[String(f.level ?? 'INFO') as keyof integration.LogLevelMap])
      e.setCode(integration.LogCode[String(f.code ?? 'UNKNOWN') as keyof integration.LogCodeMap])
      e.setDescription(String(f.description ?? ''))
      for (const [k, v] of Object.entries((f.context as Record<string, string> | undefined) ?? {})) e.getContextMap().set(k, v)
      return e
    }
  }
  throw new Error(`ChirpstackSim: no protobuf for ${event}`)
}

/** A downlink the gateway queued through `DeviceService.Enqueue`, as the API received it. */
export interface EnqueuedItem {
  id: string
  devEui: string
  fPort: number
  confirmed: boolean
  data: Buffer
  expiresAt?: number
}

/** What the stand-in API lists: applications of a tenant, and each application's devices. */
export interface ApiContents {
  tenantId: string
  applications: { id: string; name: string; devices: { devEui: string; name: string; deviceProfileName: string; tags?: Record<string, string> }[] }[]
}

/**
 * ChirpStack's gRPC API: a grpc-js server built from the package's own `DeviceServiceService` and
 * `ApplicationServiceService`. It refuses calls without `authorization: Bearer {token}`
 * (UNAUTHENTICATED), as ChirpStack does; Enqueue answers a fresh queue item id and records the
 * request, List/Get answer from `contents` in pages as ChirpStack does (`limit`, `offset`, `totalCount`).
 */
export class ChirpstackApiServer {
  readonly enqueued: EnqueuedItem[] = []
  /** Devices Enqueue answers NOT_FOUND for, as ChirpStack does for a devEui it does not know. */
  readonly unknownDevices = new Set<string>()
  /** When set, the next Enqueue answer is held back until the test calls `release()`. */
  hold: { release?: () => void } | undefined
  /** Calls refused for a wrong or missing token. */
  unauthenticated = 0
  private server?: GrpcServer
  private port?: number

  constructor(
    readonly token: string,
    readonly contents: ApiContents = { tenantId: '', applications: [] },
  ) {}

  /** host:port, as `lorawan.chirpstack.api.url` takes it. */
  get url(): string {
    if (this.port === undefined) throw new Error('ChirpstackApiServer: start() first')
    return `127.0.0.1:${this.port}`
  }

  async start(): Promise<void> {
    const server = new GrpcServer()
    const authorized = (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<never>): boolean => {
      if (call.metadata.get('authorization')[0] === `Bearer ${this.token}`) return true
      this.unauthenticated++
      cb({ code: GrpcStatus.UNAUTHENTICATED, details: 'authorization header missing or invalid' } as ServiceError, null)
      return false
    }
    const page = <T>(all: T[], limit: number, offset: number): T[] => all.slice(offset, offset + limit)
    server.addService(DeviceServiceService, {
      enqueue: (call: ServerUnaryCall<devicePb.EnqueueDeviceQueueItemRequest, devicePb.EnqueueDeviceQueueItemResponse>, cb: sendUnaryData<devicePb.EnqueueDeviceQueueItemResponse>) => {
        if (!authorized(call, cb)) return
        const item = call.request.getQueueItem()!
        if (this.unknownDevices.has(item.getDevEui())) return cb({ code: GrpcStatus.NOT_FOUND, details: `Object does not exist (id: ${item.getDevEui()})` } as ServiceError, null)
        const id = `7e57${String(this.enqueued.length).padStart(4, '0')}-0000-4000-8000-${Date.now().toString(16).padStart(12, '0').slice(-12)}`
        this.enqueued.push({
          id, devEui: item.getDevEui(), fPort: item.getFPort(), confirmed: item.getConfirmed(), data: Buffer.from(item.getData_asU8()), expiresAt: item.getExpiresAt()?.toDate().getTime(),
        })
        const res = new devicePb.EnqueueDeviceQueueItemResponse()
        res.setId(id)
        if (this.hold) this.hold.release = () => cb(null, res)
        else cb(null, res)
      },
      list: (call: ServerUnaryCall<devicePb.ListDevicesRequest, devicePb.ListDevicesResponse>, cb: sendUnaryData<devicePb.ListDevicesResponse>) => {
        if (!authorized(call, cb)) return
        const app = this.contents.applications.find((a) => a.id === call.request.getApplicationId())
        if (!app) return cb({ code: GrpcStatus.NOT_FOUND, details: `Object does not exist (id: ${call.request.getApplicationId()})` } as ServiceError, null)
        const res = new devicePb.ListDevicesResponse()
        res.setTotalCount(app.devices.length)
        for (const d of page(app.devices, call.request.getLimit(), call.request.getOffset())) {
          const item = new devicePb.DeviceListItem()
          item.setDevEui(d.devEui)
          item.setName(d.name)
          item.setDeviceProfileName(d.deviceProfileName)
          for (const [k, v] of Object.entries(d.tags ?? {})) item.getTagsMap().set(k, v)
          res.addResult(item)
        }
        cb(null, res)
      },
    } as unknown as UntypedServiceImplementation)
    server.addService(ApplicationServiceService, {
      list: (call: ServerUnaryCall<applicationPb.ListApplicationsRequest, applicationPb.ListApplicationsResponse>, cb: sendUnaryData<applicationPb.ListApplicationsResponse>) => {
        if (!authorized(call, cb)) return
        // ChirpStack lists a tenant's applications; a request without the tenant lists none for a tenant key.
        const apps = call.request.getTenantId() === this.contents.tenantId ? this.contents.applications : []
        const res = new applicationPb.ListApplicationsResponse()
        res.setTotalCount(apps.length)
        for (const a of page(apps, call.request.getLimit(), call.request.getOffset())) {
          const item = new applicationPb.ApplicationListItem()
          item.setId(a.id)
          item.setName(a.name)
          res.addResult(item)
        }
        cb(null, res)
      },
      get: (call: ServerUnaryCall<applicationPb.GetApplicationRequest, applicationPb.GetApplicationResponse>, cb: sendUnaryData<applicationPb.GetApplicationResponse>) => {
        if (!authorized(call, cb)) return
        const a = this.contents.applications.find((x) => x.id === call.request.getId())
        if (!a) return cb({ code: GrpcStatus.NOT_FOUND, details: `Object does not exist (id: ${call.request.getId()})` } as ServiceError, null)
        const app = new applicationPb.Application()
        app.setId(a.id)
        app.setName(a.name)
        app.setTenantId(this.contents.tenantId)
        const res = new applicationPb.GetApplicationResponse()
        res.setApplication(app)
        cb(null, res)
      },
    } as unknown as UntypedServiceImplementation)
    this.port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))))
    this.server = server
  }

  stop(): void {
    this.server?.forceShutdown()
    this.server = undefined
  }
}
