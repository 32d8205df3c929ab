// ChirpStack v4's integration events and downlink commands, in both encodings (JSON and protobuf),
// translated to and from this adapter's own small event shape. ChirpStack's types stop here: the
// rest of the adapter sees `LoraEvent`. Facts per ../shared/chirpstack/README.md (checked against
// ChirpStack v4.19): JSON is the protobuf JSON mapping with lowerCamelCase names, enums as names,
// zero values omitted; protobuf is decoded by the topic's event segment with the package's classes
// (their `toObject()` is not ChirpStack's JSON, so fields are read one by one).
import integration from '@chirpstack/chirpstack-api/integration/integration_pb.js'
import common from '@chirpstack/chirpstack-api/common/common_pb.js'
import timestampPb from 'google-protobuf/google/protobuf/timestamp_pb.js'

export const EVENT_TYPES = ['up', 'join', 'ack', 'txack', 'status', 'log', 'location'] as const
export type EventType = (typeof EVENT_TYPES)[number]

export const isEventType = (s: string): s is EventType => (EVENT_TYPES as readonly string[]).includes(s)

/** What every event says about its device (ChirpStack's `deviceInfo`). */
export interface LoraDevice {
  devEui: string
  applicationId: string
  applicationName: string
  deviceProfileName: string
  deviceName: string
  /** 'CLASS_A' | 'CLASS_B' | 'CLASS_C'; absent in older servers' events. */
  deviceClass?: string
  tags: Record<string, string>
}

interface Base {
  device: LoraDevice
  /** RFC 3339, as ChirpStack wrote it. */
  time?: string
  deduplicationId?: string
}

export interface RxGateway {
  gatewayId: string
  rssi: number
  snr: number
}

export type LoraEvent =
  | (Base & {
      type: 'up'
      fPort: number
      fCnt: number
      dr: number
      confirmed: boolean
      data: Buffer
      /** ChirpStack's decoded payload, only when its codec ran. */
      object?: Record<string, unknown>
      rxInfo: RxGateway[]
      frequency?: number
    })
  | (Base & { type: 'join'; devAddr: string })
  | (Base & { type: 'ack'; queueItemId: string; acknowledged: boolean; fCntDown: number })
  | (Base & { type: 'txack'; queueItemId: string; fCntDown: number; gatewayId: string })
  | (Base & { type: 'status'; margin: number; batteryLevel?: number; externalPowerSource: boolean })
  | (Base & { type: 'log'; level: string; code: string; description: string; context: Record<string, string> })
  | (Base & { type: 'location' })

/** Input that is not a ChirpStack event: counted and logged by the adapter, never thrown further. */
export class BadEventError extends Error {
  constructor(
    message: string,
    readonly reason: 'malformed_json' | 'malformed_protobuf' | 'bad_event',
  ) {
    super(message)
  }
}

type Json = Record<string, unknown>

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)

function str(o: Json, key: string, where: string, required = false): string {
  const v = o[key]
  if (v === undefined || v === null) {
    if (required) throw new BadEventError(`${where}.${key} is missing`, 'bad_event')
    return ''
  }
  if (typeof v !== 'string') throw new BadEventError(`${where}.${key} must be a string`, 'bad_event')
  return v
}

function num(o: Json, key: string, where: string): number {
  const v = o[key]
  if (v === undefined || v === null) return 0 // proto3 JSON omits zero values
  // int64/uint64 fields may come as strings in the protobuf JSON mapping.
  const n = typeof v === 'string' ? Number(v) : v
  if (typeof n !== 'number' || !Number.isFinite(n)) throw new BadEventError(`${where}.${key} must be a number`, 'bad_event')
  return n
}

const bool = (o: Json, key: string): boolean => o[key] === true

function stringMap(v: unknown, where: string): Record<string, string> {
  if (v === undefined || v === null) return {}
  if (!isObject(v)) throw new BadEventError(`${where} must be an object`, 'bad_event')
  const out: Record<string, string> = {}
  for (const [k, val] of Object.entries(v)) out[k] = typeof val === 'string' ? val : JSON.stringify(val)
  return out
}

const DEV_EUI = /^[0-9a-fA-F]{16}$/
// Standard base64 with padding (protobuf JSON mapping of `bytes`); Node's decoder would skip junk.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

