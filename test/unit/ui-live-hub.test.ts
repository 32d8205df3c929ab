// The live stream's fan-out over real HTTP: a client that does not read never holds the others
// back; what it cannot take is dropped within a fixed queue and counted, and it is told how many
// when it reads again; nothing is built while nobody listens; closing ends every stream.
import { createServer, type Server } from 'node:http'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { LiveHub } from '../../src/web/live-hub.js'
import type { HealthReport } from '../../src/web/deps.js'
import { SseClient } from '../helpers/sse.js'

const health = (connected: boolean): HealthReport => ({
  status: 'ok',
  reasons: [],
  northbound: { configured: true, connected, since: null, downSince: null, links: 1, linksConnected: connected ? 1 : 0, lastError: null, nextRetryAt: null },
  outbox: { messages: 0, bytes: 0, oldestAgeMs: 0, maxBytes: 1, drainRate: { last10s: 0, last60s: 0 } },
  clock: { offsetMs: 0, measuredAt: null },
  adapters: [],
})

describe('LiveHub', () => {
  let server: Server | undefined
  const opened: { close(): unknown }[] = []

  afterEach(async () => {
    for (const o of opened.splice(0)) await o.close()
    server?.closeAllConnections()
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)))
    server = undefined
  })

  async function serve(hub: LiveHub): Promise<string> {
    server = createServer((req, res) => hub.attach(req, res))
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
    const addr = server.address() as net.AddressInfo
    return `http://127.0.0.1:${addr.port}/`
  }

  it('keeps a slow client within its queue, drops and counts the rest, and tells it how many; a fast client gets everything', async () => {
    const maxQueuedBytes = 64 * 1024
    const hub = new LiveHub({ maxQueuedBytes })
    const url = await serve(hub)
    const fast = await new SseClient(url).open()
    opened.push(fast)
    // A client that sends its request and then never reads.
    const slow = net.connect(Number(new URL(url).port), '127.0.0.1')
    opened.push({ close: () => slow.destroy() })
    slow.pause()
    slow.write('GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n')
    await expect.poll(() => hub.stats().clients).toBe(2)

    const text = 'x'.repeat(1000)
    const total = 20_000 // ~20 MB: more than loopback socket buffers take
    for (let i = 0; i < total; i++) {
      hub.publish('log', { i, text })
      if (i % 20 === 19) {
        // The fast reader keeps up, as a browser on the LAN would: never more behind than its queue holds.
        while (fast.events.length < i - 40) await sleep(1)
      }
    }
    await expect.poll(() => fast.events.filter((e) => e.event === 'log').length, { timeout: 15_000 }).toBe(total)
    expect(fast.events.filter((e) => e.event === 'log').map((e) => e.data.i)).toEqual([...Array(total).keys()])
    const { dropped } = hub.stats()
    expect(dropped).toBeGreaterThan(0)
    expect(dropped).toBeLessThan(total)

    // It reads again: first what was queued, then how many it lost.
    let received = ''
    slow.setEncoding('utf8')
    slow.on('data', (chunk: string) => (received += chunk))
    slow.resume()
    await expect.poll(() => /event: dropped\ndata: (\{[^\n]*\})/.exec(received)?.[1], { timeout: 15_000 }).toBeDefined()
    expect(JSON.parse(/event: dropped\ndata: (\{[^\n]*\})/.exec(received)![1])).toEqual({ count: dropped })
    const got = (received.match(/^event: log$/gm) ?? []).length
    expect(got + dropped).toBe(total)
  })

  it('does nothing while nobody listens, and tells when the first comes and the last goes', async () => {
    let now = health(true)
    const hub = new LiveHub({ health: () => now, healthPollMs: 20 })
    const changes: boolean[] = []
    hub.onListening((l) => changes.push(l))
    hub.publish('log', { msg: 'nobody hears this' })
    expect(hub.stats()).toEqual({ clients: 0, dropped: 0, sent: 0 })
    expect(hub.listening).toBe(false)

    const url = await serve(hub)
    const a = await new SseClient(url).open()
    opened.push(a)
    expect(a.contentType).toBe('text/event-stream; charset=utf-8')
    // The current health at once, then each change.
    expect((await a.waitFor('health')).data.northbound.connected).toBe(true)
    expect(hub.listening).toBe(true)
    now = health(false)
    await a.waitFor('health', (h) => h.northbound.connected === false)
    hub.publish('device', { productId: 'p', deviceId: 'd', online: true, lastSeen: 1 })
    expect((await a.waitFor('device')).data).toEqual({ productId: 'p', deviceId: 'd', online: true, lastSeen: 1 })
    expect(a.events.some((e) => e.data.msg === 'nobody hears this')).toBe(false)
    await a.close()
    await expect.poll(() => hub.listening).toBe(false)
    expect(changes).toEqual([true, false])
  })

  it('sends a ping comment to keep proxies from closing an idle stream', async () => {
    const hub = new LiveHub({ pingMs: 30 })
    const a = await new SseClient(await serve(hub)).open()
    opened.push(a)
    await expect.poll(() => a.comments).toContain('ping')
  })

  it('ends a stream at the next ping once its credential no longer holds (session ended, token revoked), and only that one', async () => {
    const hub = new LiveHub({ pingMs: 30 })
    let sessionAlive = true
    server = createServer((req, res) => hub.attach(req, res, req.url === '/session' ? () => sessionAlive : () => true))
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
    const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
    const session = await new SseClient(`${base}/session`).open()
    const other = await new SseClient(`${base}/token`).open()
    opened.push(session, other)
    await expect.poll(() => session.comments).toContain('ping')
    expect(session.closed).toBe(false)
    sessionAlive = false
    await expect.poll(() => session.closed).toBe(true)
    expect(hub.stats().clients).toBe(1)
    const pings = other.comments.length
    await expect.poll(() => other.comments.length).toBeGreaterThan(pings)
    expect(other.closed).toBe(false)
  })

  it('ends every stream on close, and refuses more than maxClients', async () => {
    const hub = new LiveHub({ maxClients: 1 })
    const a = await new SseClient(await serve(hub)).open()
    opened.push(a)
    await expect.poll(() => hub.full).toBe(true)
    hub.close()
    await expect.poll(() => a.closed).toBe(true)
    expect(hub.stats().clients).toBe(0)
    expect(hub.full).toBe(false)
  })
})
