// What the technician's device table and device page show besides the registry: per device, the
// last uplinks (payloads), the radio quality and battery its transport or payload reported, the
// firmware version of its update_status, and the warnings and errors the log names it in. An
// observer of the committed flow (src/core/observers.ts) and of the log ring: it never drives the
// pipeline, and keeps everything in memory within fixed bounds (a restart starts it empty; the
// numeric values are in the local history).
import type { PipelineObserver } from '../core/observers.js'
import type { Uplink } from '../core/types.js'
import { deviceKey } from '../core/types.js'

/** Messages kept per device (GET /api/devices/{p}/{d}/messages). */
export const MESSAGES_PER_DEVICE = 20
/** A payload larger than this is kept as its size only. */
export const MESSAGE_BYTES = 16 * 1024
/** All kept payloads together; past it the least recently active devices' oldest go first. */
export const PAYLOAD_BUDGET_BYTES = 8 * 1024 * 1024
/** Devices tracked (error counts of unknown ids included); the least recently active go first. */
export const MAX_DEVICES = 10_000
/** At most this many errors per device and minute are passed on to the timeline (all are counted). */
export const ERROR_EVENTS_PER_MINUTE = 6

// The firmware version in an update_status: the first of these that is a string or a number.
const FIRMWARE_KEYS = ['firmwareVersion', 'firmware_version', 'fwVersion', 'fw_version', 'firmware', 'version', 'swVersion', 'sw_version']

/** A kept uplink as the API shows it. */
export interface RecentMessage {
  messageId: string
  kind: 'upload_data' | 'update_status' | 'update_ota_status'
  /** upload_data's DataType; null for the status kinds. */
  dataType: string | null
  /** When the gateway received it (ms). */
  ts: number
  /** The JSON it carried, `{base64}` when it is not JSON, `{omitted: true, bytes}` when larger than 16 KiB. */
  payload: unknown
}

/** What the device table shows of one device besides the registry (null: never reported since the start). */
export interface DeviceActivityView {
  /** The transport of its last message: mqtt, coap, lorawan, serial, http. */
  protocol: string | null
  /** The best RSSI (dBm) and SNR (dB) of its last radio uplink (LoRaWAN rxInfo). */
  rssi: number | null
  snr: number | null
  /** Percent 0-100: the newest of the transport's report (LoRaWAN device status) and a top-level `battery` field of its uplinks. */
  battery: number | null
  /** From its last update_status carrying a version. */
  firmwareVersion: string | null
  /** Warnings and errors in the log naming this device since the start. */
  errors: number
  lastError: { time: number; msg: string; code: string | null } | null
}

interface Kept {
  messageId: string
  kind: RecentMessage['kind']
  dataType: string | null
  ts: number
  /**
   * Its bytes as a latin1 string (one byte a character: a compact copy, never a view of a pooled
   * socket buffer), or the size of one too large to keep.
   */
  payload: string | number
}

/** What is kept per device: what the table shows, plus its recent messages and when it was last active. */
interface Entry extends DeviceActivityView {
  /** When it was last active, in this tracker's ticks (the least recently active go first). */
  active: number
  messages: Kept[]
  /** The minute (ms) errors were last passed on in, and how many were. */
  errorMinute: number
  errorsPassed: number
}

const newEntry = (): Entry => ({
  active: 0,
  protocol: null,
  rssi: null,
  snr: null,
  battery: null,
  firmwareVersion: null,
  errors: 0,
  lastError: null,
  messages: [],
  errorMinute: 0,
  errorsPassed: 0,
})

/** A warning or error the log named a device in, as the device's timeline records it. */
export type DeviceError = NonNullable<DeviceActivityView['lastError']>

/** What a device reported that is worth keeping across a restart (not its messages, not its error counts). */
export type DeviceFacts = Pick<DeviceActivityView, 'protocol' | 'rssi' | 'snr' | 'battery' | 'firmwareVersion'>

export class DeviceActivity implements PipelineObserver {
  private readonly devices = new Map<string, Entry>()
  private tick = 0
  /** Facts changed since the last `facts()`. */
  private dirty = false
  private pending: (readonly Uplink[])[] = []
  private scheduled = false
  private payloadBytes = 0
  /** Told of a device's errors (the timeline), at most ERROR_EVENTS_PER_MINUTE per device and minute. */
  onError?: (device: string, error: DeviceError) => void

  constructor(
    private readonly limits = { perDevice: MESSAGES_PER_DEVICE, messageBytes: MESSAGE_BYTES, budgetBytes: PAYLOAD_BUDGET_BYTES, maxDevices: MAX_DEVICES },
  ) {}

