// Modbus RTU slaves on an RS-485 bus become hub devices (issue 9). Real peers only: a socat pty
// pair is the cable, Debian's pymodbus RTU server (zero_mode: wire address 0 is register 0, as on a
// real meter) is the bus with two slaves, Mosquitto with the hub's ACL is the cloud hub, and the
// gateway runs in this process with its real broker, SQLite and HTTP API. What is checked is what
// the hub receives and what the slave was written.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ConfigError, parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { HubBroker, type HubRecorder, type RecordedMessage } from '../helpers/hub-broker.js'
import { ModbusSlave, PtyPair, serialTempDir, type SlaveSpec, until, watchMonitor } from '../helpers/serial-peers.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const API_TOKEN = 'serial-modbus-test-token'
const meter = { productId: 'meters', deviceId: 'm-001' }
const pump = { productId: 'meters', deviceId: 'pump-7' }
// The registry's entries (mapped devices never log in; the registry holds their tags and shadow).
const registered = [meter, pump].map((d) => ({ ...d, secret: `${d.deviceId}-secret` }))

/** Two 16-bit words of a 32-bit value, high word first. */
function words(kind: 'float32' | 'int32' | 'uint32', v: number): [number, number] {
  const b = Buffer.alloc(4)
  if (kind === 'float32') b.writeFloatBE(v)
  else if (kind === 'int32') b.writeInt32BE(v)
  else b.writeUInt32BE(v)
  return [b.readUInt16BE(0), b.readUInt16BE(2)]
}

const [vHi, vLo] = words('float32', 230.5)
const [cHi, cLo] = words('float32', 1.25)
const [eHi, eLo] = words('int32', -123456)
const [tHi, tLo] = words('uint32', 70000)

// Unit 1: an energy meter's map; unit 2: a pump controller with one register.
const SLAVE: SlaveSpec = {
  units: {
    1: {
      ir: { 0: vHi, 1: vLo, 2: cLo, 3: cHi },
      hr: { 0: eHi, 1: eLo, 2: tLo, 3: tHi, 4: 0xfffb, 10: 200 },
      co: { 0: 0 },
      di: { 0: 1 },
    },
    2: { hr: { 0: 77 } },
  },
}

const REGISTERS = [
  { name: 'voltage', table: 'input', address: 0, type: 'float32', wordOrder: 'big', unit: 'V' },
  { name: 'current', table: 'input', address: 2, type: 'float32', wordOrder: 'little', unit: 'A' },
  { name: 'energy', table: 'holding', address: 0, type: 'int32', wordOrder: 'big', scale: 0.01, unit: 'kWh' },
  { name: 'runtime', table: 'holding', address: 2, type: 'uint32', wordOrder: 'little', unit: 's' },
  { name: 'temp', table: 'holding', address: 4, type: 'int16', scale: 0.1, offset: 1 },
  { name: 'setpoint', table: 'holding', address: 10, type: 'uint16', scale: 0.1, writable: true },
  // Beyond what the slave has: reads of it get exception 2, writes too.
  { name: 'far', table: 'holding', address: 150, type: 'uint16', writable: true },
  { name: 'relay', table: 'coil', address: 0, writable: true },
  { name: 'door', table: 'discrete', address: 0 },
]

const EXPECTED = { voltage: 230.5, current: 1.25, energy: -1234.56, runtime: 70000, temp: 0.5, setpoint: 20, relay: false, door: true }

const json = (m: RecordedMessage): Record<string, unknown> => JSON.parse(m.payload.toString('utf8')) as Record<string, unknown>
const levels = (m: RecordedMessage): string[] => m.topic.split('/')

