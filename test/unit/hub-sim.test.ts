// The hub simulator must behave as PROTOCOL.md's hub, or every gateway scenario that uses it as the
// cloud would prove the gateway against the wrong peer. Here it runs on Mosquitto with MQTT.js
// devices connected straight to it, no gateway: `$ntp` arithmetic, `$tags` only when the hub's
// version is newer, `$shadow` with the whole document, the shadow version rules both ways with
// their mismatch paths, refused desired changes, duplicate MessageIds, and an RPC round trip.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { newMessageId } from '../helpers/device.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { CommandDevice, type ReceivedMessage } from '../helpers/command-device.js'
import { HubSim, type Shadow } from '../../src/tools/hub-sim.js'

const P = 'lamp'
const logins = ['d1', 'd2', 'd3', 'd4', 'd5', 'd6'].map((d) => ({ productId: P, deviceId: d, secret: `secret-${d}` }))
const [ntpDev, tagsDev, shadowDev, refuseDev, dupDev, rpcDev] = logins

// The hub's clock runs an hour ahead of ours and advances 7 ms every time it is read, so that the
// receive time is strictly before the send time and a swap of the two would show.
const HUB_AHEAD_MS = 3_600_000
let ticks = 0
const hubNow = (): number => Date.now() + HUB_AHEAD_MS + 7 * ticks++

const isInternal = (name: string) => (m: ReceivedMessage) => m.levels[0] === 'cmd' && m.levels[3] === name
const json = (m: ReceivedMessage): Record<string, unknown> => JSON.parse(m.payload.toString('utf8')) as Record<string, unknown>