function jsonDevice(o: Json): LoraDevice {
  const d = o.deviceInfo
  if (!isObject(d)) throw new BadEventError('deviceInfo is missing (a ChirpStack v3 event? v4 is required)', 'bad_event')
  const devEui = str(d, 'devEui', 'deviceInfo', true)
  if (!DEV_EUI.test(devEui)) throw new BadEventError(`deviceInfo.devEui ${JSON.stringify(devEui).slice(0, 40)} is not 16 hex characters`, 'bad_event')
  return {
    devEui: devEui.toLowerCase(),
    applicationId: str(d, 'applicationId', 'deviceInfo'),
    applicationName: str(d, 'applicationName', 'deviceInfo'),
    deviceProfileName: str(d, 'deviceProfileName', 'deviceInfo'),
    deviceName: str(d, 'deviceName', 'deviceInfo'),
    deviceClass: str(d, 'deviceClassEnabled', 'deviceInfo') || undefined,
    tags: stringMap(d.tags, 'deviceInfo.tags'),
  }
}

/** One event in ChirpStack's JSON encoding (`json = true`). */
export function parseJsonEvent(type: EventType, body: Buffer): LoraEvent {
  let o: unknown
  try {
    o = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new BadEventError(`not JSON: ${(err as Error).message}`, 'malformed_json')
  }
  if (!isObject(o)) throw new BadEventError('not a JSON object', 'malformed_json')
  const base: Base = {
    device: jsonDevice(o),
    time: str(o, 'time', 'event') || undefined,
    deduplicationId: str(o, 'deduplicationId', 'event') || undefined,
  }
  switch (type) {
    case 'up': {
      const data = str(o, 'data', 'up')
      if (!BASE64.test(data)) throw new BadEventError('up.data is not base64', 'bad_event')
      const rx = o.rxInfo === undefined ? [] : o.rxInfo
      if (!Array.isArray(rx)) throw new BadEventError('up.rxInfo must be an array', 'bad_event')
      const txInfo = isObject(o.txInfo) ? o.txInfo : {}
      if (o.object !== undefined && o.object !== null && !isObject(o.object)) throw new BadEventError('up.object must be an object', 'bad_event')
      return {
        ...base,
        type,
        fPort: num(o, 'fPort', 'up'),
        fCnt: num(o, 'fCnt', 'up'),
        dr: num(o, 'dr', 'up'),
        confirmed: bool(o, 'confirmed'),
        data: Buffer.from(data, 'base64'),
        object: isObject(o.object) ? o.object : undefined,
        rxInfo: rx.filter(isObject).map((g) => ({ gatewayId: str(g, 'gatewayId', 'up.rxInfo[]'), rssi: num(g, 'rssi', 'up.rxInfo[]'), snr: num(g, 'snr', 'up.rxInfo[]') })),
        frequency: num(txInfo, 'frequency', 'up.txInfo') || undefined,
      }
    }
    case 'join':
      return { ...base, type, devAddr: str(o, 'devAddr', 'join') }
    case 'ack':
      return { ...base, type, queueItemId: str(o, 'queueItemId', 'ack'), acknowledged: bool(o, 'acknowledged'), fCntDown: num(o, 'fCntDown', 'ack') }
    case 'txack':
      return { ...base, type, queueItemId: str(o, 'queueItemId', 'txack'), fCntDown: num(o, 'fCntDown', 'txack'), gatewayId: str(o, 'gatewayId', 'txack') }
    case 'status':
      return {
        ...base,
        type,
        margin: num(o, 'margin', 'status'),
        batteryLevel: bool(o, 'batteryLevelUnavailable') ? undefined : num(o, 'batteryLevel', 'status'),
        externalPowerSource: bool(o, 'externalPowerSource'),
      }
    case 'log':
      return {
        ...base,
        type,
        level: str(o, 'level', 'log') || 'INFO',
        code: str(o, 'code', 'log') || 'UNKNOWN',
        description: str(o, 'description', 'log'),
        context: stringMap(o.context, 'log.context'),
      }
    case 'location':
      return { ...base, type }
  }
}

function nameOf(map: Record<string, number>, value: number): string {
  for (const [k, v] of Object.entries(map)) if (v === value) return k
  return String(value)
}

function pbDevice(info: integration.DeviceInfo | undefined): LoraDevice {
  if (!info) throw new BadEventError('deviceInfo is missing', 'bad_event')
  const devEui = info.getDevEui()
  if (!DEV_EUI.test(devEui)) throw new BadEventError(`deviceInfo.devEui ${JSON.stringify(devEui).slice(0, 40)} is not 16 hex characters`, 'bad_event')
  const tags: Record<string, string> = {}
  info.getTagsMap().forEach((v, k) => (tags[k] = v))
  return {
    devEui: devEui.toLowerCase(),
    applicationId: info.getApplicationId(),
    applicationName: info.getApplicationName(),
    deviceProfileName: info.getDeviceProfileName(),
    deviceName: info.getDeviceName(),
    deviceClass: nameOf(common.DeviceClass as unknown as Record<string, number>, info.getDeviceClassEnabled()),
    tags,
  }
}