describe('the serial adapter config', () => {
  const port = { name: 'line1', path: '/dev/ttyUSB0', protocol: 'modbus-rtu', devices: [{ unitId: 1, ...meter, registers: [{ name: 'v', table: 'input', address: 0 }] }] }
  it('fills the defaults of the issue (9600 8N1, 500 ms, 2 retries, 5 s polls)', () => {
    const cfg = parseConfig({ serial: { ports: [port] } }) as unknown as { serial: { ports: Record<string, unknown>[] } }
    expect(cfg.serial.ports[0]).toMatchObject({ baudRate: 9600, dataBits: 8, parity: 'none', stopBits: 1, timeoutMs: 500, retries: 2 })
    expect(cfg.serial.ports[0]!.devices).toMatchObject([{ pollIntervalMs: 5000, registers: [{ wordOrder: 'big', scale: 1, offset: 0, writable: false }] }])
  })

  it('refuses two ports on one path, bad register maps and commands on read-only registers, naming the key', () => {
    const bad = {
      ...port,
      devices: [
        {
          unitId: 1,
          ...meter,
          registers: [
            { name: 'v', table: 'input', address: 0, writable: true },
            { name: 'c', table: 'coil', address: 0, type: 'float32' },
          ],
          commands: { set_v: { register: 'v' }, set_x: { register: 'x' } },
        },
      ],
    }
    try {
      parseConfig({ serial: { ports: [bad, { ...port, name: 'line2', devices: [{ ...port.devices[0], deviceId: 'm-002' }] }] } })
      expect.unreachable('the config must be refused')
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      const problems = (err as ConfigError).problems
      expect(problems).toContain('serial.ports[1].path: /dev/ttyUSB0 is claimed by serial.ports[0] too (a port has one owner)')
      expect(problems).toContain('serial.ports[0].devices[0].registers[0].writable: input is read-only in Modbus')
      expect(problems).toContain('serial.ports[0].devices[0].registers[1].type: float32 does not fit table coil (coils and discrete inputs are bool, registers are not)')
      expect(problems).toContain('serial.ports[0].devices[0].commands.set_x.register: no register named x')
    }
  })
})

