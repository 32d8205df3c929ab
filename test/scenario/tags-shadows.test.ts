// Tags, shadows and NTP through the gateway (issue 3, PROTOCOL.md "Internal data requests",
// "Tags", "Shadow", "NTP"), for both kinds of device (DESIGN.md "Two kinds of device"). Mapped
// devices need an adapter inside the gateway, so the gateway runs in this process (the real
// Gateway, its real broker on a free port, SQLite in a temp dir); the hub is Mosquitto with the
// hub's ACL plus the hub simulator playing the hub's server side; native devices are MQTT.js
// clients behaving as the device SDK (test/helpers/sdk-device.ts); mapped devices sit behind the
// test mapped adapter (test/helpers/mapped-adapter.ts), which stands for LoRaWAN/serial/CoAP.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import type { BrokerAdapter } from '../../src/southbound/broker/broker-adapter.js'
import type { Command } from '../../src/core/types.js'
import { HubSim, type Shadow } from '../../src/tools/hub-sim.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { TestMappedAdapter, testMappedAdapterEntry } from '../helpers/mapped-adapter.js'
import { SdkDevice, jsonOf, tagFilterOf, type ReceivedMessage } from '../helpers/sdk-device.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
// The gateway's client id at the hub (northbound.clientId default), as Mosquitto's log names it.
const GW_CLIENT_ID = `${gwLogin.productId}/${gwLogin.deviceId}/edge`
const API_TOKEN = 'tags-shadows-test-token'
const P = 'lamp'

interface Login {
  productId: string
  deviceId: string
  secret: string
}
interface Mapped {
  productId: string
  deviceId: string
  tags: string[]
}
const native = (deviceId: string): Login => ({ productId: P, deviceId, secret: `secret-${deviceId}` })
const mappedDevice = (deviceId: string, tags: string[] = []): Mapped => ({ productId: P, deviceId, tags })

const isCmd = (name: string) => (m: ReceivedMessage) => m.levels[0] === 'cmd' && m.levels[3] === name
// tags/{p}/{Tag}/cmd/{CommandName}/{Encoding}/{RequestId}
const isTagCmd = (requestId: string) => (m: ReceivedMessage) => m.levels[0] === 'tags' && m.levels[6] === requestId
const stateAndVersion = (s: Shadow): { state: Shadow['state']; version: number } => ({ state: s.state, version: s.version })

/** An in-process gateway with the test mapped adapter, against `hubUrl`. */
async function startGateway(o: {
  hubUrl: string
  dataDir: string
  natives: Login[]
  mapped: Mapped[]
  /** Mapped devices that join only later (`join()`). */
  late?: Mapped[]
}): Promise<{ gw: Gateway; mapped: TestMappedAdapter; url: string }> {
  const cfg = parseConfig({
    gateway: { ...gwLogin, dataDir: o.dataDir },
    broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
    http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
    northbound: { url: o.hubUrl, mode: 'gateway' },
    devices: [...o.natives, ...o.mapped],
    log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
  })
  let mapped: TestMappedAdapter | undefined
  // The adapter takes a moment to start, as a real one does (ChirpStack, serial ports): the hub link
  // is usually up before it is.
  const entry = testMappedAdapterEntry((ctx) => (mapped = new TestMappedAdapter(ctx, { devices: o.mapped, joined: o.mapped.filter((m) => !o.late?.includes(m)), startDelayMs: 300 })))
  const gw = new Gateway(cfg, { adapters: [entry] })
  await gw.start()
  return { gw, mapped: mapped!, url: `mqtt://127.0.0.1:${gw.adapter<BrokerAdapter>('broker')!.ports[0]}` }
}

async function api<T>(gw: Gateway, urlPath: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${gw.web.port}${urlPath}`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
  if (!res.ok) throw new Error(`GET ${urlPath}: ${res.status} ${await res.text()}`)
  return (await res.json()) as T
}

async function waitForHubSubscription(hub: HubBroker, filter: string, held: boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const subs = await hub.subscriptionsOf(GW_CLIENT_ID)
    if (subs.has(filter) === held) return
    if (Date.now() > deadline) {
      throw new Error(`the gateway ${held ? 'does not hold' : 'still holds'} ${filter} on the hub after ${timeoutMs} ms; holds ${JSON.stringify([...subs])}`)
    }
    await sleep(50)
  }
}

/** Did Mosquitto send the gateway anything on this topic? */
async function hubSentToGateway(hub: HubBroker, topic: string): Promise<boolean> {
  return (await hub.log()).split('\n').some((l) => l.includes(`Sending PUBLISH to ${GW_CLIENT_ID} `) && l.includes(`'${topic}'`))
}

async function until<T>(check: () => T | undefined | false, timeoutMs: number, what: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what()} (waited ${timeoutMs} ms)`)
    await sleep(20)
  }
}

