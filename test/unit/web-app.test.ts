// The web layer through its public seam: buildApp() with inject(), against an in-test WebDeps.
// What is under test is the HTTP contract the CLI, the scenario tests and integrators rely on
// (paths, status codes, bodies, the token, the 400 wording); the gateway behind it is a fake.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import { readFileSync } from 'node:fs'
import { pino } from 'pino'
import { Registry, collectDefaultMetrics } from 'prom-client'
import { buildApp } from '../../src/web/app.js'
import { storeRoutes } from '../../src/web/routes/store.js'
import { Metrics } from '../../src/core/metrics.js'
import type { HealthReport, WebDeps } from '../../src/web/deps.js'
import type { Command, DeviceRef } from '../../src/core/types.js'
import type { Device } from '../../src/store/devices.js'
import type { ConnectionInfo } from '../../src/store/connections.js'
import type { StoredCommand } from '../../src/store/commands.js'
import type { OutboxStats } from '../../src/store/outbox.js'

const TOKEN = 'tok-0123456789abcdef'
const auth = { authorization: `Bearer ${TOKEN}` }
const TOKEN_FILE = '/var/lib/iothub-edge/api-token'
const UNAUTHORIZED = { error: 'unauthorized', message: `send Authorization: Bearer <token> (the token is in ${TOKEN_FILE})` }
const key = (r: DeviceRef): string => `${r.productId}/${r.deviceId}`

const thermo: Device = { productId: 'thermo', deviceId: 't1', tags: ['floor2'], tagsVersion: 1, enabled: true, hasSecret: true, createdAt: 1, updatedAt: 2 }
const away: Device = { ...thermo, deviceId: 'away' }
const session: ConnectionInfo = {
  clientId: 'c-t1',
  productId: 'thermo',
  deviceId: 't1',
  transport: 'mqtt',
  connected: true,
  ipaddress: '10.0.0.7',
  keepalive: 60,
  protoVer: 4,
  connectedAt: 1000,
  disconnectAt: null,
}
const stats: OutboxStats = {
  messages: 3,
  bytes: 300,
  oldestAgeMs: 1500,
  byPriority: { 0: { messages: 1, bytes: 100 }, 1: { messages: 0, bytes: 0 }, 2: { messages: 2, bytes: 200 } },
  dropped: { quota: 4, rpc_resp_expired: 1 },
  maxBytes: 1 << 20,
}
const healthy: HealthReport = {
  status: 'ok',
  reasons: [],
  northbound: { configured: true, connected: true, since: 1234, downSince: null, links: 1, linksConnected: 1, lastError: null, nextRetryAt: null },
  outbox: { messages: 3, bytes: 300, oldestAgeMs: 1500, maxBytes: 1 << 20, drainRate: { last10s: 0, last60s: 0 } },
  clock: { offsetMs: -12, measuredAt: null },
  adapters: [
    { name: 'broker', kind: 'native', state: 'running' },
    { name: 'lorawan', kind: 'mapped', state: 'failed', error: 'ChirpStack unreachable at localhost:8080: check lorawan.chirpstack.url' },
  ],
}