describe('HubSim as PROTOCOL.md hub (Mosquitto, devices connected directly)', () => {
  let hub: HubBroker
  let sim: HubSim
  const devices: CommandDevice[] = []

  async function device(login: (typeof logins)[number]): Promise<CommandDevice> {
    const d = await CommandDevice.connect(hub.url, login, { subscribeOwnTopics: true })
    devices.push(d)
    return d
  }

  /**
   * Prove that nothing matching `unwanted` was sent in answer to what the device published so far:
   * a `$shadow` request is always answered (QoS 0, as `$set_tags` and `$update_shadow` are), and the
   * simulator answers in arrival order, so once that answer is here anything earlier would be too.
   * Returns the marker answer.
   */
  async function nothingBeforeMarker(dev: CommandDevice, from: number, unwanted: (m: ReceivedMessage) => boolean): Promise<ReceivedMessage> {
    const markerFrom = dev.messages.length
    await dev.get('$shadow')
    const marker = await dev.waitFor(isInternal('$update_shadow'), 5_000, '$update_shadow answering the marker $shadow request', markerFrom)
    const before = dev.messages.slice(from, dev.messages.indexOf(marker)).filter(unwanted)
    expect(before.map((m) => `${m.topic} ${m.payload.toString()}`)).toEqual([])
    return marker
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: logins })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD, now: hubNow })
    await sim.start()
  })

  afterEach(async () => {
    await Promise.allSettled(devices.splice(0).map((d) => d.close()))
  })

  afterAll(async () => {
    await sim?.stop()
    await hub?.close()
  })

  it('answers $ntp with $set_ntp: device_time echoed, iothub_recv before iothub_send, on its own clock', async () => {
    const dev = await device(ntpDev)
    const deviceTime = Date.now()
    await dev.get('$ntp', { device_time: deviceTime })
    const answer = await dev.waitFor(isInternal('$set_ntp'), 5_000, '$set_ntp')
    const deviceRecv = Date.now()
    // cmd/{p}/{d}/$set_ntp/plain/{RequestId}, QoS 1 like every command.
    expect(answer.levels).toHaveLength(6)
    expect(answer.levels.slice(0, 5)).toEqual(['cmd', P, ntpDev.deviceId, '$set_ntp', 'plain'])
    expect(answer.levels[5]).toMatch(/^[0-9a-f]{24}$/)
    expect(answer.qos).toBe(1)
    const body = json(answer)
    expect(body.device_time).toBe(deviceTime)
    const recv = body.iothub_recv as number
    const send = body.iothub_send as number
    expect(recv).toBeLessThan(send)
    // The hub's times are on the hub's clock, an hour ahead of ours.
    expect(recv).toBeGreaterThanOrEqual(deviceTime + HUB_AHEAD_MS)
    // PROTOCOL.md: now = (iothub_recv + iothub_send + device_recv - device_time) / 2, i.e. our clock
    // plus the hub's lead, up to the round trip (loopback) and the fake clock's ticks.
    const computed = (recv + send + deviceRecv - deviceTime) / 2
    expect(Math.abs(computed - (deviceRecv + HUB_AHEAD_MS))).toBeLessThan(1_000)
  })

  it('answers $tags only when its tags_version is greater than the device has (empty payload = version 0)', async () => {
    const dev = await device(tagsDev)
    const setTags = isInternal('$set_tags')

    // The hub has no tags for this device yet (version 0): an empty request gets no answer.
    let from = dev.messages.length
    await dev.get('$tags', '')
    await nothingBeforeMarker(dev, from, setTags)

    sim.presetTags(P, tagsDev.deviceId, ['floor3', 'lobby'], 3)
    from = dev.messages.length
    await dev.get('$tags', { tags_version: 3 })
    await dev.get('$tags', { tags_version: 7 })
    await nothingBeforeMarker(dev, from, setTags)

    from = dev.messages.length
    await dev.get('$tags', { tags_version: 2 })
    const answer = await dev.waitFor(setTags, 5_000, '$set_tags for version 2', from)
    expect(json(answer)).toEqual({ tags: ['floor3', 'lobby'], tags_version: 3 })
    expect(answer.qos).toBe(0)

    from = dev.messages.length
    await dev.get('$tags', '')
    expect(json(await dev.waitFor(setTags, 5_000, '$set_tags for an empty request', from))).toEqual({ tags: ['floor3', 'lobby'], tags_version: 3 })

    // A business system changing tags bumps the version and pushes $set_tags.
    from = dev.messages.length
    await sim.setTags(P, tagsDev.deviceId, ['lobby'])
    expect(json(await dev.waitFor(setTags, 5_000, 'pushed $set_tags', from))).toEqual({ tags: ['lobby'], tags_version: 4 })
    expect(sim.tagsOf(P, tagsDev.deviceId)).toEqual({ tags: ['lobby'], tagsVersion: 4 })
  })

  it('runs the shadow exchange of PROTOCOL.md both ways, with both mismatch paths', async () => {
    const dev = await device(shadowDev)
    const d = shadowDev.deviceId
    const updateShadow = isInternal('$update_shadow')
    const shadowReply = isInternal('$shadow_reply')
    const reportedOf = (s: Shadow): unknown => s.state.reported

    // Device -> hub: $shadow_reported with the matching version (0) is merged, version 1, $shadow_reply.
    let from = dev.messages.length
    await dev.upload('$shadow_reported', { state: { reported: { lights: 'on', fan: 'on' } }, version: 0 })
    let reply = await dev.waitFor(shadowReply, 5_000, '$shadow_reply to the first report', from)
    expect(reply.qos).toBe(0)
    expect(json(reply)).toEqual({ status: 'success', timestamp: expect.any(Number), version: 1 })
    expect(reportedOf(sim.shadowOf(P, d))).toEqual({ lights: 'on', fan: 'on' })

    // A business system sets desired (version 2 > 1): the whole document is pushed, QoS 0.
    from = dev.messages.length
    expect(await sim.setDesired(P, d, { lights: 'off', fan: null }, 2)).toBe(true)
    const pushed = await dev.waitFor(updateShadow, 5_000, '$update_shadow after setDesired', from)
    expect(pushed.qos).toBe(0)
    expect(json(pushed)).toEqual(sim.shadowOf(P, d))
    expect(json(pushed)).toMatchObject({
      version: 2,
      state: { reported: { lights: 'on', fan: 'on' }, desired: { lights: 'off', fan: null } },
      metadata: { desired: { lights: { timestamp: expect.any(Number) }, fan: { timestamp: expect.any(Number) } } },
    })

    // $shadow request: answered with the whole document.
    from = dev.messages.length
    await dev.get('$shadow')
    expect(json(await dev.waitFor(updateShadow, 5_000, '$update_shadow answering $shadow', from))).toEqual(sim.shadowOf(P, d))

    // $shadow_updated with a stale version: not applied, the document is sent again.
    from = dev.messages.length
    await dev.upload('$shadow_updated', { state: { desired: null }, version: 1 })
    const resent = await dev.waitFor(updateShadow, 5_000, '$update_shadow after a version mismatch', from)
    expect(json(resent)).toMatchObject({ version: 2, state: { desired: { lights: 'off', fan: null } } })
    expect(dev.since(from, shadowReply)).toEqual([])

    // $shadow_updated with the matching version: desired goes into reported (null deletes), desired
    // is dropped, version+1, $shadow_reply.
    from = dev.messages.length
    await dev.upload('$shadow_updated', { state: { desired: null }, version: 2 })
    reply = await dev.waitFor(shadowReply, 5_000, '$shadow_reply after $shadow_updated', from)
    expect(json(reply)).toEqual({ status: 'success', timestamp: expect.any(Number), version: 3 })
    let shadow = sim.shadowOf(P, d)
    expect(shadow.version).toBe(3)
    expect(shadow.state).toEqual({ reported: { lights: 'off' } })
    expect(shadow.metadata.desired).toBeUndefined()
    expect(Object.keys(shadow.metadata.reported ?? {})).toEqual(['lights'])
    expect(dev.since(from, updateShadow)).toEqual([])

    // $shadow_reported with a stale version: not merged, $update_shadow instead of a reply.
    from = dev.messages.length
    await dev.upload('$shadow_reported', { state: { reported: { lights: 'on' } }, version: 2 })
    expect(json(await dev.waitFor(updateShadow, 5_000, '$update_shadow after a stale report', from))).toEqual(sim.shadowOf(P, d))
    expect(dev.since(from, shadowReply)).toEqual([])
    expect(reportedOf(sim.shadowOf(P, d))).toEqual({ lights: 'off' })

    // $shadow_reported with the matching version: merged, a null deletes, version+1.
    from = dev.messages.length
    await dev.upload('$shadow_reported', { state: { reported: { lights: null, temp: 21 } }, version: 3 })
    reply = await dev.waitFor(shadowReply, 5_000, '$shadow_reply after a report', from)
    expect(json(reply)).toMatchObject({ status: 'success', version: 4 })
    shadow = sim.shadowOf(P, d)
    expect(shadow.version).toBe(4)
    expect(shadow.state.reported).toEqual({ temp: 21 })
    expect(Object.keys(shadow.metadata.reported ?? {})).toEqual(['temp'])
  })

  it('refuses a desired change whose version is not greater than the current one, and sends nothing', async () => {
    const dev = await device(refuseDev)
    const d = refuseDev.deviceId
    expect(await sim.setDesired(P, d, { mode: 'eco' }, 5)).toBe(true)
    await dev.waitFor(isInternal('$update_shadow'), 5_000, 'the accepted change')
    const before = sim.shadowOf(P, d)

    const from = dev.messages.length
    expect(await sim.setDesired(P, d, { mode: 'boost' }, 5)).toBe(false)
    expect(await sim.setDesired(P, d, { mode: 'boost' }, 4)).toBe(false)
    expect(sim.shadowOf(P, d)).toEqual(before)
    // The first $update_shadow after the refusals is the answer to the marker request, unchanged.
    const marker = await nothingBeforeMarker(dev, from, (m) => m.payload.includes('boost'))
    expect(json(marker)).toEqual(before)
    expect(dev.since(from, isInternal('$update_shadow'))).toHaveLength(1)
  })

  it('flags a repeated MessageId as a duplicate and acts on it once', async () => {
    const dev = await device(dupDev)
    const d = dupDev.deviceId
    const messageId = newMessageId()
    const topic = await dev.upload('temperature', { c: 20 }, messageId)
    await dev.publish(topic, JSON.stringify({ c: 20 }))
    const other = await dev.upload('temperature', { c: 21 })
    await sim.waitFor((u) => u.topic === other, 5_000, 'the upload after the duplicate')
    const copies = sim.uploads.filter((u) => u.topic === topic)
    expect(copies.map((u) => u.duplicate)).toEqual([false, true])
    expect(sim.received((u) => u.topic === topic)).toHaveLength(1)

    // A repeated $shadow_reported is applied once: a second application would mismatch (the
    // version moved on) and bring an $update_shadow, and the version would not be 1.
    const from = dev.messages.length
    const reportId = newMessageId()
    const report = await dev.upload('$shadow_reported', { state: { reported: { on: true } }, version: 0 }, reportId)
    await dev.publish(report, JSON.stringify({ state: { reported: { on: true } }, version: 0 }))
    await dev.waitFor(isInternal('$shadow_reply'), 5_000, '$shadow_reply', from)
    await nothingBeforeMarker(dev, from, isInternal('$update_shadow'))
    expect(dev.since(from, isInternal('$shadow_reply'))).toHaveLength(1)
    expect(sim.shadowOf(P, d).version).toBe(1)
  })

  it('sends an RPC and resolves with the rpc_resp; times out when nobody answers', async () => {
    const dev = await CommandDevice.connect(hub.url, rpcDev, { subscribeOwnTopics: true, rpcReply: (m) => `pong ${m.payload.toString()}` })
    devices.push(dev)
    const reply = await sim.rpc(P, rpcDev.deviceId, 'ping', 'x', 5_000)
    expect(reply.parsed).toMatchObject({ kind: 'rpc_resp', productId: P, deviceId: rpcDev.deviceId, name: 'ping' })
    expect(reply.payload.toString()).toBe('pong x')
    const rpc = dev.messages.find((m) => m.levels[0] === 'rpc')!
    expect(rpc.levels.slice(0, 5)).toEqual(['rpc', P, rpcDev.deviceId, 'ping', 'plain'])
    expect(rpc.levels[5]).toBe(reply.parsed.requestId)

    await expect(sim.rpc(P, 'nobody', 'ping', 'x', 300)).rejects.toThrow(/timed out after 300 ms/)
  })
})
