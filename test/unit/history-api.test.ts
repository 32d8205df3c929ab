// The history's HTTP contract through buildApp() and inject(), on a real history.db: ranges come
// back within N points and keep their extremes, a wrong request gets a 400 that says what to send,
// an unknown series a 404, and a gateway with the history off says so. (The rest of the gateway
// behind the web is not what this is about: it is stubbed.)
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { FastifyInstance } from 'fastify'
import { csvLines } from '../../src/history/history-csv.js'
import { openHistoryDb, type HistoryDb } from '../../src/history/history-db.js'
import { HOUR, HistoryStore, MINUTE } from '../../src/history/history-store.js'
import { buildApp } from '../../src/web/app.js'
import type { HistoryReader, WebDeps } from '../../src/web/deps.js'

const TOKEN = 'tok-0123456789abcdef'
const headers = { authorization: `Bearer ${TOKEN}` }
const NOW = Date.now()

function app(history: HistoryReader | undefined): FastifyInstance {
  const deps = { log: pino({ level: 'silent' }), apiToken: TOKEN, adapterRoutes: [], devices: {}, commands: {}, history } as unknown as WebDeps
  return buildApp(deps)
}

describe('history API', () => {
  let dir: string
  let db: HistoryDb
  let withHistory: FastifyInstance
  let without: FastifyInstance

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'history-api-'))
    db = openHistoryDb(dir).db
    const store = new HistoryStore(db, { retentionDays: 7, rollup5mDays: 90, rollup1hDays: 730, eventRetentionDays: 90, maxBytes: 1 << 30, maxSeriesPerDevice: 100 })
    const samples = []
    for (let t = NOW - 2 * HOUR; t < NOW; t += MINUTE) samples.push({ device: 'p/d', name: 'telemetry.temp', ts: t, value: 20 })
    samples.push({ device: 'p/d', name: 'telemetry.temp', ts: NOW - 90 * MINUTE + 30_000, value: 99 })
    store.write(samples, [{ device: 'p/d', ts: NOW - HOUR, type: 'connected', detail: { client_id: 'c1' } }])
    const reader: HistoryReader = {
      series: (device) => ({ series: store.listSeries(device), rejected: store.rejected(device) }),
      find: (id) => store.series(id),
      findByName: (device, name) => store.seriesByName(device, name),
      query: (s, from, to, points) => store.query(s, from, to, points),
      events: (ref, from, to, limit) => store.events(`${ref.productId}/${ref.deviceId}`, from, to, limit),
      csv: (r) => csvLines(store, r),
    }
    withHistory = app(reader)
    without = app(undefined)
  })

  afterAll(async () => {
    await withHistory?.close()
    await without?.close()
    db?.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const get = (a: FastifyInstance, url: string) => a.inject({ method: 'GET', url, headers })

  it('answers a range in at most N points with the spike kept, by id or by device and name', async () => {
    const list = (await get(withHistory, '/api/history/series?device=p/d')).json<{ series: { id: number; name: string }[] }>()
    expect(list.series.map((s) => s.name)).toEqual(['telemetry.temp'])
    const id = list.series[0].id
    const from = new Date(NOW - 2 * HOUR).toISOString()
    for (const url of [`/api/history?series=${id}&from=${encodeURIComponent(from)}&points=7`, `/api/history?device=p/d&name=telemetry.temp&from=${NOW - 2 * HOUR}&points=7`]) {
      const r = await get(withHistory, url)
      expect(r.statusCode).toBe(200)
      const body = r.json<{ points: { max: number; n: number }[] }>()
      expect(body.points.length).toBeLessThanOrEqual(7)
      expect(Math.max(...body.points.map((p) => p.max))).toBe(99)
      expect(body.points.reduce((a, p) => a + p.n, 0)).toBe(121)
    }
    const events = (await get(withHistory, '/api/devices/p/d/events')).json<{ events: { type: string }[] }>()
    expect(events.events.map((e) => e.type)).toEqual(['connected'])
  })

  it('says what is wrong with a request', async () => {
    const cases: [string, number, string | RegExp][] = [
      ['/api/history?device=p/d', 400, 'give series (an id from GET /api/history/series), or device and name'],
      ['/api/history?series=999', 404, 'no such series'],
      ['/api/history?series=1&from=yesterday', 400, 'from and to must be milliseconds since the epoch or ISO 8601 dates'],
      [`/api/history?series=1&from=${NOW}&to=${NOW - 1000}`, 400, 'to must be after from'],
      ['/api/history?series=1&points=0', 400, /points must be a whole number of points from 1 to 10000/],
      ['/api/history/export', 400, /device is required/],
    ]
    for (const [url, status, message] of cases) {
      const r = await get(withHistory, url)
      expect({ url, status: r.statusCode }).toEqual({ url, status })
      expect(r.json<{ message: string }>().message).toMatch(message)
    }
    expect((await withHistory.inject({ method: 'GET', url: '/api/history/series' })).statusCode).toBe(401)
  })

  it('a gateway with the history off says so', async () => {
    for (const url of ['/api/history/series', '/api/history?series=1', '/api/devices/p/d/events', '/api/history/export?device=p/d']) {
      const r = await get(without, url)
      expect(r.statusCode).toBe(404)
      expect(r.json()).toEqual({ error: 'history_off', message: 'the local history is off (store.history.enabled: false)' })
    }
  })
})