/** A gateway as the web layer sees it: the devices above, a command desk that records what it is sent. */
function fakeGateway() {
  const registry = new Map([thermo, away].map((d) => [key(d), { ...d }]))
  const waiters = new Map<string, (payload: Buffer) => void>()
  const g = {
    health: healthy,
    online: new Set([key(thermo)]),
    lastSeen: new Map([[key(thermo), 1500]]),
    sent: [] as Command[],
    waits: [] as number[],
    /** What the device answers an RPC with; undefined: it stays silent. */
    rpcReply: undefined as ((cmd: Command) => string) | undefined,
    secrets: new Map<string, string>(),
    adapterRoutes: [] as WebDeps['adapterRoutes'],
    deviceRoutes: [] as NonNullable<WebDeps['deviceRoutes']>,
    logs: [] as Record<string, unknown>[],
    rpcWaitMs: 200,
  }
  const history: StoredCommand[] = [
    {
      id: 7,
      command: { type: 'cmd', device: thermo, name: 'blink', encoding: 'plain', requestId: 'r7', payload: Buffer.from('{"n":3}') },
      origin: 'local',
      state: 'replied',
      createdAt: 10,
      updatedAt: 11,
      reply: Buffer.from('blinked'),
    },
  ]
  const deps = (): WebDeps => ({
    log: pino({ level: 'info' }, { write: (line: string) => void g.logs.push(JSON.parse(line) as Record<string, unknown>) }),
    apiToken: TOKEN,
    apiTokenWhere: TOKEN_FILE,
    health: () => g.health,
    metrics: async () => ({ contentType: 'text/plain; version=0.0.4; charset=utf-8', body: 'iothub_edge_broker_clients 2\n' }),
    outboxStats: () => stats,
    devices: {
      list: () => [...registry.values()],
      get: (ref) => registry.get(key(ref)),
      add: async (d) => {
        if (registry.has(key(d))) throw Object.assign(new Error(`device ${key(d)} already exists`), { code: 'EXISTS' })
        const device = { productId: d.productId, deviceId: d.deviceId, tags: d.tags ?? [], tagsVersion: 0, enabled: d.enabled, hasSecret: true, createdAt: 5, updatedAt: 5 }
        registry.set(key(d), device)
        return { device, secret: d.secret ?? 'generated-secret' }
      },
      setEnabled: (ref, enabled) => void Object.assign(registry.get(key(ref))!, { enabled }),
      setSecret: async (ref, secret) => void g.secrets.set(key(ref), secret),
      setTags: async (ref, tags) => {
        const d = registry.get(key(ref))
        return d && Object.assign(d, { tags, tagsVersion: d.tagsVersion + 1 })
      },
      remove: (ref) => registry.delete(key(ref)),
      connections: (ref) => (key(ref) === key(thermo) ? [session] : []),
      online: (ref) => g.online.has(key(ref)),
      lastSeen: (ref) => g.lastSeen.get(key(ref)) ?? null,
      shadow: () => ({ state: { reported: { temp: 21 } }, metadata: {}, version: 3, timestamp: 99 }),
    },
    commands: {
      history: (ref) => (key(ref) === key(thermo) ? history : []),
      send: (cmd) => {
        g.sent.push(cmd)
        if (cmd.type === 'cmd') return 'queued'
        if (!g.online.has(key(cmd.device))) return 'rpc_offline'
        const answer = g.rpcReply?.(cmd)
        if (answer !== undefined) setImmediate(() => waiters.get(cmd.requestId)?.(Buffer.from(answer)))
        return 'rpc_sent'
      },
      waitForReply: (_ref, requestId, timeoutMs) => {
        g.waits.push(timeoutMs)
        return new Promise((resolve) => {
          const timer = setTimeout(() => resolve(undefined), timeoutMs)
          waiters.set(requestId, (p) => {
            clearTimeout(timer)
            resolve(p)
          })
        })
      },
    },
    adapterRoutes: g.adapterRoutes,
    deviceRoutes: g.deviceRoutes,
    rpcWaitMs: g.rpcWaitMs,
  })
  return Object.assign(g, { deps })
}

let gw: ReturnType<typeof fakeGateway>
let app: FastifyInstance
const open = async (): Promise<FastifyInstance> => {
  app = buildApp(gw.deps())
  await app.ready()
  return app
}
const post = (url: string, payload: unknown, headers = auth) => app.inject({ method: 'POST', url, payload: payload as object, headers })
const patch = (url: string, payload: unknown) => app.inject({ method: 'PATCH', url, payload: payload as object, headers: auth })
const get = (url: string, headers: Record<string, string> = auth) => app.inject({ method: 'GET', url, headers })

beforeEach(async () => {
  gw = fakeGateway()
  await open()
})
afterEach(async () => {
  await app.close()
})