describe('Modbus RTU slaves on a serial bus, through the gateway to the hub', () => {
  let hub: HubBroker
  let rec: HubRecorder
  let tmp: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let slave: ModbusSlave
  let dataDir: string
  let gw: Gateway
  const api = async (urlPath: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`http://127.0.0.1:${gw.web.port}${urlPath}`, { ...init, headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': 'application/json', ...init.headers } })

  /** The next upload from `device` with DataType `dataType` that arrives after the recorder's message `from`. */
  const nextUpload = (device: { productId: string; deviceId: string }, dataType: string, from: number, what: string, pred: (b: Record<string, unknown>) => boolean = () => true): Promise<RecordedMessage> =>
    rec.waitFor(
      (m) => {
        const l = levels(m)
        return rec.messages.indexOf(m) >= from && l[0] === 'upload_data' && l[1] === device.productId && l[2] === device.deviceId && l[3] === dataType && pred(json(m))
      },
      // Generous: a loaded machine takes seconds to start a Python Modbus slave after a replug.
      30_000,
      what,
    )
  const connection = (device: { deviceId: string }, connected: boolean, from: number): Promise<RecordedMessage> =>
    nextUpload({ productId: 'meters', ...device }, '$connection', from, `$connection ${connected ? 'connected' : 'disconnected'} for ${device.deviceId}`, (b) => b.connected === connected)
  const cmdResp = (requestId: string): Promise<RecordedMessage> =>
    rec.waitFor((m) => levels(m)[0] === 'cmd_resp' && levels(m)[4] === requestId, 15_000, `cmd_resp for ${requestId}`)

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [meter, pump] } })
    await hub.start()
    rec = await hub.subscribeAll('#', { clientId: 'serial-modbus-recorder' })
    tmp = await serialTempDir('serial-modbus-')
    pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    await pair.start()
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), SLAVE)
    await slave.start()
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'serial-modbus-data-'))
    const cfg = parseConfig({
      gateway: { ...gwLogin, dataDir },
      broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
      http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
      northbound: { url: hub.url, mode: 'gateway' },
      devices: registered,
      log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
      serial: {
        ports: [
          {
            name: 'line1',
            path: pair.gateway,
            baudRate: 19200,
            protocol: 'modbus-rtu',
            timeoutMs: 1000,
            retries: 1,
            awayAfterFailedPolls: 2,
            reopenMinMs: 100,
            reopenMaxMs: 400,
            devices: [
              {
                unitId: 1,
                productId: meter.productId,
                deviceId: meter.deviceId,
                pollIntervalMs: 300,
                dataType: 'energy',
                registers: REGISTERS,
                commands: { set_setpoint: { register: 'setpoint' }, set_relay: { register: 'relay' }, set_far: { register: 'far' } },
                shadow: { desired: ['setpoint', 'relay'], reported: ['setpoint', 'relay'] },
              },
              {
                unitId: 2,
                productId: pump.productId,
                deviceId: pump.deviceId,
                pollIntervalMs: 300,
                dataType: 'pump',
                registers: [
                  { name: 'speed', table: 'holding', address: 0, writable: true },
                  { name: 'mode', table: 'holding', address: 1 },
                ],
                commands: { set_speed: { register: 'speed' } },
                reportByException: { deadband: 5, heartbeatMs: 2500 },
              },
            ],
          },
        ],
      },
    })
    gw = new Gateway(cfg)
    await gw.start()
  })

  afterAll(async () => {
    await gw?.stop()
    await slave?.stop()
    await pair?.stop().catch(() => undefined)
    await rec?.close?.()
    await hub?.close()
    await tmp?.dispose()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('polls every table and type (int32/uint32/float32 in both word orders, scale and offset) into one upload_data per poll', async () => {
    const up = await nextUpload(meter, 'energy', 0, 'a poll of the meter')
    expect(json(up)).toEqual(EXPECTED)
    const pumpUp = await nextUpload(pump, 'pump', 0, 'a poll of the pump')
    expect(json(pumpUp)).toEqual({ speed: 77, mode: 0 })
    await connection(meter, true, 0)
  })

  it('reports the shadow\'s reported registers on the device\'s behalf', async () => {
    const r = await nextUpload(meter, '$shadow_reported', 0, 'the reported registers')
    expect(json(r)).toMatchObject({ state: { reported: { setpoint: 20, relay: false } } })
  })

  it('writes a register from a hub command (fc 6, raw = value / scale) and answers ok once the slave confirmed', async () => {
    const from = rec.messages.length
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_setpoint/plain/req-sp-1`, '{"value": 21.5}')
    const resp = await cmdResp('req-sp-1')
    expect(json(resp)).toEqual({ status: 'ok' })
    expect(slave.writes).toContainEqual({ write: 'hr', unit: 1, address: 10, values: [215] })
    // The next polls read the new value back.
    await nextUpload(meter, 'energy', from, 'a poll with the new setpoint', (b) => b.setpoint === 21.5)
  })

  it('writes a coil from a hub command (fc 5)', async () => {
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_relay/plain/req-relay-1`, '{"value": true}')
    expect(json(await cmdResp('req-relay-1'))).toEqual({ status: 'ok' })
    expect(slave.writes).toContainEqual({ write: 'co', unit: 1, address: 0, values: [1] })
  })

  it('answers failed with the Modbus exception code when the slave refuses a write (illegal data address)', async () => {
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_far/plain/req-far-1`, '{"value": 1}')
    expect(json(await cmdResp('req-far-1'))).toEqual({ status: 'failed', reason: 'modbus exception: illegal data address', code: 2 })
  })

  it('answers failed, without writing, for a bad payload or an unknown command', async () => {
    const before = slave.writes.length
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_setpoint/plain/req-bad-1`, '{"level": 3}')
    expect(json(await cmdResp('req-bad-1'))).toMatchObject({ status: 'failed', code: 'bad_payload' })
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_setpoint/plain/req-bad-2`, '{"value": 99999}')
    expect(json(await cmdResp('req-bad-2'))).toMatchObject({ status: 'failed', code: 'bad_value' })
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/reboot/plain/req-bad-3`, '{}')
    expect(json(await cmdResp('req-bad-3'))).toMatchObject({ status: 'failed', code: 'unknown_command' })
    expect(slave.writes.length).toBe(before)
  })

  it('applies shadow desired state to writable registers and confirms with $shadow_updated after the slave did', async () => {
    const from = rec.messages.length
    const doc = { state: { desired: { setpoint: 19, relay: false } }, metadata: {}, version: 4, timestamp: Math.floor(Date.now() / 1000) }
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/$update_shadow/plain/shadow-req-1`, JSON.stringify(doc), 0)
    const updated = await nextUpload(meter, '$shadow_updated', from, '$shadow_updated')
    expect(json(updated)).toEqual({ state: { desired: null }, version: 4 })
    expect(slave.writes).toContainEqual({ write: 'hr', unit: 1, address: 10, values: [190] })
    expect(slave.writes).toContainEqual({ write: 'co', unit: 1, address: 0, values: [0] })
    await nextUpload(meter, '$shadow_reported', from, 'the new setpoint reported', (b) => (b.state as { reported: Record<string, unknown> }).reported.setpoint === 19)
  })

  it('reports by exception: only values that moved beyond the deadband, and every value each heartbeat', async () => {
    const pumpUploads = (from: number): Record<string, unknown>[] =>
      rec.messages.slice(from).filter((m) => m.topic.startsWith(`upload_data/${pump.productId}/${pump.deviceId}/pump/`)).map(json)
    // Within the deadband (77 -> 80): not sent as a change; the heartbeats still carry it.
    let from = rec.messages.length
    await hub.publishAsHub(`cmd/${pump.productId}/${pump.deviceId}/set_speed/plain/req-speed-1`, '{"value": 80}')
    expect(json(await cmdResp('req-speed-1'))).toEqual({ status: 'ok' })
    await nextUpload(pump, 'pump', from, 'a heartbeat with the new speed', (b) => b.speed === 80)
    expect(pumpUploads(from).every((b) => 'mode' in b)).toBe(true)
    // Right after a heartbeat, a change beyond the deadband goes up alone, at once.
    from = rec.messages.length
    await hub.publishAsHub(`cmd/${pump.productId}/${pump.deviceId}/set_speed/plain/req-speed-2`, '{"value": 90}')
    expect(json(await cmdResp('req-speed-2'))).toEqual({ status: 'ok' })
    const change = await nextUpload(pump, 'pump', from, 'the change beyond the deadband', (b) => b.speed === 90)
    expect(json(change)).toEqual({ speed: 90 })
    await nextUpload(pump, 'pump', from, 'the next heartbeat', (b) => b.speed === 90 && b.mode === 0)
  })

  it('shows the bus in the ports route: state, counters, and the last problem with what to do', async () => {
    type Port = { name: string; open: boolean; state: string; framing: string; lastActivityAt: number; problem: { message: string; hint: string }; counters: Record<string, number>; devices: { deviceId: string; reachable: boolean; counters: Record<string, number> }[] }
    const port = ((await (await api('/api/adapters/serial/ports')).json()) as { ports: Port[] }).ports[0]!
    expect(port).toMatchObject({ name: 'line1', open: true, state: 'open', framing: '8N1' })
    expect(port.counters.bytesIn).toBeGreaterThan(0)
    expect(port.counters.bytesOut).toBeGreaterThan(0)
    expect(port.counters.framesOut).toBeGreaterThan(0)
    expect(port.counters.framesIn).toBeGreaterThan(0)
    expect(port.counters.exceptions).toBeGreaterThan(0)
    expect(Date.now() - port.lastActivityAt).toBeLessThan(60_000)
    // The `far` register, refused on every poll, is the port's latest problem.
    expect(port.problem.message).toBe('unit 1 answered exception 2 (illegal data address)')
    expect(port.problem.hint).toMatch(/register map/)
    const m = port.devices.find((d) => d.deviceId === meter.deviceId)!
    expect(m.reachable).toBe(true)
    expect(m.counters.polls).toBeGreaterThan(0)
    expect(m.counters.exceptions).toBeGreaterThan(0)
    const metrics = await (await fetch(`http://127.0.0.1:${gw.web.port}/metrics`)).text()
    expect(metrics).toMatch(/iothub_edge_serial_modbus_polls_total\{port="line1",device="meters\/m-001"\} [1-9]/)
    expect(metrics).toMatch(/iothub_edge_serial_port_open\{port="line1"\} 1/)
  })

  it('shows the requests and answers crossing the line in the live monitor, as hex', async () => {
    const abort = new AbortController()
    const res = await api('/api/adapters/serial/ports/line1/monitor', { headers: { accept: 'text/event-stream' }, signal: abort.signal })
    expect(res.headers.get('content-type')).toBe('text/event-stream')
    const seen = watchMonitor(res)
    // The meter's poll reads input registers 0-3 (voltage, current): unit 1, function 4, 8 bytes back.
    const answer = `010408${[vHi, vLo, cLo, cHi].map((w) => w.toString(16).padStart(4, '0')).join('')}`
    await until(() => seen.events.some((e) => e.event === 'line' && e.data.dir === 'rx' && e.data.hex.startsWith(answer)), 10_000, () => `the monitor showed ${JSON.stringify(seen.events.slice(-6))}`)
    const rx = seen.events.find((e) => e.data.dir === 'rx' && e.data.hex.startsWith(answer))!.data
    expect(rx.hex).toHaveLength(answer.length + 4) // the answer and its CRC, one frame
    expect(rx.text).toHaveLength(answer.length / 2 + 2)
    expect(seen.events.some((e) => e.data.dir === 'tx' && /^010400000004[0-9a-f]{4}$/.test(e.data.hex))).toBe(true)
    abort.abort()
    await seen.done
  })

  it('reads registers once for commissioning, through the bus queue, and says what went wrong', async () => {
    const read = (body: unknown, port = 'line1'): Promise<Response> => api(`/api/adapters/serial/ports/${port}/modbus/read`, { method: 'POST', body: JSON.stringify(body) })
    const ok = await read({ unit: 1, table: 'input', address: 0, count: 2 })
    expect(ok.status).toBe(200)
    expect(await ok.json()).toMatchObject({ values: [vHi, vLo], unit: 1, table: 'input', functionCode: 4 })
    expect(await (await read({ unit: 1, table: 'discrete', address: 0, count: 2 })).json()).toMatchObject({ values: [true, false] })
    expect(await (await read({ unit: 2, table: 'holding', address: 0 })).json()).toMatchObject({ values: [expect.any(Number)] })
    // Beyond the slave's 100 registers: the exception, by name.
    const refused = await read({ unit: 1, table: 'holding', address: 120, count: 5 })
    expect(refused.status).toBe(502)
    expect(await refused.json()).toMatchObject({ error: 'modbus_exception', exception: { code: 2, name: 'illegal data address' }, message: expect.stringMatching(/^unit 1 answered exception 2 \(illegal data address\)/) })
    // No unit 9 on the bus.
    const silent = await read({ unit: 9, table: 'holding', address: 0 })
    expect(silent.status).toBe(504)
    expect(await silent.json()).toMatchObject({ error: 'timeout', message: expect.stringMatching(/^unit 9 did not answer within 1000 ms \(2 tries\)/) })
    // Bad input: refused before anything goes on the bus, naming the key.
    const bad = async (body: unknown, key: RegExp): Promise<void> => {
      const r = await read(body)
      expect(r.status).toBe(400)
      const b = (await r.json()) as { error: string; message: string }
      expect(b.error).toBe('bad_request')
      expect(b.message).toMatch(key)
    }
    await bad({ unit: 0, table: 'holding', address: 0 }, /^unit must be/)
    await bad({ unit: 1, table: 'eeprom', address: 0 }, /^table must be one of holding, input, coil, discrete/)
    await bad({ unit: 1, table: 'holding', address: -1 }, /^address must be/)
    await bad({ unit: 1, table: 'holding', address: 0, count: 126 }, /^count must be at most 125 for table holding/)
    await bad({ unit: 1, table: 'coil', address: 0, count: 2001 }, /^count must be/)
    await bad({ unit: 1, table: 'holding', address: 65535, count: 2 }, /^address \+ count must be at most 65536/)
    await bad({ unit: 1, table: 'holding' }, /^address is required/)
    await bad({ unitId: 1, table: 'holding', address: 0 }, /^unit is required/)
    await bad({ unit: 1, table: 'holding', address: 0, port: 'line1' }, /^body must be an object with only unit, table, address and count/)
    const unknown = await read({ unit: 1, table: 'holding', address: 0 }, 'nope')
    expect(unknown.status).toBe(404)
  })

  it('keeps the poll schedule while a technician reads: one read waits its turn, the polls go on', async () => {
    type View = { ports: { devices: { deviceId: string; counters: { polls: number; failedPolls: number } }[] }[] }
    const polls = async (): Promise<number> => ((await (await api('/api/adapters/serial/ports')).json()) as View).ports[0]!.devices.find((x) => x.deviceId === meter.deviceId)!.counters.polls
    const from = rec.messages.length
    const before = await polls()
    // A page that sends three reads at once: one is queued on the bus, the others are told to wait.
    const answers = await Promise.all([0, 1, 2].map(() => api('/api/adapters/serial/ports/line1/modbus/read', { method: 'POST', body: JSON.stringify({ unit: 1, table: 'input', address: 0, count: 4 }) })))
    const statuses = answers.map((r) => r.status).sort()
    expect(statuses[0]).toBe(200)
    expect(statuses.filter((s) => s === 429)).toHaveLength(2)
    for (let i = 0; i < 5; i++) {
      const r = await api('/api/adapters/serial/ports/line1/modbus/read', { method: 'POST', body: JSON.stringify({ unit: 1, table: 'holding', address: 0, count: 2 }) })
      expect(await r.json()).toMatchObject({ values: [eHi, eLo] })
    }
    // The meter is still polled and its readings still reach the hub.
    await until(async () => (await polls()) >= before + 2, 10_000, 'the meter was not polled while reads ran')
    const up = await nextUpload(meter, 'energy', from, 'a poll after the reads')
    expect(json(up)).toMatchObject({ voltage: 230.5, energy: -1234.56 })
  })

  it('keeps polling while the hub is down, and every reading reaches the hub once it is back', async () => {
    type View = { ports: { devices: { deviceId: string; counters: { polls: number; failedPolls: number } }[] }[] }
    const okPolls = async (): Promise<number> => {
      const d = ((await (await api('/api/adapters/serial/ports')).json()) as View).ports[0]!.devices.find((x) => x.deviceId === meter.deviceId)!
      return d.counters.polls - d.counters.failedPolls
    }
    await hub.stop()
    const atStop = await okPolls()
    await until(async () => (await okPolls()) >= atStop + 3, 10_000, 'no polls while the hub is down')
    // Stop the readings (the slave goes), so the number of readings made is known exactly.
    await slave.stop()
    await until(
      async () => !((await (await api('/api/adapters/serial/ports')).json()) as { ports: { devices: { reachable: boolean }[] }[] }).ports[0]!.devices[0]!.reachable,
      10_000,
      'the meter still counts as reachable',
    )
    const made = await okPolls()
    await hub.start()
    const isReading = (m: RecordedMessage): boolean => m.topic.startsWith(`upload_data/${meter.productId}/${meter.deviceId}/energy/`)
    const arrived = await until(
      () => {
        const ids = new Set(rec.messages.filter(isReading).map((m) => levels(m)[4]))
        return ids.size >= made ? ids : undefined
      },
      30_000,
      `not every reading reached the hub (made ${made})`,
    )
    expect(arrived.size).toBe(made)
    const back = rec.messages.length
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), SLAVE)
    await slave.start()
    // Both slaves answer again before the next test takes them away.
    await connection(meter, true, back)
    await connection(pump, true, back)
  })

  it('reports a slave that stops answering as disconnected, queues its commands, and connected again when it is back', async () => {
    let from = rec.messages.length
    await slave.stop()
    await connection(meter, false, from)
    await connection(pump, false, from)
    // A command while the slave is away waits in the gateway and is written once it answers again.
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/set_setpoint/plain/req-queued-1`, '{"value": 23}')
    // A version above any the gateway's copy reached (its own reports advance it, as the hub's would).
    const doc = { state: { desired: { relay: true } }, metadata: {}, version: 100, timestamp: Math.floor(Date.now() / 1000) }
    await hub.publishAsHub(`cmd/${meter.productId}/${meter.deviceId}/$update_shadow/plain/shadow-req-away`, JSON.stringify(doc), 0)
    await sleep(500)
    expect(rec.messages.some((m) => levels(m)[0] === 'cmd_resp' && levels(m)[4] === 'req-queued-1')).toBe(false)
    const timeouts = (await (await api('/api/adapters/serial/ports')).json()) as { ports: { devices: { counters: { timeouts: number } }[] }[] }
    expect(timeouts.ports[0]!.devices[0]!.counters.timeouts).toBeGreaterThan(0)
    from = rec.messages.length
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), SLAVE)
    await slave.start()
    await connection(meter, true, from)
    await connection(pump, true, from)
    expect(json(await cmdResp('req-queued-1'))).toEqual({ status: 'ok' })
    expect(slave.writes).toContainEqual({ write: 'hr', unit: 1, address: 10, values: [230] })
    // The desired state that arrived while it was away is applied once it is back, then confirmed.
    const updated = await nextUpload(meter, '$shadow_updated', from, '$shadow_updated after the slave came back', (b) => b.version === 100)
    expect(json(updated)).toEqual({ state: { desired: null }, version: 100 })
    expect(slave.writes).toContainEqual({ write: 'co', unit: 1, address: 0, values: [1] })
  })

  // Failed once in four fresh-clone CI runs: a write issued while serialport was closing the
  // unplugged port never settled, and the bus waited on it forever (serial-replug.test.ts).
  it('reopens the port by itself when the adapter is unplugged and plugged back in', async () => {
    let from = rec.messages.length
    await slave.stop()
    await pair.stop()
    await connection(meter, false, from)
    const gone = await until(
      async () => {
        const p = ((await (await api('/api/adapters/serial/ports')).json()) as { ports: { open: boolean; state: string; lastError: string | null; counters: { lost: number } }[] }).ports[0]!
        return !p.open && p.counters.lost > 0 ? p : undefined
      },
      10_000,
      'the port was not reported lost',
    )
    expect(gone.state).toMatch(/waiting|opening/)
    // A read while the port is gone says so, and what to do.
    const read = await api('/api/adapters/serial/ports/line1/modbus/read', { method: 'POST', body: JSON.stringify({ unit: 1, table: 'holding', address: 0 }) })
    expect(read.status).toBe(503)
    expect(await read.json()).toMatchObject({ error: 'port_not_open', message: expect.stringContaining(`port line1 (${pair.gateway}) is not open`) })
    // The port's problem is the missing device node (a request in flight may time out just before).
    await until(
      async () => /USB/.test(((await (await api('/api/adapters/serial/ports')).json()) as { ports: { problem: { hint: string } }[] }).ports[0]!.problem.hint),
      5_000,
      'the ports route does not say the adapter is gone',
    )
    from = rec.messages.length
    await pair.start()
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), SLAVE)
    await slave.start()
    await connection(meter, true, from)
    const up = await nextUpload(meter, 'energy', from, 'a poll after the replug')
    expect(json(up)).toMatchObject({ voltage: 230.5, energy: -1234.56 })
  })
})

describe('a serial port that is missing at start', () => {
  it('does not fail the adapter: the port is retried and reported, and comes up when the device appears', async () => {
    const hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [meter] } })
    await hub.start()
    const rec = await hub.subscribeAll('#')
    const tmp = await serialTempDir('serial-missing-')
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'serial-missing-data-'))
    const pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    let slave: ModbusSlave | undefined
    const gw = new Gateway(
      parseConfig({
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: [registered[0]],
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
        serial: {
          ports: [
            {
              name: 'late',
              path: pair.gateway,
              protocol: 'modbus-rtu',
              baudRate: 19200,
              timeoutMs: 1000,
              reopenMinMs: 100,
              reopenMaxMs: 300,
              devices: [{ unitId: 1, ...meter, pollIntervalMs: 300, registers: [{ name: 'energy', table: 'holding', address: 0, type: 'int32', scale: 0.01 }] }],
            },
          ],
        },
      }),
    )
    try {
      await gw.start()
      const health = (await (await fetch(`http://127.0.0.1:${gw.web.port}/api/health`)).json()) as { adapters: { name: string; state: string }[] }
      expect(health.adapters).toContainEqual(expect.objectContaining({ name: 'serial', state: 'running' }))
      const res = await fetch(`http://127.0.0.1:${gw.web.port}/api/adapters/serial/ports`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
      const port = ((await res.json()) as { ports: { open: boolean; lastError: string }[] }).ports[0]!
      expect(port.open).toBe(false)
      expect(port.lastError).toMatch(/No such file or directory/)
      await pair.start()
      slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), SLAVE)
      await slave.start()
      const up = await rec.waitFor((m) => m.topic.startsWith(`upload_data/${meter.productId}/${meter.deviceId}/reading/`), 15_000, 'a reading once the port appeared')
      expect(json(up)).toEqual({ energy: -1234.56 })
    } finally {
      await gw.stop()
      await slave?.stop()
      await pair.stop().catch(() => undefined)
      await hub.close()
      await tmp.dispose()
      await rm(dataDir, { recursive: true, force: true })
    }
  })
})
