// What tests need of an MQTT.js client beyond its own API: the messages it received, waited for by
// topic; the SUBACK return code of one filter (0x80 = refused), which subscribeAsync does not give.
import type { MqttClient } from 'mqtt'

/** Messages a client receives, with a way to wait for one. */
export function inbox(client: MqttClient): {
  readonly topics: string[]
  waitFor: (match: string | ((topic: string, payload: Buffer) => boolean), timeoutMs: number) => Promise<{ topic: string; payload: Buffer }>
} {
  const got: { topic: string; payload: Buffer }[] = []
  const waiters = new Set<() => boolean>()
  client.on('message', (topic, payload) => {
    got.push({ topic, payload })
    for (const w of waiters) w()
  })
  return {
    get topics() {
      return got.map((m) => m.topic)
    },
    waitFor: (match, timeoutMs) =>
      new Promise((resolve, reject) => {
        const matches = typeof match === 'string' ? (t: string): boolean => t === match : match
        const check = (): boolean => {
          const m = got.find((x) => matches(x.topic, x.payload))
          if (!m) return false
          clearTimeout(timer)
          waiters.delete(check)
          resolve(m)
          return true
        }
        const timer = setTimeout(() => {
          waiters.delete(check)
          reject(new Error(`no matching message within ${timeoutMs} ms; got ${JSON.stringify(got.map((x) => x.topic))}`))
        }, timeoutMs)
        waiters.add(check)
        check()
      }),
  }
}

/**
 * The SUBACK return code for one filter (0x80 = refused). MQTT.js's subscribeAsync rejects on 0x80
 * without the code, so this reads the SUBACK packet the callback gets either way.
 */
export function suback(client: MqttClient, filter: string, qos: 0 | 1): Promise<number> {
  return new Promise((resolve, reject) => {
    client.subscribe(filter, { qos }, (err, _granted, packet) => {
      const code = (packet as { granted?: number[] } | undefined)?.granted?.[0]
      if (typeof code === 'number') resolve(code)
      else reject(err ?? new Error(`no SUBACK for ${filter}`))
    })
  })
}