describe('token', () => {
  it('refuses /api routes without it or with a wrong one (401, the documented body), and accepts it', async () => {
    for (const url of ['/api/devices', '/api/outbox', '/api/devices/thermo/t1', '/api/devices/thermo/t1/commands']) {
      const none = await get(url, {})
      expect(none.statusCode, url).toBe(401)
      expect(none.json()).toEqual(UNAUTHORIZED)
      expect((await get(url, { authorization: 'Bearer not-the-token' })).statusCode, url).toBe(401)
      expect((await get(url, { authorization: TOKEN })).statusCode, `${url}: the token without its scheme`).toBe(401)
      expect((await get(url, { authorization: `bearer ${TOKEN}` })).statusCode, `${url}: the scheme is case-insensitive`).toBe(200)
    }
    const refused = await app.inject({ method: 'PATCH', url: '/api/devices/thermo/t1', payload: { enabled: false } })
    expect(refused.statusCode).toBe(401)
    expect(gw.deps().devices.get(thermo)?.enabled).toBe(true)
  })

  it('guards routes however the path is spelled, and unknown /api paths too', async () => {
    // The router decodes %61 to "a": a check on the raw URL would let this through.
    expect((await get('/%61pi/devices', {})).statusCode).toBe(401)
    expect((await get('/api/%64evices', {})).statusCode).toBe(401)
    expect((await get('/api/nothing-here', {})).statusCode).toBe(401)
    const unknown = await get('/api/nothing-here')
    expect(unknown.statusCode).toBe(404)
    expect(unknown.json()).toMatchObject({ error: 'not_found' })
  })

  it('is not needed for /api/health and /metrics', async () => {
    expect((await get('/api/health', {})).statusCode).toBe(200)
    expect((await get('/metrics', {})).statusCode).toBe(200)
  })

  it('must not be empty (an empty token would match a missing header)', () => {
    expect(() => buildApp({ ...gw.deps(), apiToken: '' })).toThrow(/non-empty token/)
  })
})

describe('GET /api/health', () => {
  it('answers 200 with the report, adapters included', async () => {
    const res = await get('/api/health', {})
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(healthy)
  })

  it('answers 503 while degraded, with the reasons', async () => {
    gw.health = { ...healthy, status: 'degraded', reasons: ['disk_full', 'adapter_failed:lorawan'] }
    const res = await get('/api/health', {})
    expect(res.statusCode).toBe(503)
    expect(res.json()).toMatchObject({ status: 'degraded', reasons: ['disk_full', 'adapter_failed:lorawan'], adapters: healthy.adapters })
  })

  it('tells why the hub link is down and when it tries again, and how fast the outbox drains', async () => {
    const lastError = { at: 5_000, code: 'IHE_NORTHBOUND', reason: 'ECONNREFUSED', message: 'connect ECONNREFUSED 10.0.0.2:8883' }
    gw.health = {
      ...healthy,
      status: 'degraded',
      reasons: ['northbound_down'],
      northbound: { ...healthy.northbound, connected: false, since: null, downSince: 4_000, lastError, nextRetryAt: 9_000 },
      outbox: { ...healthy.outbox, drainRate: { last10s: 12.5, last60s: 3.1 } },
    }
    const body = (await get('/api/health', {})).json()
    expect(body.northbound).toMatchObject({ lastError, nextRetryAt: 9_000, downSince: 4_000 })
    expect(body.outbox.drainRate).toEqual({ last10s: 12.5, last60s: 3.1 })
  })

  it('publishes only the documented fields', async () => {
    gw.health = { ...healthy, outbox: { ...healthy.outbox, internalNote: 'x' } as HealthReport['outbox'] }
    expect((await get('/api/health', {})).json().outbox).toEqual(healthy.outbox)
  })
})

describe('GET /metrics and /api/outbox', () => {
  it('serves the Prometheus text with its content type', async () => {
    const res = await get('/metrics', {})
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8')
    expect(res.body).toBe('iothub_edge_broker_clients 2\n')
  })

  it('serves the outbox statistics', async () => {
    const res = await get('/api/outbox')
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual(JSON.parse(JSON.stringify(stats)))
  })
})