  /** Called in the outbox's commit turn: keeps the batch and returns (PipelineObserver). */
  committed(batch: readonly Uplink[]): void {
    this.pending.push(batch)
    if (!this.scheduled) {
      this.scheduled = true
      setImmediate(() => this.flush())
    }
  }

  /** A log line (the log ring's listener): warnings and errors that name a device count against it. */
  readonly logLine = (line: string, level: number): void => {
    if (level < 40 || !line.includes('"device":"')) return
    let o: { device?: unknown; msg?: unknown; time?: unknown; code?: unknown }
    try {
      o = JSON.parse(line) as typeof o
    } catch {
      return
    }
    if (typeof o.device !== 'string' || !o.device.includes('/')) return
    const e = this.touch(o.device)
    e.errors++
    const error = { time: typeof o.time === 'number' ? o.time : Date.now(), msg: String(o.msg ?? ''), code: typeof o.code === 'string' ? o.code : null }
    e.lastError = error
    if (!this.onError) return
    const minute = error.time - (error.time % 60_000)
    if (minute !== e.errorMinute) {
      e.errorMinute = minute
      e.errorsPassed = 0
    }
    if (e.errorsPassed++ < ERROR_EVENTS_PER_MINUTE) this.onError(o.device, { ...error })
  }

  view(device: string): DeviceActivityView {
    this.flush()
    const e = this.devices.get(device)
    if (!e) return { protocol: null, rssi: null, snr: null, battery: null, firmwareVersion: null, errors: 0, lastError: null }
    return {
      protocol: e.protocol,
      rssi: e.rssi,
      snr: e.snr,
      battery: e.battery,
      firmwareVersion: e.firmwareVersion,
      errors: e.errors,
      lastError: e.lastError && { ...e.lastError },
    }
  }

  /** The device's last messages, newest first. */
  messages(device: string, limit = this.limits.perDevice): RecentMessage[] {
    this.flush()
    const kept = this.devices.get(device)?.messages ?? []
    return kept
      .slice(-limit)
      .reverse()
      .map((m) => ({ messageId: m.messageId, kind: m.kind, dataType: m.dataType, ts: m.ts, payload: payloadView(typeof m.payload === 'number' ? m.payload : Buffer.from(m.payload, 'latin1')) }))
  }

  /** Whether any device's facts changed since they were last taken. */
  get changed(): boolean {
    this.flush()
    return this.dirty
  }

  /** Every device's facts, least recently active first (to be saved; `restore` takes them back). */
  facts(): Record<string, DeviceFacts> {
    this.flush()
    this.dirty = false
    const out: Record<string, DeviceFacts> = {}
    for (const [key, e] of [...this.devices].sort(([, a], [, b]) => a.active - b.active)) {
      if (e.protocol === null && e.firmwareVersion === null && e.battery === null && e.rssi === null) continue
      out[key] = { protocol: e.protocol, rssi: e.rssi, snr: e.snr, battery: e.battery, firmwareVersion: e.firmwareVersion }
    }
    return out
  }