const applyPayload = (c: Command): { desired: Record<string, unknown>; version: number } =>
  JSON.parse(c.payload.toString('utf8')) as { desired: Record<string, unknown>; version: number }

describe('tags and shadows through the gateway, hub reachable', () => {
  // Native devices (SDK over MQTT) and mapped ones (behind the test adapter), all children of the gateway.
  const tagA = native('tag-a')
  const tagB = native('tag-b')
  const fanBlue1 = native('fan-blue-1')
  const fanBlue2 = native('fan-blue-2')
  const fanGreen = native('fan-green')
  const shadowNative = native('shadow-n')
  const outageNative = native('outage-n')
  const persistentNative = native('persist-n')
  const natives = [tagA, tagB, fanBlue1, fanBlue2, fanGreen, shadowNative, outageNative, persistentNative]
  const mBlue = mappedDevice('m-blue', ['blue'])
  const mGreen = mappedDevice('m-green', ['green'])
  const mLate = mappedDevice('m-late')
  const mShadow = mappedDevice('m-shadow')
  const mStale = mappedDevice('m-stale')
  const mJoin = mappedDevice('m-join', ['amber'])
  const mAway = mappedDevice('m-away')
  const mEdit = mappedDevice('m-edit', ['violet'])
  const mappedDevices = [mBlue, mGreen, mLate, mShadow, mStale, mJoin, mAway, mEdit]

  let hub: HubBroker
  let sim: HubSim
  let dataDir: string
  let gw: Gateway
  let mapped: TestMappedAdapter
  let localUrl: string
  const devices: SdkDevice[] = []

  async function sdk(login: Login & { clientId?: string; clean?: boolean }): Promise<SdkDevice> {
    const d = await SdkDevice.connect(localUrl, login)
    devices.push(d)
    return d
  }

  /** Resolves once the gateway's link is up with its subscriptions in place (its status upload arrived after them). */
  async function linkReady(from: number): Promise<void> {
    await sim.waitFor(
      (u) => sim.uploads.indexOf(u) >= from && u.parsed.kind === 'update_status' && u.parsed.deviceId === gwLogin.deviceId,
      15_000,
      'the gateway status after connecting',
    )
  }

  async function start(): Promise<void> {
    const from = sim.uploads.length
    ;({ gw, mapped, url: localUrl } = await startGateway({ hubUrl: hub.url, dataDir, natives, mapped: mappedDevices, late: [mJoin] }))
    await linkReady(from)
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [...natives, ...mappedDevices] } })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'tags-shadows-'))
    await start()
  })

  afterEach(async () => {
    await Promise.allSettled(devices.splice(0).map((d) => d.close()))
  })

  afterAll(async () => {
    await gw?.stop()
    await sim?.stop()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it("holds the mapped devices' tag filters on the hub from the start", async () => {
    // Before any tag changed: only the registry's tags of mapped devices can have put these there.
    await waitForHubSubscription(hub, tagFilterOf(P, 'blue'), true, 3_000)
    await waitForHubSubscription(hub, tagFilterOf(P, 'green'), true, 3_000)
    const marker = await sim.tagCommand(P, 'green', 'ping', {})
    const cmd = await mapped.waitForDelivery((c) => c.requestId === marker, 10_000, 'a green tag command to m-green')
    expect(cmd.device).toEqual({ productId: P, deviceId: mGreen.deviceId })
  })

  it('takes up the tags of a mapped device that joins after the start', async () => {
    const amber = tagFilterOf(P, 'amber')
    expect(await hub.subscriptionsOf(GW_CLIENT_ID)).not.toContain(amber)
    mapped.join(mJoin)
    await waitForHubSubscription(hub, amber, true, 3_000)
    const requestId = await sim.tagCommand(P, 'amber', 'wake', { s: 1 })
    const cmd = await mapped.waitForDelivery((c) => c.requestId === requestId, 10_000, 'the amber tag command to m-join')
    expect(cmd).toMatchObject({ device: { productId: P, deviceId: mJoin.deviceId }, name: 'wake' })
  })

  it("a technician's tag edit on a mapped device (PATCH /api/devices) moves its tag subscription on the hub at once", async () => {
    const violet = tagFilterOf(P, 'violet')
    const indigo = tagFilterOf(P, 'indigo')
    await waitForHubSubscription(hub, violet, true, 3_000)
    const res = await fetch(`http://127.0.0.1:${gw.web.port}/api/devices/${P}/${mEdit.deviceId}`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ tags: ['indigo'] }),
    })
    expect(res.status).toBe(200)
    expect(await res.json()).toMatchObject({ device: { tags: ['indigo'], tagsVersion: 1 } })
    await waitForHubSubscription(hub, indigo, true)
    await waitForHubSubscription(hub, violet, false)
    const requestId = await sim.tagCommand(P, 'indigo', 'glow', {})
    const cmd = await mapped.waitForDelivery((c) => c.requestId === requestId, 10_000, 'the indigo tag command to m-edit')
    expect(cmd.device).toEqual({ productId: P, deviceId: mEdit.deviceId })
  })

  it("$set_tags from the hub changes a native device's tag subscriptions; the gateway mirrors them on the hub, reference-counted", async () => {
    const blue = tagFilterOf(P, 'blue-t')
    const red = tagFilterOf(P, 'red-t')
    const a = await sdk(tagA)
    const b = await sdk(tagB)

    // The business system gives tag-a two tags: the device subscribes, the gateway subscribes on the hub.
    await sim.setTags(P, tagA.deviceId, ['blue-t', 'red-t'])
    await a.until(() => a.tagsVersion === 1, 5_000, '$set_tags applied')
    expect(a.tags).toEqual(['blue-t', 'red-t'])
    await waitForHubSubscription(hub, blue, true)
    await waitForHubSubscription(hub, red, true)
    // The gateway's copy of the device's tags (what it answers `$tags` from when the hub is away).
    expect(gw.store.registry.get(tagA)).toMatchObject({ tags: ['blue-t', 'red-t'], tagsVersion: 1 })

    const first = await sim.tagCommand(P, 'blue-t', 'flash', { n: 1 })
    const got = await a.waitFor(isTagCmd(first), 10_000, 'tag command for blue-t')
    expect(got.topic).toBe(`tags/${P}/blue-t/cmd/flash/plain/${first}`)
    expect(jsonOf(got)).toEqual({ n: 1 })

    // tag-b takes blue-t too; then tag-a drops it. The hub subscription stays for tag-b.
    await sim.setTags(P, tagB.deviceId, ['blue-t'])
    await b.until(() => b.tagsVersion === 1, 5_000, '$set_tags applied on tag-b')
    await sim.setTags(P, tagA.deviceId, ['red-t'])
    await a.until(() => a.tagsVersion === 2, 5_000, 'second $set_tags applied')
    expect(a.tags).toEqual(['red-t'])
    const second = await sim.tagCommand(P, 'blue-t', 'flash', { n: 2 })
    const marker = await sim.tagCommand(P, 'red-t', 'marker', {})
    await b.waitFor(isTagCmd(second), 10_000, 'blue-t command on tag-b')
    await a.waitFor(isTagCmd(marker), 10_000, 'red-t marker on tag-a')
    expect(a.messages.filter(isTagCmd(second))).toEqual([])
    expect(await hub.subscriptionsOf(GW_CLIENT_ID)).toContain(blue)

    // The last local holder goes: the gateway unsubscribes blue-t on the hub, so a blue-t command
    // no longer even reaches the gateway.
    await b.close()
    await waitForHubSubscription(hub, blue, false)
    const third = await sim.tagCommand(P, 'blue-t', 'flash', { n: 3 })
    const marker2 = await sim.tagCommand(P, 'red-t', 'marker', {})
    await a.waitFor(isTagCmd(marker2), 10_000, 'second red-t marker on tag-a')
    expect(await hubSentToGateway(hub, `tags/${P}/blue-t/cmd/flash/plain/${third}`)).toBe(false)
    expect(await hubSentToGateway(hub, `tags/${P}/red-t/cmd/marker/plain/${marker2}`)).toBe(true)
    expect(await hub.subscriptionsOf(GW_CLIENT_ID)).toContain(red)
  })

  it('a tag command reaches exactly the children carrying the tag, native and mapped, once per RequestId', async () => {
    // Native devices learn their tags on connect: `$tags` goes to the hub, which answers `$set_tags`.
    sim.presetTags(P, fanBlue1.deviceId, ['blue'], 1)
    sim.presetTags(P, fanBlue2.deviceId, ['blue', 'green'], 1)
    sim.presetTags(P, fanGreen.deviceId, ['green'], 1)
    const b1 = await sdk(fanBlue1)
    const b2 = await sdk(fanBlue2)
    const g = await sdk(fanGreen)
    for (const d of [b1, b2, g]) await d.until(() => d.tagsVersion === 1, 10_000, `${d.deviceId} got its tags`)
    // A mapped device gets a tag from the hub: the gateway keeps it (the device has no SDK).
    await sim.setTags(P, mLate.deviceId, ['blue'])
    await until(() => gw.store.registry.get(mLate)?.tagsVersion === 1, 5_000, () => 'the gateway did not take m-late\'s $set_tags')
    await waitForHubSubscription(hub, tagFilterOf(P, 'blue'), true)
    await waitForHubSubscription(hub, tagFilterOf(P, 'green'), true)

    const requestId = await sim.tagCommand(P, 'blue', 'blink', { times: 3 })
    // The same RequestId again (the hub redelivers), then a different command as a marker.
    await sim.tagCommand(P, 'blue', 'blink', { times: 4 }, { requestId })
    const marker = await sim.tagCommand(P, 'blue', 'marker', {})
    for (const d of [b1, b2]) await d.waitFor(isTagCmd(marker), 10_000, `marker on ${d.deviceId}`)
    for (const d of [mBlue, mLate]) await mapped.waitForDelivery((c) => c.device.deviceId === d.deviceId && c.requestId === marker, 10_000, `marker to ${d.deviceId}`)
    const greenMarker = await sim.tagCommand(P, 'green', 'marker', {})
    await g.waitFor(isTagCmd(greenMarker), 10_000, 'green marker on fan-green')
    await mapped.waitForDelivery((c) => c.device.deviceId === mGreen.deviceId && c.requestId === greenMarker, 10_000, 'green marker to m-green')

    for (const d of [b1, b2]) {
      const copies = d.messages.filter(isTagCmd(requestId))
      expect(copies.map((m) => m.topic), d.deviceId).toEqual([`tags/${P}/blue/cmd/blink/plain/${requestId}`])
      expect(jsonOf(copies[0])).toEqual({ times: 3 })
    }
    expect(g.messages.filter((m) => m.levels[0] === 'tags' && m.levels[2] === 'blue')).toEqual([])
    for (const d of [mBlue, mLate]) {
      const copies = mapped.deliveredTo(d).filter((c) => c.requestId === requestId)
      expect(copies, d.deviceId).toHaveLength(1)
      expect(copies[0]).toMatchObject({ type: 'cmd', name: 'blink', encoding: 'plain', requestId })
      expect(JSON.parse(copies[0].payload.toString('utf8'))).toEqual({ times: 3 })
    }
    expect(mapped.deliveredTo(mGreen).filter((c) => c.requestId === requestId || c.requestId === marker)).toEqual([])
    for (const d of [mShadow, mStale]) expect(mapped.deliveredTo(d).filter((c) => c.name === 'blink')).toEqual([])
  })

  it('runs the full shadow exchange with a native device, mismatch paths included, ending equal to the hub', async () => {
    const d = shadowNative.deviceId
    const dev = await sdk(shadowNative)
    // On connect the SDK asked for `$shadow`; the hub's (empty) document came back through the gateway.
    await dev.waitFor(isCmd('$update_shadow'), 10_000, 'the answer to $shadow on connect')

    // Hub -> device: desired state, applied, `$shadow_updated`, `$shadow_reply`.
    expect(await sim.setDesired(P, d, { lights: 'off' }, 1)).toBe(true)
    await dev.until(() => dev.shadowVersion === 2, 10_000, 'desired applied and the reply adopted')
    expect(dev.state).toEqual({ lights: 'off' })
    expect(sim.shadowOf(P, d)).toMatchObject({ version: 2, state: { reported: { lights: 'off' } } })

    // Device -> hub: reported state.
    await dev.reportState({ temp: 20 })
    await dev.until(() => dev.shadowVersion === 3, 10_000, 'report accepted')

    // A report with a stale version: the hub does not merge it and sends `$update_shadow`; the
    // device keeps that version and reports again.
    let from = dev.messages.length
    await dev.reportState({ temp: 21 }, 1)
    const resent = await dev.waitFor(isCmd('$update_shadow'), 10_000, '$update_shadow after a stale report', from)
    expect(jsonOf(resent)).toMatchObject({ version: 3, state: { reported: { lights: 'off', temp: 20 } } })
    expect(dev.since(from, isCmd('$shadow_reply'))).toEqual([])
    expect(sim.shadowOf(P, d).state.reported).toEqual({ lights: 'off', temp: 20 })
    await dev.reportState({ temp: 21 })
    await dev.until(() => dev.shadowVersion === 4, 10_000, 'report with the adopted version accepted')

    // A business change whose version is not greater is refused and nothing reaches the device:
    // the next `$update_shadow` it gets is the one for the accepted change after it.
    from = dev.messages.length
    expect(await sim.setDesired(P, d, { lights: 'blink' }, 4)).toBe(false)
    expect(await sim.setDesired(P, d, { lights: 'blink' }, 2)).toBe(false)
    expect(await sim.setDesired(P, d, { lights: 'on' }, 5)).toBe(true)
    const next = await dev.waitFor(isCmd('$update_shadow'), 10_000, '$update_shadow for version 5', from)
    expect(jsonOf(next)).toMatchObject({ version: 5, state: { desired: { lights: 'on' } } })
    expect(dev.since(from).filter((m) => m.payload.includes('blink'))).toEqual([])
    await dev.until(() => dev.shadowVersion === 6, 10_000, 'second desired change applied')

    const hubShadow = sim.shadowOf(P, d)
    expect(stateAndVersion(hubShadow)).toEqual({ version: 6, state: { reported: { lights: 'on', temp: 21 } } })
    const { shadow } = await api<{ shadow: Shadow }>(gw, `/api/devices/${P}/${d}/shadow`)
    expect(stateAndVersion(shadow)).toEqual(stateAndVersion(hubShadow))
    expect(Object.keys(shadow.metadata.reported ?? {}).sort()).toEqual(Object.keys(hubShadow.metadata.reported ?? {}).sort())
    expect(dev.ignoredShadows).toBe(0)
  })

  it('plays the SDK for a mapped device: desired applied through the adapter, state reported, mismatches resolved, ending equal to the hub', async () => {
    const d = mShadow.deviceId
    const applied = (): { desired: Record<string, unknown>; version: number }[] => mapped.deliveredTo(mShadow, '$update_shadow').map(applyPayload)
    const hubVersion = (v: number) => (): boolean => sim.shadowOf(P, d).version === v && gw.core.shadows.get(mShadow).version === v

    // Hub -> mapped device: the adapter gets `$update_shadow` {desired, version}; the gateway answers
    // `$shadow_updated` for it; the hub moves desired into reported.
    expect(await sim.setDesired(P, d, { mode: 'eco' }, 1)).toBe(true)
    const cmd = await mapped.waitForDelivery((c) => c.device.deviceId === d && c.name === '$update_shadow', 10_000, '$update_shadow to the adapter')
    expect(cmd).toMatchObject({ type: 'cmd', encoding: 'plain' })
    expect(applyPayload(cmd)).toEqual({ desired: { mode: 'eco' }, version: 1 })
    const updated = await sim.waitFor((u) => u.parsed.deviceId === d && u.parsed.name === '$shadow_updated', 10_000, '$shadow_updated from the gateway')
    expect(JSON.parse(updated.payload.toString('utf8'))).toEqual({ state: { desired: null }, version: 1 })
    await until(hubVersion(2), 10_000, () => `versions: hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mShadow).version}`)
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { mode: 'eco' } })

    // Mapped device -> hub: its own state change, reported with the version the gateway holds.
    await mapped.reportState(mShadow, { battery: 90 })
    await until(hubVersion(3), 10_000, () => `after the report: hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mShadow).version}`)

    // Mismatch: desired arrives while the device is unreachable (it waits, queued); meanwhile the
    // device reports its own state, which moves the version on. When the device is back, the
    // gateway applies desired and answers with the version it was sent (now stale); the hub sends
    // `$update_shadow` again, the gateway adopts that version, applies it once more and answers.
    mapped.setReachable(false)
    expect(await sim.setDesired(P, d, { mode: 'boost' }, 4)).toBe(true)
    await until(() => gw.core.shadows.get(mShadow).version === 4, 10_000, () => 'the gateway did not take the desired change')
    await mapped.reportState(mShadow, { battery: 80 })
    await until(hubVersion(5), 10_000, () => `report while unreachable: hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mShadow).version}`)
    expect(applied()).toHaveLength(1)
    const stale = sim.uploads.length
    mapped.setReachable(true)
    await until(hubVersion(6), 10_000, () => `after coming back: hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mShadow).version}`)
    expect(applied()).toEqual([
      { desired: { mode: 'eco' }, version: 1 },
      { desired: { mode: 'boost' }, version: 4 },
      { desired: { mode: 'boost' }, version: 5 },
    ])
    const answers = sim.uploads.slice(stale).filter((u) => u.parsed.deviceId === d && u.parsed.name === '$shadow_updated')
    expect(answers.map((u) => (JSON.parse(u.payload.toString('utf8')) as { version: number }).version)).toEqual([4, 5])
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { mode: 'boost', battery: 80 } })

    // A document older than the copy arriving late (the hub's answer to an earlier stale upload)
    // changes nothing: the SDK ignores a lower version.
    await sim.command(P, d, '$update_shadow', { state: { desired: { mode: 'late' } }, metadata: {}, version: 3 }, { qos: 0 })

    // A business change whose version is not greater is refused: nothing reaches the adapter.
    expect(await sim.setDesired(P, d, { mode: 'off' }, 6)).toBe(false)
    expect(await sim.setDesired(P, d, { mode: 'off' }, 3)).toBe(false)
    expect(await sim.setDesired(P, d, { mode: 'auto' }, 7)).toBe(true)
    await until(hubVersion(8), 10_000, () => `last change: hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mShadow).version}`)
    expect(applied().map((a) => a.desired.mode)).toEqual(['eco', 'boost', 'boost', 'auto'])

    const hubShadow = sim.shadowOf(P, d)
    expect(stateAndVersion(hubShadow)).toEqual({ version: 8, state: { reported: { mode: 'auto', battery: 80 } } })
    const { shadow } = await api<{ shadow: Shadow }>(gw, `/api/devices/${P}/${d}/shadow`)
    expect(stateAndVersion(shadow)).toEqual(stateAndVersion(hubShadow))
  })

  it('a desired change and new tags made while the gateway was away reach a mapped device once the link is back', async () => {
    const d = mAway.deviceId
    await mapped.reportState(mAway, { temp: 18 })
    await until(() => sim.shadowOf(P, d).version === 1 && gw.core.shadows.get(mAway).version === 1, 10_000, () => 'first report not applied')

    // The gateway is away while the business system changes desired state and tags: the hub's
    // `$update_shadow` and `$set_tags` are QoS 0 and are lost (PROTOCOL.md "QoS").
    await gw.stop()
    expect(await sim.setDesired(P, d, { target: 22 }, 2)).toBe(true)
    await sim.setTags(P, d, ['violet'])
    await start()

    // The SDK asks `$tags` and `$shadow` on every connect; the gateway does so for its mapped devices.
    const cmd = await mapped.waitForDelivery((c) => c.device.deviceId === d && c.name === '$update_shadow', 10_000, 'the missed desired change')
    expect(applyPayload(cmd)).toEqual({ desired: { target: 22 }, version: 2 })
    await until(() => sim.shadowOf(P, d).version === 3 && gw.core.shadows.get(mAway).version === 3, 10_000,
      () => `hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mAway).version}`)
    expect(stateAndVersion(gw.core.shadows.get(mAway))).toEqual(stateAndVersion(sim.shadowOf(P, d)))
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { temp: 18, target: 22 } })
    await until(() => gw.store.registry.get(mAway)?.tagsVersion === 1, 10_000, () => 'the missed tags did not arrive')
    expect(gw.store.registry.get(mAway)?.tags).toEqual(['violet'])
    await waitForHubSubscription(hub, tagFilterOf(P, 'violet'), true)
    const requestId = await sim.tagCommand(P, 'violet', 'hello', {})
    await mapped.waitForDelivery((c) => c.device.deviceId === d && c.requestId === requestId, 10_000, 'a violet tag command')
  })

  it('a native device with a persistent session keeps its tag subscription on the hub while away and gets the tag command on return', async () => {
    const d = persistentNative.deviceId
    const dev = await sdk({ ...persistentNative, clientId: `${P}/${d}/fixed`, clean: false })
    await sim.setTags(P, d, ['teal'])
    await waitForHubSubscription(hub, tagFilterOf(P, 'teal'), true)
    await dev.close()
    await sleep(500)
    // Still held: the session is persistent, as it would be at the hub's own broker.
    expect((await hub.subscriptionsOf(GW_CLIENT_ID)).has(tagFilterOf(P, 'teal'))).toBe(true)
    const requestId = await sim.tagCommand(P, 'teal', 'wake', { n: 1 })
    for (const deadline = Date.now() + 10_000; !(await hubSentToGateway(hub, `tags/${P}/teal/cmd/wake/plain/${requestId}`)); await sleep(50)) {
      if (Date.now() > deadline) throw new Error('the tag command did not reach the gateway')
    }
    await dev.open()
    await until(() => dev.messages.some(isTagCmd(requestId)), 10_000, () => 'the device did not get the tag command queued for its session')
  })

  it('a native device that stays connected while the hub link is down gets what the hub pushed meanwhile', async () => {
    const dev = await sdk(outageNative)
    const d = outageNative.deviceId
    await dev.reportState({ on: false })
    await until(() => sim.shadowOf(P, d).version === 1 && dev.shadowVersion === 1, 10_000, () => `first report: hub ${sim.shadowOf(P, d).version}, device ${dev.shadowVersion}`)

    // The hub goes away long enough for the gateway's reconnect backoff to grow past a few seconds.
    // HubSim is back first (it retries every 500 ms) while the gateway is still waiting out its
    // (jittered) backoff; should the gateway win that race, the outage is simply repeated.
    let from = 0
    for (let attempt = 1; ; attempt++) {
      await hub.stop()
      await sleep(4_000)
      from = sim.uploads.length
      await hub.start()
      await until(() => sim.connected, 5_000, () => 'hub-sim did not reconnect')
      if (!gw.bridge.status().connected) break
      if (attempt === 3) throw new Error('the gateway reconnected before hub-sim three times: cannot stage the outage')
      await linkReady(from)
    }
    // The business system changes desired state now: the `$update_shadow` (QoS 0) never reaches the gateway.
    expect(await sim.setDesired(P, d, { on: true }, 5)).toBe(true)

    // Once the link is back the gateway asks `$shadow` for the device, the hub answers, the device applies.
    await linkReady(from)
    await until(() => dev.state.on === true, 15_000, () => `the device never got the desired change: ${JSON.stringify(dev.state)}`)
    await until(() => sim.shadowOf(P, d).version === 6, 10_000, () => `hub shadow version ${sim.shadowOf(P, d).version}`)
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { on: true } })
  })

  it("a mapped device's report that crosses a business change is refused; the gateway adopts the hub's version and the next report goes through", async () => {
    const d = mStale.deviceId
    await mapped.reportState(mStale, { temp: 18 })
    await until(() => sim.shadowOf(P, d).version === 1 && gw.core.shadows.get(mStale).version === 1, 10_000, () => 'first report not applied')

    // The hub takes the business change (version 2) before the device's report, which still carries 1.
    const from = sim.uploads.length
    const changed = sim.setDesired(P, d, { target: 23 }, 2)
    await mapped.reportState(mStale, { temp: 20 })
    expect(await changed).toBe(true)

    // The stale report is not merged; the hub answers `$update_shadow`; the gateway adopts version 2,
    // applies desired through the adapter and answers `$shadow_updated` with 2.
    await until(() => sim.shadowOf(P, d).version === 3 && gw.core.shadows.get(mStale).version === 3, 10_000,
      () => `hub ${sim.shadowOf(P, d).version}, gateway ${gw.core.shadows.get(mStale).version}`)
    const ups = sim.received((u) => sim.uploads.indexOf(u) >= from && u.parsed.deviceId === d && u.parsed.kind === 'upload_data')
    const sent = ups.map((u) => [u.parsed.name, (JSON.parse(u.payload.toString('utf8')) as { version: number }).version])
    expect(sent.slice(0, 2)).toEqual([
      ['$shadow_reported', 1],
      ['$shadow_updated', 2],
    ])
    expect(mapped.deliveredTo(mStale, '$update_shadow').map(applyPayload)[0]).toEqual({ desired: { target: 23 }, version: 2 })
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { temp: 18, target: 23 } })
    expect(stateAndVersion(gw.core.shadows.get(mStale))).toEqual(stateAndVersion(sim.shadowOf(P, d)))

    await mapped.reportState(mStale, { temp: 20 })
    await until(() => sim.shadowOf(P, d).version === 4 && gw.core.shadows.get(mStale).version === 4, 10_000, () => 'the second report was not applied')
    expect(sim.shadowOf(P, d).state).toEqual({ reported: { temp: 20, target: 23 } })
    expect(stateAndVersion(gw.core.shadows.get(mStale))).toEqual(stateAndVersion(sim.shadowOf(P, d)))
  })
})

