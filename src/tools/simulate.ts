// `iothub-edge simulate`: many devices from one process (non-blocking I/O, thousands of MQTT
// connections), each with its own credentials, publishing `upload_data` at a set rate and QoS and
// answering commands as the device SDK does. Prints connected/failed counts and achieved rates.
import mqtt, { type MqttClient } from 'mqtt'
import { randomBytes } from 'node:crypto'
import { formatUpTopic, parseDownTopic } from '../core/hub-topics.js'

export interface SimulateOptions {
  url: string
  productId: string
  devices: number
  /** Messages per second per device. */
  rate: number
  qos: 0 | 1
  payloadBytes: number
  /** Secret of device i: `${secretPrefix}${i}`. */
  secretPrefix: string
  durationS: number
  /** Gateway API to register the devices first (POST /api/devices), with its token. */
  api?: { url: string; token: string }
  /** Connections opened per second (avoid a thundering herd). */
  connectRate: number
  report?: (line: string) => void
}

export interface SimulateStats {
  connected: number
  failed: number
  published: number
  acked: number
  commands: number
  elapsedS: number
  /** Why a device last failed to connect or lost its connection (refused login, nothing listening, ...). */
  lastError?: string
}

export const simDeviceId = (i: number): string => `sim-${String(i).padStart(5, '0')}`

/** A 24-hex MessageId as the SDK makes them (a BSON ObjectId shape). */
function messageId(): string {
  const b = Buffer.alloc(12)
  b.writeUInt32BE(Math.floor(Date.now() / 1000), 0)
  randomBytes(8).copy(b, 4)
  return b.toString('hex')
}

export async function registerDevices(o: SimulateOptions): Promise<void> {
  if (!o.api) return
  for (let i = 0; i < o.devices; i++) {
    const res = await fetch(`${o.api.url}/api/devices`, {
      method: 'POST',
      headers: { authorization: `Bearer ${o.api.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ productId: o.productId, deviceId: simDeviceId(i), secret: `${o.secretPrefix}${i}` }),
    })
    await res.arrayBuffer()
    if (res.status !== 201 && res.status !== 409) {
      throw new Error(`registering ${simDeviceId(i)} through ${o.api.url}: HTTP ${res.status}${res.status === 401 ? ' (check --token: the gateway\'s api-token file)' : ''}`)
    }
  }
}

export async function simulate(o: SimulateOptions, signal?: AbortSignal): Promise<SimulateStats> {
  const report = o.report ?? ((l: string) => process.stdout.write(l + '\n'))
  await registerDevices(o)
  const stats: SimulateStats = { connected: 0, failed: 0, published: 0, acked: 0, commands: 0, elapsedS: 0 }
  const clients: MqttClient[] = []
  const timers: NodeJS.Timeout[] = []
  const t0 = Date.now()
  const payload = Buffer.alloc(o.payloadBytes, 'x')

  const startDevice = (i: number): void => {
    const deviceId = simDeviceId(i)
    const c = mqtt.connect(o.url, {
      username: `${o.productId}/${deviceId}`,
      password: `${o.secretPrefix}${i}`,
      clientId: `${o.productId}/${deviceId}/sim`,
      protocolVersion: 4,
      // Like the SDK: keep trying. After a gateway restart every device needs one scrypt check
      // (about 45 ms of CPU each), so a thousand devices take a while to all get in.
      reconnectPeriod: 2_000 + Math.floor(Math.random() * 2_000),
      connectTimeout: 30_000,
    })
    clients.push(c)
    c.on('error', (err) => (stats.lastError = err.message))
    c.once('connect', () => {
      if (o.rate > 0) {
        const every = 1000 / o.rate
        // Spread the devices over the interval so the load is even.
        const t = setTimeout(() => {
          const tick = setInterval(() => {
            const topic = formatUpTopic({ kind: 'upload_data', productId: o.productId, deviceId, name: 'telemetry', messageId: messageId() })
            stats.published++
            c.publish(topic, payload, { qos: o.qos }, (err) => {
              if (!err) stats.acked++
            })
          }, every)
          timers.push(tick)
        }, Math.random() * every)
        timers.push(t)
      }
    })
    // Answer commands as the SDK does: a cmd_resp/rpc_resp with a status.
    c.on('message', (topic, body) => {
      const t = parseDownTopic(topic)
      if (!t || (t.kind !== 'cmd' && t.kind !== 'rpc') || t.name?.startsWith('$')) return
      stats.commands++
      const kind = t.kind === 'rpc' ? 'rpc_resp' : 'cmd_resp'
      c.publish(formatUpTopic({ kind, productId: o.productId, deviceId, name: t.name, requestId: t.requestId, messageId: messageId() }), JSON.stringify({ status: 'ok', echo: body.length }), { qos: 1 })
    })
  }

  // Open connections at connectRate per second.
  let next = 0
  await new Promise<void>((resolve) => {
    const opener = setInterval(() => {
      const batch = Math.max(1, Math.round(o.connectRate / 10))
      for (let k = 0; k < batch && next < o.devices; k++) startDevice(next++)
      if (next >= o.devices) {
        clearInterval(opener)
        resolve()
      }
    }, 100)
    signal?.addEventListener('abort', () => {
      clearInterval(opener)
      resolve()
    })
  })

  let last = { t: Date.now(), acked: 0 }
  const reporter = setInterval(() => {
    const now = Date.now()
    const rate = ((stats.acked - last.acked) * 1000) / (now - last.t)
    last = { t: now, acked: stats.acked }
    const failed = clients.filter((c) => !c.connected).length
    report(
      `connected ${clients.length - failed}/${o.devices}  not connected ${failed}${failed && stats.lastError ? ` (${stats.lastError})` : ''}  published ${stats.published}  acked ${stats.acked}  ${rate.toFixed(0)} msg/s  commands ${stats.commands}`,
    )
  }, 2_000)

  await new Promise<void>((resolve) => {
    const done = setTimeout(resolve, o.durationS * 1000)
    signal?.addEventListener('abort', () => {
      clearTimeout(done)
      resolve()
    })
  })
  clearInterval(reporter)
  for (const t of timers) clearInterval(t)
  stats.failed = clients.filter((c) => !c.connected).length
  stats.connected = clients.length - stats.failed
  await Promise.all(clients.map((c) => c.endAsync().catch(() => undefined)))
  stats.elapsedS = (Date.now() - t0) / 1000
  return stats
}
