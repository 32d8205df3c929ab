// What one committed uplink becomes in the history: samples (the numeric and boolean leaves of its
// JSON, transport metadata) and events (`$connection` sessions, OTA status). Uplinks cross to the
// history's worker thread packed (uplink-pack.ts) and are read back there in this compact form: the
// payload as text only where it can matter.
import type { UplinkMeta } from '../core/types.js'
import type { HistoryEvent, Sample } from './history-store.js'
import { payloadLeaves } from './payload-leaves.js'

export interface CompactUplink {
  device: string
  /** The series prefix (DataType, `status`) or a `$` event name; undefined when only metadata counts. */
  what?: string
  ts: number
  text?: string
  meta?: UplinkMeta
  /** Made by the gateway itself (a rule's alarm change, a window), not sent by the device. */
  internal?: true
}

/** Turns compact uplinks into samples and events; remembers frame counters to tell gaps. */
export class SampleMaker {
  private readonly lastFcnt = new Map<string, number>()

  add(up: CompactUplink, samples: Sample[], events: HistoryEvent[]): void {
    const { device, ts, what } = up
    if (what === '$connection' || what === '$ota') {
      const o = objectOf(up.text)
      if (what === '$ota') events.push({ device, ts, type: 'ota_status', detail: o })
      else events.push({ device, ts, type: o?.connected === true ? 'connected' : 'disconnected', detail: o && pick(o, ['client_id', 'transport', 'ipaddress']) })
      return
    }
    // A rule's alarm change (the gateway's own `alarm` uplink; a device's own `alarm` data is data).
    if (what === 'alarm' && up.internal) {
      const o = objectOf(up.text)
      if (o && (o.state === 'raised' || o.state === 'cleared')) events.push({ device, ts, type: `alarm_${o.state}`, detail: pick(o, ['alarm', 'rule', 'value']) })
    }
    if (what !== undefined && up.text !== undefined) {
      for (const l of payloadLeaves(up.text)) samples.push({ device, name: l.path ? `${what}.${l.path}` : what, ts, value: l.value })
    }
    const meta = up.meta
    if (!meta) return
    if (meta.rssi !== undefined) samples.push({ device, name: '$meta.rssi', ts, value: meta.rssi })
    if (meta.snr !== undefined) samples.push({ device, name: '$meta.snr', ts, value: meta.snr })
    if (meta.battery !== undefined) samples.push({ device, name: '$meta.battery', ts, value: meta.battery })
    if (meta.gatewayCount !== undefined) samples.push({ device, name: '$meta.gateways', ts, value: meta.gatewayCount })
    if (meta.frameCounter !== undefined) {
      samples.push({ device, name: '$meta.fcnt', ts, value: meta.frameCounter })
      // Frames lost on the radio between two that arrived (a counter reset after a rejoin is not a gap).
      const last = this.lastFcnt.get(device)
      if (last !== undefined && meta.frameCounter > last) samples.push({ device, name: '$meta.fcnt_gap', ts, value: meta.frameCounter - last - 1 })
      this.lastFcnt.set(device, meta.frameCounter)
    }
  }
}

function objectOf(text: string | undefined): Record<string, unknown> | undefined {
  if (text === undefined) return undefined
  try {
    const v: unknown = JSON.parse(text)
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

function pick(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]))
}