// One story in three steps, in order: the gateway starts with its hub down, the hub comes (with a
// clock 5 s ahead of ours), the hub goes again.
describe('hub unreachable: time, tags, shadow and m2m from the gateway', () => {
  const HUB_AHEAD_MS = 5_000
  const clockDev = native('clock')
  const peer = native('peer')
  const natives = [clockDev, peer]
  let hub: HubBroker
  let sim: HubSim | undefined
  let dataDir: string
  let gw: Gateway
  let localUrl: string
  let dev: SdkDevice
  const extra: SdkDevice[] = []

  /** A device `$ntp`: the device-computed time against the gateway's hub-corrected clock at the same moment. */
  async function ntpCheck(d: SdkDevice): Promise<{ deviceNow: number; gatewayNow: number; iothubRecv: number }> {
    const r = await d.ntp()
    // Carry the device's computed time forward from when it received the answer to now.
    const deviceNow = r.now + (Date.now() - r.deviceRecv)
    return { deviceNow, gatewayNow: gw.core.clock.now(), iothubRecv: r.iothubRecv }
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: natives } })
    // Started once to fix its port and files, then stopped: the gateway starts without a hub.
    await hub.start()
    await hub.stop()
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'hub-down-'))
    ;({ gw, url: localUrl } = await startGateway({ hubUrl: hub.url, dataDir, natives, mapped: [] }))
    dev = await SdkDevice.connect(localUrl, clockDev)
  })

  afterAll(async () => {
    await Promise.allSettled([dev?.close(), ...extra.map((d) => d.close())])
    await gw?.stop()
    await sim?.stop()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('before the hub was ever reached: $ntp is answered on the gateway clock with offset 0', async () => {
    expect(gw.bridge.status().connected).toBe(false)
    const { deviceNow, gatewayNow } = await ntpCheck(dev)
    expect(gw.core.clock.offsetMs).toBe(0)
    expect(gw.core.clock.lastSample).toBeUndefined()
    expect(Math.abs(deviceNow - gatewayNow)).toBeLessThan(100)
    expect(Math.abs(deviceNow - Date.now())).toBeLessThan(100)
    const health = await api<{ clock: { offsetMs: number; measuredAt: number | null } }>(gw, '/api/health')
    expect(health.clock).toEqual({ offsetMs: 0, measuredAt: null })
  })

  it("once the hub was reached: the offset is the hub's clock, and $ntp stays local with the hub's time in it", async () => {
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD, now: () => Date.now() + HUB_AHEAD_MS })
    await sim.start()
    await until(() => gw.core.clock.lastSample, 20_000, () => 'the gateway never measured its clock against the hub')
    expect(Math.abs(gw.core.clock.offsetMs - HUB_AHEAD_MS)).toBeLessThan(100)
    const metrics = await (await fetch(`http://127.0.0.1:${gw.web.port}/metrics`)).text()
    const gauge = Number(/^iothub_edge_clock_offset_ms (\S+)$/m.exec(metrics)?.[1])
    expect(Math.abs(gauge - HUB_AHEAD_MS)).toBeLessThan(100)

    const { deviceNow, gatewayNow, iothubRecv } = await ntpCheck(dev)
    expect(Math.abs(deviceNow - gatewayNow)).toBeLessThan(100)
    expect(Math.abs(deviceNow - (Date.now() + HUB_AHEAD_MS))).toBeLessThan(100)
    expect(Math.abs(iothubRecv - (Date.now() + HUB_AHEAD_MS))).toBeLessThan(100)
    // Answered by the gateway: the device's `$ntp` never reached the hub.
    expect(sim.received((u) => u.parsed.deviceId === clockDev.deviceId && u.parsed.name === '$ntp')).toEqual([])

    // While the hub is up, the device gets tags and a shadow: the gateway keeps copies.
    await sim.setTags(P, clockDev.deviceId, ['night'])
    await dev.until(() => dev.tagsVersion === 1, 10_000, '$set_tags applied')
    expect(await sim.setDesired(P, clockDev.deviceId, { lights: 'dim' }, 1)).toBe(true)
    await dev.until(() => dev.shadowVersion === 2, 10_000, 'desired applied and the reply adopted')
    await dev.reportState({ temp: 19 })
    await dev.until(() => dev.shadowVersion === 3, 10_000, 'report accepted')
  })

  it('hub gone: $ntp keeps the measured offset, $tags and $shadow come from the copies, m2m between children is delivered', async () => {
    const s = sim!
    const hubShadow = s.shadowOf(P, clockDev.deviceId)
    await s.stop()
    await hub.stop()
    await until(() => !gw.bridge.status().connected, 10_000, () => 'the gateway still thinks the hub is connected')

    const { deviceNow, gatewayNow } = await ntpCheck(dev)
    expect(Math.abs(deviceNow - gatewayNow)).toBeLessThan(100)
    expect(Math.abs(deviceNow - (Date.now() + HUB_AHEAD_MS))).toBeLessThan(100)

    // The device is reset and reconnects: its `$tags` (version 0) and `$shadow` are answered by the gateway.
    await dev.close()
    dev.forget()
    const from = dev.messages.length
    await dev.open()
    const setTags = await dev.waitFor(isCmd('$set_tags'), 5_000, '$set_tags from the gateway', from)
    expect(setTags.qos).toBe(0)
    expect(jsonOf(setTags)).toEqual({ tags: ['night'], tags_version: 1 })
    await dev.until(() => dev.tagsVersion === 1, 5_000, 'tags applied')
    const doc = await dev.waitFor(isCmd('$update_shadow'), 5_000, '$update_shadow from the gateway', from)
    expect(doc.qos).toBe(0)
    expect(stateAndVersion(jsonOf(doc) as unknown as Shadow)).toEqual(stateAndVersion(hubShadow))
    expect(hubShadow).toMatchObject({ version: 3, state: { reported: { lights: 'dim', temp: 19 } } })
    expect(dev.shadowVersion).toBe(3)

    // A device that has the current tags_version gets no `$set_tags` (the `$ntp` answer after it is the marker).
    const again = dev.messages.length
    await dev.get('$tags', { tags_version: 1 })
    await dev.ntp()
    expect(dev.since(again, isCmd('$set_tags'))).toEqual([])

    // m2m between two children of the gateway: delivered locally, once.
    const other = await SdkDevice.connect(localUrl, peer)
    extra.push(other)
    const messageId = await dev.m2m(peer.deviceId, 'are you there?')
    const m = await other.waitFor((x) => x.levels[0] === 'm2m', 5_000, 'm2m from clock')
    expect(m.topic).toBe(`m2m/${P}/${peer.deviceId}/${clockDev.deviceId}/${messageId}`)
    expect(m.payload.toString()).toBe('are you there?')
    await other.ntp() // marker: anything else for it would have arrived by now
    expect(other.messages.filter((x) => x.levels[0] === 'm2m')).toHaveLength(1)
  })
})