function pbBase(e: { getDeviceInfo(): integration.DeviceInfo | undefined; getTime(): timestampPb.Timestamp | undefined }, deduplicationId?: string): Base {
  return { device: pbDevice(e.getDeviceInfo()), time: e.getTime()?.toDate().toISOString(), deduplicationId: deduplicationId || undefined }
}

const bytesOf = (v: Uint8Array | string): Buffer => (typeof v === 'string' ? Buffer.from(v, 'base64') : Buffer.from(v))

// float32 fields come out as 9.199999809265137: round them the way ChirpStack's JSON prints them.
const f32 = (n: number): number => Number(n.toPrecision(7))

/** One event in ChirpStack's protobuf encoding (`json = false`). */
export function parseProtobufEvent(type: EventType, body: Buffer): LoraEvent {
  try {
    return decodeProtobuf(type, body)
  } catch (err) {
    if (err instanceof BadEventError) throw err
    throw new BadEventError(`not a ChirpStack ${type} event in protobuf: ${(err as Error).message}`, 'malformed_protobuf')
  }
}

function decodeProtobuf(type: EventType, body: Buffer): LoraEvent {
  const bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength)
  switch (type) {
    case 'up': {
      const e = integration.UplinkEvent.deserializeBinary(bytes)
      return {
        ...pbBase(e, e.getDeduplicationId()),
        type,
        fPort: e.getFPort(),
        fCnt: e.getFCnt(),
        dr: e.getDr(),
        confirmed: e.getConfirmed(),
        data: bytesOf(e.getData()),
        object: e.getObject()?.toJavaScript() as Record<string, unknown> | undefined,
        rxInfo: e.getRxInfoList().map((g) => ({ gatewayId: g.getGatewayId(), rssi: g.getRssi(), snr: f32(g.getSnr()) })),
        frequency: e.getTxInfo()?.getFrequency() || undefined,
      }
    }
    case 'join': {
      const e = integration.JoinEvent.deserializeBinary(bytes)
      return { ...pbBase(e, e.getDeduplicationId()), type, devAddr: e.getDevAddr() }
    }
    case 'ack': {
      const e = integration.AckEvent.deserializeBinary(bytes)
      return { ...pbBase(e, e.getDeduplicationId()), type, queueItemId: e.getQueueItemId(), acknowledged: e.getAcknowledged(), fCntDown: e.getFCntDown() }
    }
    case 'txack': {
      const e = integration.TxAckEvent.deserializeBinary(bytes)
      return { ...pbBase(e), type, queueItemId: e.getQueueItemId(), fCntDown: e.getFCntDown(), gatewayId: e.getGatewayId() }
    }
    case 'status': {
      const e = integration.StatusEvent.deserializeBinary(bytes)
      return {
        ...pbBase(e, e.getDeduplicationId()),
        type,
        margin: e.getMargin(),
        batteryLevel: e.getBatteryLevelUnavailable() ? undefined : f32(e.getBatteryLevel()),
        externalPowerSource: e.getExternalPowerSource(),
      }
    }
    case 'log': {
      const e = integration.LogEvent.deserializeBinary(bytes)
      const context: Record<string, string> = {}
      e.getContextMap().forEach((v, k) => (context[k] = v))
      return {
        ...pbBase(e),
        type,
        level: nameOf(integration.LogLevel as unknown as Record<string, number>, e.getLevel()),
        code: nameOf(integration.LogCode as unknown as Record<string, number>, e.getCode()),
        description: e.getDescription(),
        context,
      }
    }
    case 'location': {
      const e = integration.LocationEvent.deserializeBinary(bytes)
      return { ...pbBase(e, e.getDeduplicationId()), type }
    }
  }
}

/** A downlink for ChirpStack's `command/down` topic. */
export interface Downlink {
  id: string
  devEui: string
  confirmed: boolean
  fPort: number
  data: Buffer
  /** Milliseconds since the epoch (ChirpStack v4.14+ drops the item after it). */
  expiresAt?: number
}

export function encodeDownlink(d: Downlink, encoding: 'json' | 'protobuf'): Buffer {
  if (encoding === 'json') {
    return Buffer.from(
      JSON.stringify({
        id: d.id,
        devEui: d.devEui,
        confirmed: d.confirmed,
        fPort: d.fPort,
        data: d.data.toString('base64'),
        ...(d.expiresAt !== undefined ? { expiresAt: new Date(d.expiresAt).toISOString() } : {}),
      }),
    )
  }
  const c = new integration.DownlinkCommand()
  c.setId(d.id)
  c.setDevEui(d.devEui)
  c.setConfirmed(d.confirmed)
  c.setFPort(d.fPort)
  c.setData(new Uint8Array(d.data))
  if (d.expiresAt !== undefined) c.setExpiresAt(timestampPb.Timestamp.fromDate(new Date(d.expiresAt)))
  return Buffer.from(c.serializeBinary())
}

