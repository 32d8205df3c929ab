// The adapter seams (issue "seams for many adapters"): an adapter registered through the registry
// with its own config section, metric and route works end to end, and a native adapter that is not
// MQTT gets everything the core hands down to its devices through its own deliver(): local `$ntp`
// answers, tag commands from the hub, `$tags`/`$shadow` answers while the hub is away. An adapter
// that fails to start is named in health and the rest carries on. The gateway runs in this process
// (the real Gateway, its real broker and HTTP API on free ports, SQLite in a temp dir); the hub is
// Mosquitto with the hub's ACL.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ConfigError, parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { tagFilter } from '../../src/core/hub-topics.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { LoopbackAdapter, loopbackAdapterEntry } from '../helpers/loopback-adapter.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const GW_CLIENT_ID = `${gwLogin.productId}/${gwLogin.deviceId}/edge`
const API_TOKEN = 'adapter-registry-test-token'
const dev = { productId: 'meter', deviceId: 'coap-1', secret: 'coap-1-secret' }
const ref = { productId: dev.productId, deviceId: dev.deviceId }
const MID = (n: number): string => `65a1b2c3d4e5f6071829${String(n).padStart(4, '0')}`

async function until<T>(check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(25)
  }
}

describe('the adapter registry', () => {
  it('composes an adapter\'s own config section into the one schema, with key paths in errors', () => {
    const entry = loopbackAdapterEntry()
    expect(parseConfig({ loopback: { label: 'x' } }, process.cwd(), [entry])).toMatchObject({ loopback: { label: 'x', failStart: false } })
    // Not configured: the section stays absent (the adapter does not run).
    expect((parseConfig({}, process.cwd(), [entry]) as Record<string, unknown>).loopback).toBeUndefined()
    try {
      parseConfig({ loopback: { lable: 'x' } }, process.cwd(), [entry])
      expect.unreachable('a misspelt key must be refused')
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      expect((err as ConfigError).problems).toContain('loopback.lable: unknown key (did you mean label? check the spelling against docs/configuration.md)')
    }
    // Without the entry the key is unknown: adapters own their sections.
    expect(() => parseConfig({ loopback: {} })).toThrow(/loopback: unknown key/)
  })
})