describe('devices', () => {
  // This fake gateway reports no activity (src/live): the fields are there, empty.
  const noActivity = { protocol: null, rssi: null, snr: null, battery: null, firmwareVersion: null, errors: 0, lastError: null, queuedCommands: 0 }

  it('lists and shows devices; an unknown one is 404', async () => {
    expect((await get('/api/devices')).json()).toEqual({
      devices: [
        { ...thermo, online: true, lastSeen: 1500, ...noActivity },
        { ...away, online: false, lastSeen: null, ...noActivity },
      ],
    })
    const one = await get('/api/devices/thermo/t1')
    expect(one.statusCode).toBe(200)
    expect(one.json()).toEqual({ device: thermo, online: true, lastSeen: 1500, connections: [session] })
    expect((await get('/api/devices/thermo/away')).json()).toEqual({ device: away, online: false, lastSeen: null, connections: [] })
    for (const url of ['/api/devices/thermo/nope', '/api/devices/thermo/nope/shadow', '/api/devices/thermo/nope/commands']) {
      const missing = await get(url)
      expect(missing.statusCode, url).toBe(404)
      expect(missing.json()).toEqual({ error: 'not_found' })
    }
  })

  it('adds a device (201 with the secret this once); a second add of it is 409', async () => {
    const res = await post('/api/devices', { productId: 'thermo', deviceId: 'new-1', tags: ['roof'] })
    expect(res.statusCode).toBe(201)
    expect(res.json()).toEqual({
      device: { productId: 'thermo', deviceId: 'new-1', tags: ['roof'], tagsVersion: 0, enabled: true, hasSecret: true, createdAt: 5, updatedAt: 5 },
      secret: 'generated-secret',
    })
    const disabled = await post('/api/devices', { productId: 'thermo', deviceId: 'new-2', secret: 's3cret', enabled: false })
    expect(disabled.json()).toMatchObject({ device: { enabled: false }, secret: 's3cret' })
    const again = await post('/api/devices', { productId: 'thermo', deviceId: 'new-1' })
    expect(again.statusCode).toBe(409)
    expect(again.json()).toEqual({ error: 'exists', message: 'device thermo/new-1 already exists' })
  })

  it('refuses a bad new device with 400 naming the field', async () => {
    const cases: [unknown, string][] = [
      [{ deviceId: 'd' }, 'productId is required and must be 1-64 of [A-Za-z0-9_-]'],
      [{ productId: 'p', deviceId: 'a/b' }, 'deviceId must be 1-64 of [A-Za-z0-9_-]'],
      [{ productId: 'p', deviceId: 'x'.repeat(65) }, 'deviceId must be 1-64 of [A-Za-z0-9_-]'],
      [{ productId: 'p', deviceId: 'd', secret: '' }, 'secret must be a non-empty string'],
      [{ productId: 'p', deviceId: 'd', tags: 'roof' }, 'tags must be an array of tags'],
      [{ productId: 'p', deviceId: 'd', tags: ['roof', 7] }, 'tags[1] must be a tag: 1-64 of [A-Za-z0-9_-]'],
      [{ productId: 'p', deviceId: 'd', tags: ['floor/2'] }, 'tags[0] must be a tag: 1-64 of [A-Za-z0-9_-]'],
      [{ productId: 'p', deviceId: 'd', enabled: 'false' }, 'enabled must be a boolean'],
      [['p', 'd'], 'body must be a JSON object'],
    ]
    for (const [body, message] of cases) {
      const res = await post('/api/devices', body)
      expect(res.statusCode, JSON.stringify(body)).toBe(400)
      expect(res.json()).toEqual({ error: 'bad_request', message })
    }
    const empty = await app.inject({ method: 'POST', url: '/api/devices', headers: auth })
    expect(empty.json()).toEqual({ error: 'bad_request', message: 'body must be a JSON object' })
    const notJson = await app.inject({ method: 'POST', url: '/api/devices', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"productId":' })
    expect(notJson.statusCode).toBe(400)
    expect(notJson.json()).toMatchObject({ error: 'bad_request' })
    expect(gw.deps().devices.list()).toHaveLength(2)
  })

  it('enables, disables and sets a secret; refuses an empty or bad change; 404 for an unknown device', async () => {
    const off = await patch('/api/devices/thermo/t1', { enabled: false })
    expect(off.statusCode).toBe(200)
    expect(off.json()).toEqual({ device: { ...thermo, enabled: false } })
    expect((await patch('/api/devices/thermo/t1', { secret: 'n3w', enabled: true })).json().device.enabled).toBe(true)
    expect(gw.secrets.get('thermo/t1')).toBe('n3w')

    const cases: [unknown, string][] = [
      [{}, 'send at least one of {"enabled": true|false}, {"secret": "..."}, {"tags": [...]}'],
      [{ enabled: 'false' }, 'enabled must be a boolean'],
      [{ enabled: 'no' }, 'enabled must be a boolean'],
      [{ enabled: 0 }, 'enabled must be a boolean'],
      [{ secret: '' }, 'secret must be a non-empty string'],
      [{ secret: 123 }, 'secret must be a non-empty string'],
      [{ tags: 'roof' }, 'tags must be an array of tags'],
      [{ tags: ['ok', 'not ok'] }, 'tags[1] must be a tag: 1-64 of [A-Za-z0-9_-]'],
    ]
    for (const [body, message] of cases) {
      const res = await patch('/api/devices/thermo/t1', body)
      expect(res.statusCode, JSON.stringify(body)).toBe(400)
      expect(res.json()).toEqual({ error: 'bad_request', message })
    }
    expect(gw.deps().devices.get(thermo)?.enabled).toBe(true)
    expect(gw.secrets.get('thermo/t1')).toBe('n3w')
    expect(gw.deps().devices.get(thermo)?.tags).toEqual(['floor2'])
    const missing = await patch('/api/devices/thermo/nope', { enabled: false })
    expect(missing.statusCode).toBe(404)
    expect(missing.json()).toEqual({ error: 'not_found' })
  })

  it('replaces the tags (the next tags_version)', async () => {
    const res = await patch('/api/devices/thermo/t1', { tags: ['roof', 'zone-b'] })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ device: { ...thermo, tags: ['roof', 'zone-b'], tagsVersion: 2 } })
    expect((await patch('/api/devices/thermo/t1', { tags: [] })).json().device).toMatchObject({ tags: [], tagsVersion: 3 })
    expect((await patch('/api/devices/thermo/nope', { tags: ['roof'] })).statusCode).toBe(404)
  })

  it('removes a device (204, then 404)', async () => {
    const gone = await app.inject({ method: 'DELETE', url: '/api/devices/thermo/t1', headers: auth })
    expect(gone.statusCode).toBe(204)
    expect(gone.body).toBe('')
    expect((await app.inject({ method: 'DELETE', url: '/api/devices/thermo/t1', headers: auth })).statusCode).toBe(404)
    expect((await get('/api/devices/thermo/t1')).statusCode).toBe(404)
  })

  it("shows a device's shadow", async () => {
    const res = await get('/api/devices/thermo/t1/shadow')
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({ shadow: { state: { reported: { temp: 21 } }, metadata: {}, version: 3, timestamp: 99 } })
  })
})

