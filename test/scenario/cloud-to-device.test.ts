// Cloud to device through the whole gateway process (issue 3): the hub is Mosquitto with the hub's
// ACL plus the hub simulator publishing as a business system would; the devices are MQTT.js clients
// that behave as the device SDK (no subscriptions of their own to cmd/rpc/m2m: the gateway's broker
// makes them server-side; replies on cmd_resp/rpc_resp). Commands reach the device on exactly the
// hub's topic, expired ones never, each RequestId once even across restarts; a device that is away
// gets its commands in order when it is back, RPCs excepted; the hub's PUBACK means the command is
// stored; m2m between children stays local; a technician's commands and their replies stay local.
import { open, type FileHandle } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { CommandDevice, type ReceivedMessage, type CommandDeviceOptions } from '../helpers/command-device.js'
import { HubSim, newRequestId } from '../../src/tools/hub-sim.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
// The gateway's client id at the hub (northbound.clientId default), as Mosquitto's log names it.
const GW_CLIENT_ID = `${gw.productId}/${gw.deviceId}/edge`
const P = 'lamp'
const child = (deviceId: string): { productId: string; deviceId: string; secret: string } => ({ productId: P, deviceId, secret: `secret-${deviceId}` })
const rt = child('rt')
const expiring = child('expiring')
const dup = child('dup')
const sleeper = child('sleeper')
const crash = child('crash')
const rpcDev = child('rpc')
const rpcAway = child('rpc-away')
const m2mA = child('m2m-a')
const m2mB = child('m2m-b')
const tech = child('tech')
const techAway = child('tech-away')
const children = [rt, expiring, dup, sleeper, crash, rpcDev, rpcAway, m2mA, m2mB, tech, techAway]
// Known to the hub only: the reference for the RPC latency the gateway adds.
const direct = child('direct')

interface CommandView {
  type: string
  name: string
  requestId: string
  origin: string
  state: string
  payload: string
  reply: string | null
  expiresAt: number | null
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const cmdsNamed = (name: string) => (m: ReceivedMessage) => m.levels[0] === 'cmd' && m.levels[3] === name
const requestIdOf = (m: ReceivedMessage): string => m.levels[5]

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

describe('cloud to device through the gateway process', () => {
  let hub: HubBroker
  let sim: HubSim
  let gateway: GatewayProcess
  const devices: CommandDevice[] = []

  /**
   * Connect a child and wait until the hub has its `$connection` event: what a business system
   * knows about a child's presence (an RPC sent before that may find the device not there yet).
   */
  async function connect(login: ReturnType<typeof child>, opts: CommandDeviceOptions = {}): Promise<CommandDevice> {
    const d = await CommandDevice.connect(gateway.externalUrl, login, opts)
    devices.push(d)
    const clientId = d.client.options.clientId!
    await sim.waitFor(
      (u) => u.topic.startsWith(`upload_data/${login.productId}/${login.deviceId}/$connection/`) && u.payload.includes(`"client_id":"${clientId}"`),
      10_000,
      `$connection of ${clientId}`,
    )
    return d
  }

  async function commandsOf(login: ReturnType<typeof child>): Promise<CommandView[]> {
    const res = await gateway.api<{ commands: CommandView[] }>('GET', `/api/devices/${login.productId}/${login.deviceId}/commands`)
    expect(res.status).toBe(200)
    return res.body.commands
  }

  /** Poll the technician's command list until `check` holds; the error shows the last list. */
  async function waitForCommands(login: ReturnType<typeof child>, check: (c: CommandView[]) => boolean, what: string, timeoutMs = 10_000): Promise<CommandView[]> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const list = await commandsOf(login)
      if (check(list)) return list
      if (Date.now() > deadline) throw gateway.failure(`${what}: not seen in GET .../commands within ${timeoutMs} ms; last: ${JSON.stringify(list)}`)
      await sleep(50)
    }
  }