describe('a native adapter that is not MQTT, registered through the registry', () => {
  let hub: HubBroker
  let dataDir: string
  let gw: Gateway
  let loopback: LoopbackAdapter
  const api = async (urlPath: string, token: string | null = API_TOKEN): Promise<Response> =>
    fetch(`http://127.0.0.1:${gw.web.port}${urlPath}`, { headers: token ? { authorization: `Bearer ${token}` } : {} })

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [dev] } })
    await hub.start()
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'adapter-registry-'))
    const broken = { ...loopbackAdapterEntry(), key: 'broken', name: 'broken' }
    const cfg = parseConfig(
      {
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: [dev],
        loopback: { label: 'bench-A' },
        broken: { failStart: true },
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
      },
      process.cwd(),
      [loopbackAdapterEntry((a) => (loopback = a)), broken],
    )
    gw = new Gateway(cfg, { adapters: [loopbackAdapterEntry((a) => (loopback = a)), broken] })
    await gw.start()
    await until(() => gw.bridge.status().connected, 15_000, 'the hub link did not come up')
  })

  afterAll(async () => {
    await gw?.stop()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('reports a failed adapter by name in health while the others run', async () => {
    const res = await api('/api/health', null)
    expect(res.status).toBe(503)
    const h = (await res.json()) as { status: string; reasons: string[]; adapters: { name: string; state: string; error?: string }[] }
    expect(h.status).toBe('degraded')
    expect(h.reasons).toContain('adapter_failed:broken')
    expect(h.adapters).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ name: 'broker', state: 'running' }),
        expect.objectContaining({ name: 'loopback', state: 'running', kind: 'native' }),
        expect.objectContaining({ name: 'broken', state: 'failed', error: expect.stringContaining('failStart') }),
      ]),
    )
  })

  it('answers $ntp locally through the adapter\'s own deliver()', async () => {
    await loopback.connect(ref, dev.secret)
    const sentAt = Date.now()
    await loopback.send(`get/${dev.productId}/${dev.deviceId}/$ntp/${MID(1)}`, JSON.stringify({ device_time: sentAt }))
    const answer = await loopback.waitFor(ref, (c) => c.name === '$set_ntp')
    expect(answer).toMatchObject({ type: 'cmd', device: ref, encoding: 'plain' })
    const body = JSON.parse(answer.payload.toString()) as Record<string, number>
    expect(body.device_time).toBe(sentAt)
    expect(body.iothub_recv).toBeGreaterThanOrEqual(sentAt - 1000)
    expect(body.iothub_send).toBeGreaterThanOrEqual(body.iothub_recv)
  })

  it('relays a tag command from the hub to a device that subscribed the tag, saying which tag', async () => {
    await loopback.connect(ref, dev.secret)
    const filter = tagFilter(dev.productId, 'floor2')
    loopback.subscribeTag(ref, filter)
    // The gateway holds the tag filter on the hub for its child.
    await until(async () => (await hub.subscriptionsOf(GW_CLIENT_ID)).has(filter), 10_000, `the gateway does not hold ${filter} on the hub`)
    await hub.publishAsHub(`tags/${dev.productId}/floor2/cmd/lights_off/plain/tagreq-1`, '{"level":0}')
    const cmd = await loopback.waitFor(ref, (c) => c.requestId === 'tagreq-1')
    expect(cmd).toMatchObject({ type: 'cmd', name: 'lights_off', via: { tag: 'floor2' } })
    expect(cmd.payload.toString()).toBe('{"level":0}')
    // Once per RequestId, even if the hub repeats it.
    await hub.publishAsHub(`tags/${dev.productId}/floor2/cmd/lights_off/plain/tagreq-1`, '{"level":0}')
    await sleep(500)
    expect(loopback.inbox.get('meter/coap-1')!.filter((c) => c.requestId === 'tagreq-1')).toHaveLength(1)
  })

  it('delivers an ordinary hub command and counts it in the adapter\'s own metric', async () => {
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/reboot/plain/req-7`, '{}')
    await loopback.waitFor(ref, (c) => c.requestId === 'req-7')
    const metrics = await (await api('/metrics', null)).text()
    const line = metrics.split('\n').find((l) => l.startsWith('iothub_edge_loopback_deliveries_total'))
    expect(line).toBeDefined()
    expect(Number(line!.split(' ')[1])).toBeGreaterThanOrEqual(3)
  })

  it('serves the adapter\'s own route under /api/adapters/{name}/, behind the token', async () => {
    expect((await api('/api/adapters/loopback/devices', null)).status).toBe(401)
    const res = await api('/api/adapters/loopback/devices')
    expect(res.status).toBe(200)
    expect(await res.json()).toMatchObject({ label: 'bench-A', online: ['meter/coap-1'] })
  })

  it('answers $tags and $shadow from the copies, through the adapter, while the hub is away', async () => {
    await loopback.connect(ref, dev.secret)
    // The gateway learns the device's tags as the hub pushes them.
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/$set_tags/plain/settags-1`, JSON.stringify({ tags: ['floor2'], tags_version: 3 }), 0)
    await until(() => gw.store.registry.get(ref)?.tagsVersion === 3, 10_000, 'the gateway did not keep the pushed tags')
    await hub.stop()
    await until(() => !gw.bridge.status().connected, 15_000, 'the gateway still thinks the hub is up')
    await loopback.send(`get/${dev.productId}/${dev.deviceId}/$tags/${MID(2)}`, JSON.stringify({ tags_version: 1 }))
    const tags = await loopback.waitFor(ref, (c) => c.name === '$set_tags' && c.requestId !== 'settags-1')
    expect(tags.qos).toBe(0)
    expect(JSON.parse(tags.payload.toString())).toEqual({ tags: ['floor2'], tags_version: 3 })
    await loopback.send(`get/${dev.productId}/${dev.deviceId}/$shadow/${MID(3)}`, '')
    const shadow = await loopback.waitFor(ref, (c) => c.name === '$update_shadow')
    expect(JSON.parse(shadow.payload.toString())).toMatchObject({ version: expect.any(Number), state: expect.any(Object) })
    await hub.start()
  })
})