describe('commands', () => {
  const base = '/api/devices/thermo/t1/commands'

  it('lists the history with payload and reply as text', async () => {
    const res = await get(base)
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({
      commands: [
        {
          id: 7,
          type: 'cmd',
          name: 'blink',
          requestId: 'r7',
          encoding: 'plain',
          expiresAt: null,
          origin: 'local',
          state: 'replied',
          reason: null,
          createdAt: 10,
          updatedAt: 11,
          payload: '{"n":3}',
          reply: 'blinked',
        },
      ],
    })
  })

  it('sends a command (202 with its RequestId and state)', async () => {
    const before = Math.floor(Date.now() / 1000)
    const res = await post(base, { name: 'blink', payload: { n: 3 }, ttl: 60 })
    expect(res.statusCode).toBe(202)
    const { requestId, state } = res.json<{ requestId: string; state: string }>()
    expect(state).toBe('queued')
    expect(requestId).toMatch(/^[0-9a-f]{24}$/)
    const cmd = gw.sent[0]
    expect(cmd).toMatchObject({ type: 'cmd', device: { productId: 'thermo', deviceId: 't1' }, name: 'blink', encoding: 'plain', requestId })
    expect(cmd.payload.toString()).toBe('{"n":3}')
    expect(cmd.expiresAt).toBeGreaterThanOrEqual(before + 60)
    expect(cmd.expiresAt).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 60)

    await post(base, { name: 'raw', payload: 'AQID', encoding: 'base64' })
    expect(gw.sent[1]).toMatchObject({ name: 'raw', encoding: 'base64', expiresAt: undefined })
    expect(gw.sent[1].payload.toString()).toBe('AQID')
  })

  it('refuses a bad command with 400 naming the field, and sends nothing', async () => {
    const name = 'name must be 1-64 of [A-Za-z0-9_.:-]; names starting with $ are internal to the protocol and cannot be sent'
    const cases: [unknown, string][] = [
      [{ name: '$set_tags' }, name],
      [{ name: '' }, name],
      [{ payload: 1 }, `name is required and must be ${name.slice('name must be '.length)}`],
      [{ name: 'blink', encoding: 'hex' }, 'encoding must be plain or base64'],
      [{ name: 'blink', ttl: 0 }, 'ttl must be a positive whole number of seconds'],
      [{ name: 'blink', ttl: 1.5 }, 'ttl must be a positive whole number of seconds'],
      [{ name: 'blink', ttl: '10' }, 'ttl must be a positive whole number of seconds'],
      [{ name: 'blink', rpc: 'yes' }, 'rpc must be a boolean'],
    ]
    for (const [body, message] of cases) {
      const res = await post(base, body)
      expect(res.statusCode, JSON.stringify(body)).toBe(400)
      expect(res.json()).toEqual({ error: 'bad_request', message })
    }
    expect(gw.sent).toEqual([])
    expect((await post('/api/devices/thermo/nope/commands', { name: 'blink' })).statusCode).toBe(404)
  })

  it('waits for the reply to an RPC (200), through the timeout the deps give', async () => {
    gw.rpcReply = (cmd) => `read ${cmd.payload.toString()}`
    const res = await post(base, { name: 'read', payload: { reg: 7 }, rpc: true })
    expect(res.statusCode).toBe(200)
    const body = res.json<{ requestId: string }>()
    expect(body).toEqual({ requestId: gw.sent[0].requestId, state: 'replied', reply: 'read {"reg":7}' })
    expect(gw.sent[0].type).toBe('rpc')
    expect(gw.waits).toEqual([gw.rpcWaitMs])
  })

  it('answers 504 when the RPC reply does not come in time', async () => {
    await app.close()
    gw.rpcWaitMs = 30
    await open()
    const res = await post(base, { name: 'read', rpc: true })
    expect(res.statusCode).toBe(504)
    expect(res.json()).toEqual({ error: 'timeout', message: 'no reply within 0.03 s', requestId: gw.sent[0].requestId })
  })

  it('answers 409 to an RPC for a device that is not connected (RPCs are not queued)', async () => {
    const res = await post('/api/devices/thermo/away/commands', { name: 'read', rpc: true })
    expect(res.statusCode).toBe(409)
    expect(res.json()).toEqual({ error: 'offline', message: 'the device is not connected; RPCs are not queued', requestId: gw.sent[0].requestId })
  })
})

