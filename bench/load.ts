// Load worker for the benchmark, run as its own process so the load generator does not share a
// CPU budget with what is measured. Reads a JSON job from argv[2], prints one JSON result line.
//   publish: N publishers, each keeping `window` QoS 1 messages in flight, `perPublisher` messages,
//            optional fixed total rate; MessageId = `${run}${publisher}x${seq}` (24 hex-ish chars)
//   idle:    open N connections and hold them until stdin closes
import mqtt, { type MqttClient } from 'mqtt'

interface PublishJob {
  kind: 'publish'
  url: string
  publishers: number
  perPublisher: number
  window: number
  payloadBytes: number
  /** total messages per second over all publishers; 0 = as fast as acknowledgements allow */
  rate: number
  run: string
  /** 'telemetry': a small JSON reading (five numeric/boolean leaves) instead of `payloadBytes` of filler. */
  body?: 'fill' | 'telemetry'
  auth?: { productId: string; secret: string; deviceIdPrefix: string }
  productId: string
  /** Publisher i is a connection of device i % devices (default: one device per publisher). */
  devices?: number
}

interface IdleJob {
  kind: 'idle'
  url: string
  connections: number
  /** Subscribe each connection to this filter (QoS 1) and keep (PUBACK) what it receives. */
  subscribe?: string
  /** clean: false for persistent sessions (default true). */
  clean?: boolean
  /** Log in as devices `${deviceIdPrefix}${i}` of `productId` (the gateway's external listener). */
  auth?: { productId: string; secret: string; deviceIdPrefix: string }
  /**
   * Reconnect after the server goes away (every second, as MQTT.js does by default), and print
   * {"all": n, "at": epoch ms} each time all n are connected again.
   */
  reconnect?: boolean
}

const job = JSON.parse(process.argv[2]) as PublishJob | IdleJob

function connect(url: string, opts: mqtt.IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 600_000, ...opts })
    c.once('connect', () => {
      ;(c.stream as import('node:net').Socket).setNoDelay?.(true)
      resolve(c)
    })
    c.once('error', reject)
  })
}

async function publish(j: PublishJob): Promise<void> {
  const payload = Buffer.alloc(j.payloadBytes, 'p')
  const clients = await Promise.all(
    Array.from({ length: j.publishers }, (_, i) => {
      const d = i % (j.devices ?? j.publishers)
      const deviceId = j.auth ? `${j.auth.deviceIdPrefix}${d}` : `dev${d}`
      return connect(j.url, {
        clientId: `bench-${j.run}-${i}`,
        username: j.auth ? `${j.productId}/${deviceId}` : undefined,
        password: j.auth?.secret,
      }).then((c) => ({ c, deviceId }))
    }),
  )
  // Told before the first publish, so the bench can leave the logins (scrypt) out of the CPU per message.
  process.stdout.write(JSON.stringify({ connected: clients.length }) + '\n')
  const t0 = performance.now()
  const perMsgInterval = j.rate > 0 ? (1000 * j.publishers) / j.rate : 0
  let acked = 0
  await Promise.all(
    clients.map(
      ({ c, deviceId }, pi) =>
        new Promise<void>((resolve) => {
          let sent = 0
          let done = 0
          const start = performance.now()
          const pump = (): void => {
            while (sent < j.perPublisher && sent - done < j.window) {
              if (perMsgInterval > 0) {
                const due = start + sent * perMsgInterval
                const wait = due - performance.now()
                if (wait > 0) {
                  setTimeout(pump, wait)
                  return
                }
              }
              const seq = sent++
              const mid = `${j.run}${String(pi).padStart(4, '0')}x${String(seq).padStart(9, '0')}`
              // At a fixed rate the payload carries the send time (ms since the epoch, sub-ms) for latency.
              const body =
                perMsgInterval > 0
                  ? Buffer.from(JSON.stringify({ hr: performance.timeOrigin + performance.now() }))
                  : j.body === 'telemetry'
                    ? Buffer.from(JSON.stringify({ temp: 20 + (seq % 50) / 10, hum: 40 + (seq % 7), door: seq % 2 === 0, seq, env: { co2: 400 + (seq % 100) } }))
                    : payload
              c.publish(`upload_data/${j.productId}/${deviceId}/bench/${mid}`, body, { qos: 1 }, () => {
                done++
                acked++
                if (done === j.perPublisher) resolve()
                else pump()
              })
            }
          }
          pump()
        }),
    ),
  )
  const seconds = (performance.now() - t0) / 1000
  process.stdout.write(JSON.stringify({ acked, seconds }) + '\n')
  await Promise.all(clients.map(({ c }) => c.endAsync()))
}

async function idle(j: IdleJob): Promise<void> {
  const clients: MqttClient[] = []
  // Open in batches: a listen backlog of 511 would refuse a burst of thousands.
  for (let i = 0; i < j.connections; i += 200) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(200, j.connections - i) }, (_, k) =>
        connect(j.url, {
          clientId: `idle-${i + k}`,
          keepalive: 600,
          clean: j.clean ?? true,
          ...(j.auth ? { username: `${j.auth.productId}/${j.auth.deviceIdPrefix}${i + k}`, password: j.auth.secret } : {}),
        }),
      ),
    )
    clients.push(...batch)
  }
  if (j.subscribe) await Promise.all(clients.map((c) => c.subscribeAsync(j.subscribe!, { qos: 1 })))
  process.stdout.write(JSON.stringify({ connected: clients.length }) + '\n')
  if (j.reconnect) {
    let up = clients.length
    let dropped = false
    for (const c of clients) {
      c.options.reconnectPeriod = 1000
      let isUp = true
      c.on('close', () => {
        if (isUp) up--
        isUp = false
        dropped = true
      })
      c.on('error', () => {}) // refused while the server restarts: MQTT.js retries
      c.on('connect', () => {
        if (!isUp) up++
        isUp = true
        if (up === clients.length && dropped) {
          dropped = false
          process.stdout.write(JSON.stringify({ all: up, at: Date.now() }) + '\n')
        }
      })
    }
  }
  process.stdin.resume()
  await new Promise((r) => process.stdin.once('end', r))
  await Promise.all(clients.map((c) => c.endAsync(true)))
}

if (job.kind === 'publish') await publish(job)
else await idle(job)
process.exit(0)