  /** Facts saved by an earlier run; what devices report from now on replaces them. Unknown shapes are skipped. */
  restore(saved: unknown): void {
    if (!saved || typeof saved !== 'object') return
    for (const [key, f] of Object.entries(saved as Record<string, Partial<Record<keyof DeviceFacts, unknown>>>)) {
      if (!key.includes('/') || !f || typeof f !== 'object') continue
      const e = this.touch(key)
      const str = (v: unknown): string | null => (typeof v === 'string' ? v : null)
      const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)
      e.protocol = str(f.protocol)
      e.firmwareVersion = str(f.firmwareVersion)
      e.rssi = num(f.rssi)
      e.snr = num(f.snr)
      e.battery = isPercent(f.battery) ? f.battery : null
    }
  }

  /** Forget a device that was removed from the registry. */
  forget(device: string): void {
    const e = this.devices.get(device)
    if (!e) return
    for (const m of e.messages) this.payloadBytes -= keptBytes(m)
    this.devices.delete(device)
  }

  private flush(): void {
    this.scheduled = false
    const batches = this.pending
    if (batches.length === 0) return
    this.pending = []
    for (const batch of batches) for (const up of batch) this.add(up)
    this.trim()
  }

  private add(up: Uplink): void {
    const t = up.topic
    if (t.kind !== 'upload_data' && t.kind !== 'update_status' && t.kind !== 'update_ota_status') return
    // Sessions are the device's presence, not its data ($connection: GET /api/devices' online, lastSeen).
    if (t.kind === 'upload_data' && t.name === '$connection') return
    const e = this.touch(deviceKey(t))
    const [protocol, battery, firmware] = [e.protocol, e.battery, e.firmwareVersion]
    if (up.transport !== 'internal') e.protocol = up.transport
    const meta = up.meta
    if (meta?.rssi !== undefined) e.rssi = meta.rssi
    if (meta?.snr !== undefined) e.snr = meta.snr
    const big = up.payload.length > this.limits.messageBytes
    // The newest report wins: the transport's (LoRaWAN device status), else the payload's own field
    // (parsed only when the text is there at all: most payloads are never parsed here).
    if (meta?.battery !== undefined && isPercent(meta.battery)) e.battery = meta.battery
    else if (!big && hasBatteryKey(up.payload)) {
      const b = jsonObject(up.payload)?.battery
      if (isPercent(b)) e.battery = b
    }
    const kept: Kept = { messageId: t.messageId, kind: t.kind, dataType: t.kind === 'upload_data' ? (t.name ?? null) : null, ts: up.receivedAt, payload: big ? up.payload.length : up.payload.toString('latin1') }
    if (t.kind === 'update_status' && !big) {
      const fw = firmwareOf(up.payload)
      if (fw !== undefined) e.firmwareVersion = fw
    }
    // Radio values change with every LoRaWAN uplink: they are saved with the rest, not a save each.
    if (e.protocol !== protocol || e.battery !== battery || e.firmwareVersion !== firmware) this.dirty = true
    e.messages.push(kept)
    this.payloadBytes += keptBytes(kept)
    if (e.messages.length > this.limits.perDevice) this.payloadBytes -= keptBytes(e.messages.shift()!)
  }

  private touch(device: string): Entry {
    let e = this.devices.get(device)
    if (!e) {
      if (this.devices.size >= this.limits.maxDevices) this.forget(this.leastActive(1)[0])
      this.devices.set(device, (e = newEntry()))
    }
    e.active = ++this.tick
    return e
  }

  /** The keys of the `n` least recently active devices (a scan: only past the caps). */
  private leastActive(n: number): string[] {
    return [...this.devices].sort(([, a], [, b]) => a.active - b.active).slice(0, n).map(([k]) => k)
  }

  // Over the budget: the least recently active devices lose their oldest messages first (their
  // radio, battery, firmware and error facts stay), down to 90 % of it so this runs seldom.
  private trim(): void {
    if (this.payloadBytes <= this.limits.budgetBytes) return
    const target = this.limits.budgetBytes * 0.9
    for (const key of this.leastActive(this.devices.size)) {
      const e = this.devices.get(key)!
      while (e.messages.length && this.payloadBytes > target) this.payloadBytes -= keptBytes(e.messages.shift()!)
      if (this.payloadBytes <= target) return
    }
  }
}

const keptBytes = (m: Kept): number => (typeof m.payload === 'number' ? 0 : m.payload.length)

// `"battery"` in the payload's bytes: a plain loop, cheaper than Buffer#includes's native call for
// the short payloads devices send; only then is the payload parsed.
const BATTERY = Buffer.from('"battery"')
function hasBatteryKey(p: Buffer): boolean {
  const last = p.length - BATTERY.length
  outer: for (let i = 0; i <= last; i++) {
    if (p[i] !== 0x22 || p[i + 1] !== 0x62) continue
    for (let j = 2; j < BATTERY.length; j++) if (p[i + j] !== BATTERY[j]) continue outer
    return true
  }
  return false
}

const isPercent = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 100

/** A payload as the API shows it: its JSON, or `{base64}`, or `{omitted, bytes}`. */
export function payloadView(payload: Buffer | number): unknown {
  if (typeof payload === 'number') return { omitted: true, bytes: payload }
  const text = payload.toString('utf8')
  try {
    return JSON.parse(text) as unknown
  } catch {
    return { base64: payload.toString('base64') }
  }
}

function jsonObject(payload: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(payload.toString('utf8'))
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

function firmwareOf(payload: Buffer): string | undefined {
  const o = jsonObject(payload)
  if (!o) return undefined
  for (const k of FIRMWARE_KEYS) {
    const v = o[k]
    if (typeof v === 'string' || typeof v === 'number') return String(v)
    // `{"firmware": {"version": "1.2"}}`, `{"versions": ...}` is not guessed at.
    if (k === 'firmware' && v && typeof v === 'object' && typeof (v as { version?: unknown }).version === 'string') return (v as { version: string }).version
  }
  return undefined
}