describe('adapter routes', () => {
  const Reading = Type.Object({ value: Type.Number({ description: 'a number' }) })
  const lora: FastifyPluginAsync = async (scope) => {
    scope.get('/gateways', async () => ({ gateways: ['gw-a'] }))
    scope.post<{ Body: Static<typeof Reading> }>('/readings', { schema: { body: Reading } }, async (req) => ({ got: req.body.value }))
  }

  it('mounts them under /api/adapters/{adapter}/, behind the token, with the same 400 shape', async () => {
    await app.close()
    gw.adapterRoutes = [{ adapter: 'lorawan', plugin: lora }]
    await open()
    expect((await get('/api/adapters/lorawan/gateways', {})).statusCode).toBe(401)
    expect((await get('/api/adapters/lorawan/gateways', { authorization: 'Bearer wrong' })).statusCode).toBe(401)
    const ok = await get('/api/adapters/lorawan/gateways')
    expect(ok.statusCode).toBe(200)
    expect(ok.json()).toEqual({ gateways: ['gw-a'] })
    expect((await get('/gateways')).statusCode).toBe(404)
    expect((await post('/api/adapters/lorawan/readings', { value: 3 })).json()).toEqual({ got: 3 })
    const bad = await post('/api/adapters/lorawan/readings', { value: 'three' })
    expect(bad.statusCode).toBe(400)
    expect(bad.json()).toEqual({ error: 'bad_request', message: 'value must be a number' })
  })

  it('keeps the API up when one adapter fails to register its routes, and logs which', async () => {
    await app.close()
    const broken: FastifyPluginAsync = async () => {
      throw new Error('no ChirpStack API key')
    }
    gw.adapterRoutes = [
      { adapter: 'serial', plugin: broken },
      { adapter: 'lorawan', plugin: lora },
    ]
    await open()
    expect((await get('/api/adapters/lorawan/gateways')).statusCode).toBe(200)
    expect((await get('/api/devices')).statusCode).toBe(200)
    expect(gw.logs).toContainEqual(expect.objectContaining({ level: 50, adapter: 'serial', component: 'web', err: expect.objectContaining({ message: 'no ChirpStack API key' }) }))
  })
})