  /** An uplink from `dev` that the hub receives after anything `dev` sent before it, if that went north. */
  async function northMarker(dev: CommandDevice): Promise<void> {
    const topic = `update_status/${dev.productId}/${dev.deviceId}/${newMessageId()}`
    await dev.publish(topic, '{"marker":true}')
    await sim.waitFor((u) => u.topic === topic, 10_000, `marker ${topic}`)
  }

  /** A command the device gets after every command for it the gateway accepted earlier (per-device order). */
  async function deliveredMarker(dev: CommandDevice, from = 0): Promise<void> {
    const requestId = await sim.command(P, dev.deviceId, 'marker', '')
    await dev.waitFor((m) => m.levels[0] === 'cmd' && requestIdOf(m) === requestId, 10_000, 'marker command', from)
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [direct], gateway: { ...gw, children } })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: children, log: { level: 'info' } })
    await gateway.start()
    // The gateway's status report follows its command subscriptions on the same connection.
    await sim.waitFor((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === gw.deviceId, 15_000, 'gateway status')
  })

  afterEach(async ({ task }) => {
    await Promise.allSettled(devices.splice(0).map((d) => d.close()))
    if (task.result?.state === 'fail') console.log(gateway.failure(`output after "${task.name}" failed`).message)
  })

  afterAll(async () => {
    await sim?.stop()
    await gateway?.close()
    await hub?.close()
  })

  it('relays a hub command on exactly its topic and the cmd_resp back; base64 stays base64, ExpiresAt stays on the topic', async () => {
    const dev = await connect(rt, { cmdReply: (m) => `done ${m.payload.toString()}` })
    const payload = { delay_s: 3 }
    const requestId = await sim.command(P, rt.deviceId, 'reboot', payload)
    const got = await dev.waitFor(`cmd/${P}/${rt.deviceId}/reboot/plain/${requestId}`, 10_000, 'reboot command')
    expect(got.payload.toString()).toBe(JSON.stringify(payload))
    expect(got.qos).toBe(1)
    const reply = await sim.waitFor((u) => u.parsed.kind === 'cmd_resp' && u.parsed.requestId === requestId, 10_000, 'cmd_resp')
    expect(reply.topic).toMatch(new RegExp(`^cmd_resp/${P}/${rt.deviceId}/reboot/${requestId}/[0-9a-f]{24}$`))
    expect(reply.payload.toString()).toBe(`done ${JSON.stringify(payload)}`)

    // The local broker looks exactly like the hub to a native device (PROTOCOL.md): it gets the
    // hub's topic (`base64`) and the hub's bytes; decoding them is the SDK's job, as with the hub.
    const binary = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 13) % 256))
    const b64Id = await sim.command(P, rt.deviceId, 'write_blob', binary, { encoding: 'base64' })
    const b64 = await dev.waitFor(`cmd/${P}/${rt.deviceId}/write_blob/base64/${b64Id}`, 10_000, 'base64 command')
    expect(b64.payload.toString('latin1')).toBe(binary.toString('base64'))
    expect(Buffer.from(b64.payload.toString(), 'base64').equals(binary)).toBe(true)

    const expiresAt = nowSeconds() + 600
    const expId = await sim.command(P, rt.deviceId, 'dim', '{"to":10}', { expiresAt })
    await dev.waitFor(`cmd/${P}/${rt.deviceId}/dim/plain/${expId}/${expiresAt}`, 10_000, 'command with ExpiresAt')

    const list = await waitForCommands(rt, (l) => l.find((c) => c.requestId === requestId)?.state === 'replied', 'reboot replied')
    expect(list.find((c) => c.requestId === requestId)).toMatchObject({ origin: 'hub', name: 'reboot', reply: `done ${JSON.stringify(payload)}` })
  })

  it('never delivers an expired command, nor one whose ExpiresAt passes while the device is away', async () => {
    // Connected device, ExpiresAt already in the past.
    let dev = await connect(rt)
    const stale = await sim.command(P, rt.deviceId, 'reboot', '', { expiresAt: nowSeconds() - 60 })
    await deliveredMarker(dev)
    expect(dev.messages.filter((m) => m.topic.includes(stale))).toEqual([])

    // Away device: queued with a short ExpiresAt, which passes before it comes back.
    const expiresAt = nowSeconds() + 2
    const lapsing = await sim.command(P, expiring.deviceId, 'reboot', '', { expiresAt })
    await waitForCommands(expiring, (l) => l.some((c) => c.requestId === lapsing && c.state === 'queued'), 'the command queued')
    await sleep(Math.max(0, expiresAt * 1000 + 1_100 - Date.now()))
    // The technician sees it expired while the device is still away.
    await waitForCommands(expiring, (l) => l.find((c) => c.requestId === lapsing)?.state === 'expired', 'the command expired', 3_000)
    dev = await connect(expiring)
    await deliveredMarker(dev)
    expect(dev.messages.filter((m) => m.topic.includes(lapsing))).toEqual([])
    expect((await commandsOf(expiring)).find((c) => c.requestId === lapsing)?.state).toBe('expired')
  })

  it('delivers a RequestId once, also when the hub repeats it after a gateway restart', async () => {
    let dev = await connect(dup)
    const requestId = newRequestId()
    const received: ReceivedMessage[] = []
    const copies = (): ReceivedMessage[] => received.filter((m) => requestIdOf(m) === requestId && m.levels[3] === 'set_level')

    await sim.command(P, dup.deviceId, 'set_level', '{"level":1}', { requestId })
    await dev.waitFor((m) => requestIdOf(m) === requestId, 10_000, 'the command')
    await sim.command(P, dup.deviceId, 'set_level', '{"level":2}', { requestId })
    await deliveredMarker(dev)
    received.push(...dev.messages)
    expect(copies().map((m) => m.payload.toString())).toEqual(['{"level":1}'])

    await gateway.restart()
    dev = await connect(dup)
    await sim.command(P, dup.deviceId, 'set_level', '{"level":3}', { requestId })
    await deliveredMarker(dev)
    received.push(...dev.messages)
    expect(copies().map((m) => m.payload.toString())).toEqual(['{"level":1}'])
  })

  it('keeps commands for an away device and delivers them in order when it connects, across a restart and a kill -9', async () => {
    const sent: string[] = []
    const send = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) sent.push(await sim.command(P, sleeper.deviceId, 'step', `{"i":${sent.length}}`))
    }
    const allQueued = (l: CommandView[]): boolean => sent.every((id) => l.some((c) => c.requestId === id && c.state === 'queued'))
    await send(3)
    await waitForCommands(sleeper, allQueued, 'first 3 queued')
    await gateway.restart()
    await send(2)
    await waitForCommands(sleeper, allQueued, '5 queued after the restart')
    await gateway.kill9()
    await gateway.start()
    await send(2)
    await waitForCommands(sleeper, allQueued, '7 queued after the kill -9')

    const dev = await connect(sleeper)
    const got = await dev.waitForCount(cmdsNamed('step'), sent.length, 10_000, 'queued commands')
    await deliveredMarker(dev)
    expect(dev.commands('step').map(requestIdOf)).toEqual(sent)
    expect(dev.commands('step').map((m) => m.payload.toString())).toEqual(sent.map((_, i) => `{"i":${i}}`))
    expect(got.every((m) => m.topic.startsWith(`cmd/${P}/${sleeper.deviceId}/step/plain/`))).toBe(true)
    const list = await waitForCommands(sleeper, (l) => sent.every((id) => l.some((c) => c.requestId === id && c.state === 'delivered')), 'all delivered')
    expect(list.filter((c) => c.name === 'step')).toHaveLength(sent.length)
  })

  it('PUBACKs a hub command only once it is stored: commands the hub got a PUBACK for survive a kill -9', async () => {
    // The hub's own publish callback is Mosquitto's PUBACK, not the gateway's; the gateway's PUBACK
    // to the hub shows in Mosquitto's log. The gateway is killed the moment Mosquitto has the k-th.
    const log: FileHandle = await open(hub.logPath, 'r')
    let offset = (await log.stat()).size
    let text = ''
    const readMore = async (): Promise<void> => {
      const buf = Buffer.alloc(1 << 20)
      for (;;) {
        const { bytesRead } = await log.read(buf, 0, buf.length, offset)
        if (bytesRead === 0) return
        offset += bytesRead
        text += buf.subarray(0, bytesRead).toString('utf8')
      }
    }
    // RequestIds of this test's commands that Mosquitto had the gateway's PUBACK for (log so far).
    const sendLine = new RegExp(`Sending PUBLISH to ${GW_CLIENT_ID} \\(d\\d, q1, r0, m(\\d+), 'cmd/${P}/${crash.deviceId}/step/plain/([^/']+)'`)
    const pubackLine = new RegExp(`Received PUBACK from ${GW_CLIENT_ID} \\(Mid: (\\d+)`)
    const ackedByGateway = (): Set<string> => {
      const requestIdOfMid = new Map<string, string>()
      const acked = new Set<string>()
      for (const line of text.split('\n')) {
        const s = sendLine.exec(line)
        if (s) requestIdOfMid.set(s[1], s[2])
        const a = pubackLine.exec(line)
        // Packet ids are reused once acknowledged: a PUBACK belongs to the latest PUBLISH with its id.
        if (a && requestIdOfMid.has(a[1])) acked.add(requestIdOfMid.get(a[1])!)
        if (a) requestIdOfMid.delete(a[1])
      }
      return acked
    }
    const total = 40
    const killAfter = 3 + Math.floor(Math.random() * 25)
    console.log(`PUBACK-durability scenario: kill -9 after the gateway's PUBACK #${killAfter} of ${total}`)
    try {
      const sent: string[] = []
      const publishing = (async () => {
        for (let i = 0; i < total; i++) sent.push(await sim.command(P, crash.deviceId, 'step', `{"i":${i}}`))
      })()
      const deadline = Date.now() + 15_000
      while (ackedByGateway().size < killAfter) {
        if (Date.now() > deadline) throw new Error(`Mosquitto logged fewer than ${killAfter} PUBACKs from the gateway in 15 s`)
        await readMore()
        await sleep(1)
      }
      await gateway.kill9()
      await publishing
      await sleep(200)
      await readMore()
      const acked = ackedByGateway()
      console.log(`PUBACK-durability scenario: ${acked.size} of ${total} commands acknowledged by the gateway before the kill`)
      expect(acked.size).toBeGreaterThanOrEqual(killAfter)

      await gateway.start()
      const dev = await connect(crash)
      await dev.waitForCount(cmdsNamed('step'), total, 15_000, 'commands after the kill')
      await deliveredMarker(dev)
      const got = dev.commands('step').map(requestIdOf)
      expect([...acked].filter((id) => !got.includes(id))).toEqual([])
      // Those the gateway had not acknowledged came again from the hub's session: all, once, in order.
      expect(got).toEqual(sent)
    } finally {
      await log.close()
      if (!gateway.running) await gateway.start()
    }
  })

  it('answers an RPC within the hub 5 s; an RPC to an away device is not queued', async () => {
    const dev = await connect(rpcDev, { rpcReply: (m) => JSON.stringify({ echo: JSON.parse(m.payload.toString()) as unknown }) })
    const reply = await sim.rpc(P, rpcDev.deviceId, 'read_temp', { unit: 'C' }).catch(async (err: Error) => {
      throw new Error(`${err.message}; the gateway's view: ${JSON.stringify(await commandsOf(rpcDev))}; device got ${JSON.stringify(dev.messages.map((m) => m.topic))}`)
    })
    expect(reply.topic).toMatch(new RegExp(`^rpc_resp/${P}/${rpcDev.deviceId}/read_temp/${reply.parsed.requestId}/[0-9a-f]{24}$`))
    expect(JSON.parse(reply.payload.toString())).toEqual({ echo: { unit: 'C' } })
    const rpc = dev.messages.find((m) => m.levels[0] === 'rpc')!
    expect(rpc.topic).toBe(`rpc/${P}/${rpcDev.deviceId}/read_temp/plain/${reply.parsed.requestId}`)

    const requestId = newRequestId()
    await expect(sim.rpc(P, rpcAway.deviceId, 'read_temp', {}, 1_500, { requestId })).rejects.toThrow(/timed out/)
    await waitForCommands(rpcAway, (l) => l.some((c) => c.requestId === requestId && c.state === 'dropped'), 'the RPC dropped')
    const away = await connect(rpcAway)
    await deliveredMarker(away)
    expect(away.messages.filter((m) => m.levels[0] === 'rpc')).toEqual([])
  })

  it('reports the RPC latency the gateway adds (p50/p99, no assertion on speed)', async () => {
    const viaGateway = await connect(rpcDev)
    const straight = await CommandDevice.connect(hub.url, direct, { subscribeOwnTopics: true })
    devices.push(straight)
    // Hub and devices share this process's clock: each RPC splits into down (hub publish -> device
    // has it) and up (device has it -> hub has the rpc_resp).
    const measure = async (dev: CommandDevice, n: number): Promise<{ total: number[]; down: number[]; up: number[] }> => {
      const total: number[] = []
      const down: number[] = []
      for (let i = 0; i < n; i++) {
        const t0 = performance.now()
        const reply = await sim.rpc(P, dev.deviceId, 'ping', String(i))
        const t1 = performance.now()
        const got = dev.messages.find((m) => m.levels[0] === 'rpc' && m.levels[5] === reply.parsed.requestId)!
        total.push(t1 - t0)
        down.push(got.at - t0)
      }
      const up = total.map((t, i) => t - down[i])
      const sort = (a: number[]): number[] => [...a].sort((x, y) => x - y)
      return { total: sort(total), down: sort(down), up: sort(up) }
    }
    await measure(viaGateway, 20)
    await measure(straight, 20)
    const n = 200
    const gwMs = await measure(viaGateway, n)
    const directMs = await measure(straight, n)
    const f = (a: number[]): string => `p50 ${percentile(a, 50).toFixed(2)}  p99 ${percentile(a, 99).toFixed(2)}`
    console.log(
      `RPC round trip over ${n} sequential RPCs (hub-sim -> Mosquitto -> device -> rpc_resp back), ms:\n` +
        `  direct to Mosquitto: ${f(directMs.total)}   (down ${f(directMs.down)}; up ${f(directMs.up)})\n` +
        `  through the gateway: ${f(gwMs.total)}   (down ${f(gwMs.down)}; up ${f(gwMs.up)})\n` +
        `  added by the gateway: p50 ${(percentile(gwMs.total, 50) - percentile(directMs.total, 50)).toFixed(2)}  ` +
        `p99 ${(percentile(gwMs.total, 99) - percentile(directMs.total, 99)).toFixed(2)}`,
    )
    expect(viaGateway.messages.filter((m) => m.levels[0] === 'rpc')).toHaveLength(n + 20)
    expect(straight.messages.filter((m) => m.levels[0] === 'rpc')).toHaveLength(n + 20)
  })

  it('m2m: between two children delivered locally, once, never north; from the hub delivered; to a non-child sent north', async () => {
    const a = await connect(m2mA)
    const b = await connect(m2mB)
    const id = newMessageId()
    const topic = `m2m/${P}/${m2mB.deviceId}/${m2mA.deviceId}/${id}`
    await a.publish(topic, 'hello b')
    const got = await b.waitFor(topic, 5_000, 'm2m from a')
    expect(got.payload.toString()).toBe('hello b')
    expect(got.qos).toBe(1)
    // The marker travels north after the m2m would have (same priority class, same device).
    await northMarker(a)
    expect(sim.uploads.filter((u) => u.topic.includes(id))).toEqual([])
    const second = `m2m/${P}/${m2mB.deviceId}/${m2mA.deviceId}/${newMessageId()}`
    await a.publish(second, 'again')
    await b.waitFor(second, 5_000, 'second m2m from a')
    expect(b.messages.filter((m) => m.topic === topic)).toHaveLength(1)
    expect(a.messages).toEqual([])

    const fromHub = newMessageId()
    await sim.m2m(P, m2mB.deviceId, 'elsewhere', 'from afar', fromHub)
    const far = await b.waitFor(`m2m/${P}/${m2mB.deviceId}/elsewhere/${fromHub}`, 10_000, 'm2m from the hub')
    expect(far.payload.toString()).toBe('from afar')

    const out = `m2m/${P}/elsewhere/${m2mA.deviceId}/${newMessageId()}`
    await a.publish(out, 'to a device behind the hub')
    const north = await sim.waitFor((u) => u.topic === out, 10_000, 'm2m to a non-child')
    expect(north.payload.toString()).toBe('to a device behind the hub')
    await deliveredMarker(b)
    expect(b.messages.filter((m) => m.topic === out)).toEqual([])
  })

  it("technician API: a command reaches the device and its reply stays local; rpc returns the reply; $ names 400; RPC to an away device 409", async () => {
    const dev = await connect(tech, { cmdReply: () => 'blinked', rpcReply: (m) => `read ${m.payload.toString()}` })
    const base = `/api/devices/${P}/${tech.deviceId}/commands`
    const posted = await gateway.api('POST', base, { name: 'blink', payload: { n: 3 } })
    expect(posted.status).toBe(202)
    const requestId = posted.body.requestId as string
    expect(requestId).toMatch(/^[A-Za-z0-9_-]{1,64}$/)
    const got = await dev.waitFor(`cmd/${P}/${tech.deviceId}/blink/plain/${requestId}`, 10_000, 'technician command')
    expect(JSON.parse(got.payload.toString())).toEqual({ n: 3 })
    const list = await waitForCommands(tech, (l) => l.find((c) => c.requestId === requestId)?.state === 'replied', 'blink replied')
    expect(list.find((c) => c.requestId === requestId)).toMatchObject({ origin: 'local', reply: 'blinked', type: 'cmd' })

    const rpc = await gateway.api('POST', base, { name: 'read', payload: { reg: 7 }, rpc: true })
    expect(rpc.status).toBe(200)
    expect(rpc.body).toMatchObject({ state: 'replied', reply: 'read {"reg":7}' })
    expect(dev.messages.find((m) => m.levels[0] === 'rpc')?.topic).toBe(`rpc/${P}/${tech.deviceId}/read/plain/${rpc.body.requestId as string}`)

    // Replies to the gateway's own commands never reach the hub.
    await northMarker(dev)
    expect(sim.uploads.filter((u) => u.parsed.requestId === requestId || u.parsed.requestId === rpc.body.requestId)).toEqual([])

    for (const name of ['$set_tags', '$ota_upgrade']) {
      const refused = await gateway.api('POST', base, { name, payload: {} })
      expect(refused.status, name).toBe(400)
    }
    const away = await gateway.api('POST', `/api/devices/${P}/${techAway.deviceId}/commands`, { name: 'read', rpc: true })
    expect(away.status).toBe(409)
    await deliveredMarker(dev)
    expect(dev.messages.filter((m) => m.levels[3]?.startsWith('$'))).toEqual([])
  })
})
