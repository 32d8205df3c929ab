// How the CLI shows results: a table for a person at a terminal, JSON for scripts (whenever stdout
// is not a terminal, or with --json). Times are ISO 8601 in tables; JSON keeps the API's values.
import type { Device } from './store/devices.js'

export interface OutputMode {
  json: boolean
}

export function outputMode(forceJson: boolean | undefined, stdout: NodeJS.WriteStream = process.stdout): OutputMode {
  return { json: !!forceJson || !stdout.isTTY }
}

export function json(o: unknown): string {
  return JSON.stringify(o, null, 2) + '\n'
}

function iso(ms: unknown): string {
  return typeof ms === 'number' ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-'
}

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()
  return [line(headers), ...rows.map(line)].join('\n') + '\n'
}

type DeviceLike = Pick<Device, 'productId' | 'deviceId' | 'enabled' | 'tags'> & {
  hasSecret?: boolean
  updatedAt?: number
  createdAt?: number
  /** Known only from a running gateway (the API's list). */
  online?: boolean
  lastSeen?: number | null
}

export function devicesTable(devices: DeviceLike[]): string {
  if (devices.length === 0) return 'no devices\n'
  // Whether a device is online is the running gateway's to say; the database alone does not know.
  const live = devices.every((d) => d.online !== undefined)
  return table(
    ['PRODUCT', 'DEVICE', 'ENABLED', 'SECRET', 'TAGS', ...(live ? ['ONLINE', 'LAST SEEN'] : []), 'UPDATED'],
    devices.map((d) => [
      d.productId,
      d.deviceId,
      d.enabled ? 'yes' : 'no',
      d.hasSecret === false ? 'none' : 'set',
      d.tags.join(',') || '-',
      ...(live ? [d.online ? 'yes' : 'no', iso(d.lastSeen)] : []),
      iso(d.updatedAt),
    ]),
  )
}

interface ConnectionLike {
  clientId: string
  transport: string
  connected: boolean
  ipaddress: string | null
  connectedAt: number | null
  disconnectAt: number | null
}

export function deviceDetails(d: DeviceLike, online: boolean | null, lastSeen: number | null, connections: ConnectionLike[]): string {
  const rows: [string, string][] = [
    ['device', `${d.productId}/${d.deviceId}`],
    ['enabled', d.enabled ? 'yes' : 'no'],
    ['secret', d.hasSecret === false ? 'none' : 'set'],
    ['tags', d.tags.join(', ') || '-'],
    ['online', online === null ? 'unknown (no gateway running)' : online ? 'yes' : 'no'],
    ['seen', iso(lastSeen)],
    ['created', iso(d.createdAt)],
    ['updated', iso(d.updatedAt)],
  ]
  let text = rows.map(([k, v]) => `${k.padEnd(8)} ${v}`).join('\n') + '\n'
  if (connections.length) {
    text +=
      '\n' +
      table(
        ['CLIENT', 'TRANSPORT', 'CONNECTED', 'ADDRESS', 'SINCE', 'LEFT'],
        connections.map((c) => [c.clientId, c.transport, c.connected ? 'yes' : 'no', c.ipaddress ?? '-', iso(c.connectedAt), iso(c.disconnectAt)]),
      )
  }
  return text
}

interface HealthLike {
  status: string
  reasons: string[]
  northbound: {
    configured: boolean
    connected: boolean
    since: number | null
    downSince?: number | null
    links: number
    linksConnected: number
    lastError?: { message: string; reason: string | null } | null
    nextRetryAt?: number | null
  }
  outbox: { messages: number; bytes: number; oldestAgeMs: number; maxBytes: number; drainRate?: { last10s: number; last60s: number } }
  adapters: { name: string; state: string; error?: string }[]
}

/** 1536 -> "1.5 KiB", 30619357692 -> "28.5 GiB". */
function binaryBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`
}

export function statusText(pid: number, url: string, h: HealthLike): string {
  const nb = h.northbound
  const hub = !nb.configured
    ? 'not configured (no northbound.url): data waits in the outbox'
    : nb.connected
      ? `connected since ${iso(nb.since)}${nb.links > 1 ? ` (${nb.linksConnected}/${nb.links} links)` : ''}`
      : `DOWN${nb.downSince ? ` since ${iso(nb.downSince)}` : ''}${nb.links > 1 ? ` (${nb.linksConnected}/${nb.links} links up)` : ''}` +
        (nb.lastError ? `; last error: ${nb.lastError.message}${nb.lastError.reason ? ` (${nb.lastError.reason})` : ''}` : '') +
        (nb.nextRetryAt ? `; next attempt ${iso(nb.nextRetryAt)}` : '')
  const pct = h.outbox.maxBytes ? ((100 * h.outbox.bytes) / h.outbox.maxBytes).toFixed(1) : '0'
  // The quota itself (by default a share of the data disk, tens of GB): "0.0 % of the quota" alone says nothing of it.
  const quota = h.outbox.maxBytes ? ` of a ${binaryBytes(h.outbox.maxBytes)} quota (${pct} %)` : ''
  // An empty outbox has no oldest message ("oldest 0 s" read as one that just arrived).
  const oldest = h.outbox.messages > 0 ? `, oldest ${Math.round(h.outbox.oldestAgeMs / 1000)} s` : ''
  const rows: [string, string][] = [
    ['status', `${h.status}${h.reasons.length ? ` (${h.reasons.join(', ')})` : ''}`],
    ['gateway', `pid ${pid}, ${url}`],
    ['hub', hub],
    ['outbox', `${h.outbox.messages} message(s), ${h.outbox.bytes} bytes${quota}${oldest}${h.outbox.drainRate ? `, draining ${h.outbox.drainRate.last10s}/s (10 s), ${h.outbox.drainRate.last60s}/s (60 s)` : ''}`],
    ['adapters', h.adapters.map((a) => `${a.name}:${a.state}${a.error ? ` (${a.error})` : ''}`).join(', ') || '-'],
  ]
  return rows.map(([k, v]) => `${k.padEnd(8)} ${v}`).join('\n') + '\n'
}