describe('errors', () => {
  it("answers what fastify itself refuses in the API's {error, message} shape", async () => {
    const send = (headers: Record<string, string>, payload: string) =>
      app.inject({ method: 'POST', url: '/api/devices', headers: { ...auth, ...headers }, payload })
    const cases: [Awaited<ReturnType<typeof send>>, number, object][] = [
      [await send({ 'content-type': 'application/json' }, '{"productId":'), 400, { error: 'bad_request', message: 'body is not valid JSON' }],
      [await send({ 'content-type': 'application/json' }, ''), 400, { error: 'bad_request', message: 'body must be a JSON object (it is empty, yet content-type says JSON)' }],
      [await send({ 'content-type': 'application/xml' }, '<device/>'), 415, { error: 'unsupported_media_type', message: 'send the body as JSON, with content-type: application/json' }],
      [await send({ 'content-type': 'application/json' }, JSON.stringify({ productId: 'p', deviceId: 'd', secret: 'x'.repeat(1 << 20) })), 413, { error: 'payload_too_large', message: 'the body is larger than 1 MiB' }],
      [await app.inject({ method: 'PUT', url: '/api/devices', headers: auth }), 404, { error: 'not_found', message: 'no route PUT /api/devices' }],
      [await get('/no/such/page', {}), 404, { error: 'not_found', message: 'no route GET /no/such/page' }],
    ]
    for (const [res, status, body] of cases) {
      expect(res.statusCode, res.body).toBe(status)
      expect(res.json()).toEqual(body)
    }
    expect(gw.deps().devices.list()).toHaveLength(2)
  })


  it('answers 500 with the usual body when the gateway throws, and logs it', async () => {
    await app.close()
    const deps = gw.deps()
    app = buildApp({ ...deps, outboxStats: () => { throw new Error('database is locked') } })
    const res = await get('/api/outbox')
    expect(res.statusCode).toBe(500)
    expect(res.json()).toMatchObject({ error: 'internal' })
    expect(res.body).not.toContain('database is locked')
    expect(gw.logs).toContainEqual(expect.objectContaining({ level: 50, url: '/api/outbox', err: expect.objectContaining({ message: 'database is locked' }) }))
  })
})

describe('adapter device routes', () => {
  // A device-facing plugin: it checks a credential of its own, never the API token.
  const ingest: FastifyPluginAsync = async (scope) => {
    scope.post('/:p/:d/data', async (req, reply) => (req.headers['x-device-key'] === 'k' ? reply.code(201).send({ ok: true }) : reply.code(401).send({ error: 'unauthorized' })))
    // What a device plugin registers stays under /devices/: it cannot add to the token's scope.
    scope.get('/api/devices', async () => ({ leaked: true }))
  }

  it('mounts them under /devices/, outside /api and without the API token', async () => {
    await app.close()
    gw.deviceRoutes = [{ adapter: 'http-devices', plugin: ingest }]
    await open()
    const ok = await app.inject({ method: 'POST', url: '/devices/thermo/t1/data', headers: { 'x-device-key': 'k' } })
    expect(ok.statusCode).toBe(201)
    // No bearer token involved either way: the plugin's own check decides.
    const refused = await app.inject({ method: 'POST', url: '/devices/thermo/t1/data', headers: { authorization: `Bearer ${TOKEN}` } })
    expect(refused.statusCode).toBe(401)
    expect((await app.inject({ method: 'GET', url: '/devices/api/devices' })).json()).toEqual({ leaked: true })
    expect((await app.inject({ method: 'GET', url: '/api/devices' })).statusCode).toBe(401)
    expect((await app.inject({ method: 'GET', url: '/api/devices', headers: auth })).json()).not.toEqual({ leaked: true })
  })
})

describe('docs/integrators/api.md', () => {
  it('documents every route the API registers, and no route it does not', async () => {
    await app.close()
    // With the web UI's login (its routes are registered only then; no route is called here).
    // The store's salvage routes are a service of the composition root (documented in this table;
    // the OTA relay's have their own page).
    const store = { prefix: 'store', api: storeRoutes({ salvage: () => undefined, acknowledge: () => false }) }
    app = buildApp({ ...gw.deps(), serviceRoutes: [store], ui: { store: {} as never, dataDir: '/nonexistent', idleTimeoutSeconds: 60, maxLifetimeSeconds: 60, secureCookie: false } })
    const registered = new Set<string>()
    app.addHook('onRoute', (r) => {
      // fastify adds HEAD for each GET by itself; {p} is how the page writes :p.
      for (const method of [r.method].flat()) if (method !== 'HEAD') registered.add(`${method} ${r.url.replace(/:(\w+)/g, '{$1}')}`)
    })
    await app.ready()
    const page = readFileSync(new URL('../../docs/integrators/api.md', import.meta.url), 'utf8')
    // The routes table: one row per route, its first cell `METHOD /path`.
    const documented = new Set([...page.matchAll(/^\| `(GET|POST|PUT|PATCH|DELETE) (\/[^`?]*)(?:\?[^`]*)?` \|/gm)].map((m) => `${m[1]} ${m[2]}`))
    expect([...registered].sort()).toEqual([...documented].sort())
    expect(registered.size).toBeGreaterThan(5)
  })

  it("lists every metric of the core's registry in its metrics table, and only the broker's, the rules' and the OTA relay's besides", () => {
    const nodeDefaults = new Registry()
    collectDefaultMetrics({ register: nodeDefaults, prefix: 'iothub_edge_' })
    const process = new Set(nodeDefaults.getMetricsAsArray().map((m) => m.name))
    const core = new Metrics().registry.getMetricsAsArray().map((m) => m.name).filter((n) => !process.has(n))
    const page = readFileSync(new URL('../../docs/integrators/api.md', import.meta.url), 'utf8')
    const table = page.slice(page.indexOf('## Metrics'))
    // A row's first cell: `iothub_edge_outbox_messages`, `_bytes`, ... (the short forms share the first name's stem).
    const documented = [...table.matchAll(/^\| (`iothub_edge_[^|]*)\|/gm)].flatMap(([, cell]) => {
      const names = [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1])
      const stem = names[0].slice(0, names[0].lastIndexOf('_'))
      return names.map((n) => (n.startsWith('_') ? stem + n : n))
    })
    expect(documented.filter((n) => core.includes(n)).sort()).toEqual(core.sort())
    // The rest is the always-on broker's own (registered when it starts) and the local rules' (registered
    // when rules are configured); other adapters' and the history's pages list theirs.
    const rules = ['matched', 'dropped', 'emitted', 'errors'].map((c) => `iothub_edge_rule_${c}_total`).concat('iothub_edge_rule_eval_seconds_total')
    // The OTA relay's, always on (ota.relay), registered when it starts.
    const ota = ['cache_bytes', 'fetch_bytes', 'downloads_total', 'served_bytes_total', 'evictions_total', 'targets', 'gateway_status_total'].map((n) => `iothub_edge_ota_${n}`)
    // The live stream's (src/gateway.ts), always on.
    const live = ['iothub_edge_live_stream_clients', 'iothub_edge_live_stream_dropped_total']
    expect(documented.filter((n) => !core.includes(n)).sort()).toEqual(['iothub_edge_broker_clients', ...rules, ...ota, ...live].sort())
  })
})
