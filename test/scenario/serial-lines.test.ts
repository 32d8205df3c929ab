// Line-protocol sensors on serial ports become hub devices (issue 9, "Line protocols"). Each port
// is a socat pty pair; the test plays the sensor on the far end (writing lines, reading what the
// gateway writes back); the gateway runs in this process against Mosquitto as the hub.
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import http, { type IncomingMessage } from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ConfigError, parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { HubBroker, type HubRecorder, type RecordedMessage } from '../helpers/hub-broker.js'
import { PtyPair, Sensor, serialTempDir, until, watchMonitor } from '../helpers/serial-peers.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const API_TOKEN = 'serial-lines-test-token'
const P = 'bench'
const ids = ['s1', 's2', 'k1', 'c1', 'r1']
const children = ids.map((deviceId) => ({ productId: P, deviceId }))

const json = (m: RecordedMessage): Record<string, unknown> => JSON.parse(m.payload.toString('utf8')) as Record<string, unknown>

describe('line-protocol config', () => {
  it('names what a lines port lacks', () => {
    try {
      parseConfig({ serial: { ports: [{ name: 'b', path: '/dev/ttyS0', protocol: 'lines', format: 'regex', pattern: '([0-9]+', deviceField: 'id' }] } })
      expect.unreachable('the config must be refused')
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError)
      const problems = (err as ConfigError).problems
      expect(problems).toContain('serial.ports[0].productId: required for protocol lines')
      expect(problems).toContain('serial.ports[0].deviceIds: list the devices expected on this port when deviceField is used')
      expect(problems.some((p) => p.startsWith('serial.ports[0].pattern: '))).toBe(true)
    }
  })
})

describe('line-protocol sensors through the gateway to the hub', () => {
  let hub: HubBroker
  let rec: HubRecorder
  let tmp: { dir: string; dispose: () => Promise<void> }
  let dataDir: string
  let gw: Gateway
  const pairs: Record<string, PtyPair> = {}
  const sensors: Record<string, Sensor> = {}
  const api = async <T>(urlPath: string): Promise<T> => (await (await fetch(`http://127.0.0.1:${gw.web.port}${urlPath}`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).json()) as T

  const reading = (deviceId: string, pred: (b: Record<string, unknown>) => boolean = () => true): Promise<RecordedMessage> =>
    rec.waitFor((m) => m.topic.startsWith(`upload_data/${P}/${deviceId}/reading/`) && pred(json(m)), 10_000, `a reading from ${deviceId}`)

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children } })
    await hub.start()
    rec = await hub.subscribeAll('#', { clientId: 'serial-lines-recorder' })
    tmp = await serialTempDir('serial-lines-')
    for (const name of ['json1', 'kv1', 'csv1', 'rx1']) {
      pairs[name] = new PtyPair(path.join(tmp.dir, `${name}-gw`), path.join(tmp.dir, `${name}-dev`))
      await pairs[name].start()
      sensors[name] = await Sensor.open(pairs[name].device)
    }
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'serial-lines-data-'))
    const common = { baudRate: 115200, protocol: 'lines', productId: P, reopenMinMs: 100, reopenMaxMs: 400 }
    gw = new Gateway(
      parseConfig({
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: children.map((c) => ({ ...c, secret: `${c.deviceId}-secret` })),
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
        serial: {
          ports: [
            { ...common, name: 'json1', path: pairs.json1!.gateway, format: 'json', deviceField: 'id', deviceIds: ['s1', 's2'], maxLineBytes: 256 },
            { ...common, name: 'kv1', path: pairs.kv1!.gateway, format: 'kv', deviceField: 'id', deviceIds: ['k1'] },
            {
              ...common,
              name: 'csv1',
              path: pairs.csv1!.gateway,
              format: 'csv',
              columns: ['t', 'h'],
              deviceId: 'c1',
              delimiter: '\r\n',
              commands: { set_interval: { template: 'INTERVAL {seconds} {deviceId}' } },
            },
            { ...common, name: 'rx1', path: pairs.rx1!.gateway, format: 'regex', pattern: '^T=(?<t>-?[0-9.]+) H=(?<h>[0-9]+)%$', deviceId: 'r1' },
          ],
        },
      }),
    )
    await gw.start()
    // Every port is open (the sensors may talk now).
    await until(async () => (await api<{ ports: { open: boolean }[] }>('/api/adapters/serial/ports')).ports.every((p) => p.open), 10_000, 'the ports did not open')
  })

  afterAll(async () => {
    await gw?.stop()
    for (const s of Object.values(sensors)) await s.close()
    for (const p of Object.values(pairs)) await p.stop().catch(() => undefined)
    await rec?.close()
    await hub?.close()
    await tmp?.dispose()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('turns each format\'s lines into upload_data for the device they name, with the values typed', async () => {
    await sensors.json1!.send('{"id":"s1","t":21.5,"h":40}\n{"id":"s2","t":-3,"ok":true}\n')
    await sensors.kv1!.send('id=k1;t=19.5;state=ok\n')
    await sensors.csv1!.send('22.5,41\r\n')
    await sensors.rx1!.send('T=23.5 H=42%\n')
    expect(json(await reading('s1'))).toEqual({ t: 21.5, h: 40 })
    expect(json(await reading('s2'))).toEqual({ t: -3, ok: true })
    expect(json(await reading('k1'))).toEqual({ t: 19.5, state: 'ok' })
    expect(json(await reading('c1'))).toEqual({ t: 22.5, h: 41 })
    expect(json(await reading('r1'))).toEqual({ t: 23.5, h: 42 })
  })

  it('reports the port\'s devices connected while the port is open', async () => {
    for (const d of ids) {
      await rec.waitFor((m) => m.topic.startsWith(`upload_data/${P}/${d}/$connection/`) && json(m).connected === true, 10_000, `$connection for ${d}`)
    }
  })

  it('counts and skips garbage, over-long and non-UTF-8 lines and unknown devices, and carries on', async () => {
    await sensors.json1!.send('not json\n[1,2]\n')
    await sensors.json1!.send(`{"id":"s1","pad":"${'x'.repeat(400)}"}\n`)
    // Longer than the buffer with no delimiter in sight: dropped up to the next delimiter.
    await sensors.json1!.send('y'.repeat(600))
    await sensors.json1!.send('yyy\n')
    await sensors.json1!.send(Buffer.from([0xff, 0xfe, 0x7b, 0x0a]))
    await sensors.json1!.send('{"id":"zz","t":1}\n{"id":"s1"}\n')
    await sensors.json1!.send('{"id":"s1","t":30.25}\n')
    expect(json(await reading('s1', (b) => b.t === 30.25))).toEqual({ t: 30.25 })
    type Port = { name: string; lines: { rejected: Record<string, number> }; counters: Record<string, number>; problem: { message: string; hint: string } }
    const ports = await api<{ ports: Port[] }>('/api/adapters/serial/ports')
    const json1 = ports.ports.find((p) => p.name === 'json1')!
    expect(json1.lines.rejected).toEqual({ garbage: 2, too_long: 2, not_utf8: 1, unknown_device: 1, no_values: 1, partial: 0 })
    expect(json1.counters).toMatchObject({ garbageLines: 7, framesIn: 10, timeouts: 0, crcErrors: 0 })
    expect(json1.problem).toMatchObject({ message: 'line skipped (no_values): {"id":"s1"}', hint: expect.stringMatching(/baudRate/) })
    const metrics = await (await fetch(`http://127.0.0.1:${gw.web.port}/metrics`)).text()
    expect(metrics).toContain('iothub_edge_serial_lines_rejected_total{port="json1",reason="too_long"} 2')
    // Nothing of the bad lines reached the hub.
    expect(rec.messages.filter((m) => m.topic.startsWith(`upload_data/${P}/s1/reading/`)).map((m) => json(m))).toEqual([{ t: 21.5, h: 40 }, { t: 30.25 }])
  })

  it('writes a command as a line from its template and answers sent, as the live monitor shows', async () => {
    // A technician watches the port (server-sent events) while the command goes out.
    const abort = new AbortController()
    const res = await fetch(`http://127.0.0.1:${gw.web.port}/api/adapters/serial/ports/csv1/monitor`, {
      headers: { authorization: `Bearer ${API_TOKEN}`, accept: 'text/event-stream' },
      signal: abort.signal,
    })
    expect(res.headers.get('content-type')).toBe('text/event-stream')
    const seen = watchMonitor(res)
    await hub.publishAsHub(`cmd/${P}/c1/set_interval/plain/req-int-1`, '{"seconds": 30}')
    await until(() => sensors.csv1!.received.includes('INTERVAL 30 c1\r\n'), 10_000, `the sensor got ${JSON.stringify(sensors.csv1!.received)}`)
    const resp = await rec.waitFor((m) => m.topic.startsWith(`cmd_resp/${P}/c1/set_interval/req-int-1/`), 10_000, 'cmd_resp')
    expect(json(resp)).toEqual({ status: 'sent' })
    await until(() => seen.events.some((e) => e.event === 'line' && e.data.dir === 'tx' && e.data.text === 'INTERVAL 30 c1..'), 10_000, () => `the monitor showed ${JSON.stringify(seen.events)}`)
    // Earlier traffic is in the stream too: the sensor's reading as one line, in hex and as text.
    const reading = seen.events.find((e) => e.event === 'line' && e.data.dir === 'rx' && e.data.text.startsWith('22.5'))
    expect(reading?.data).toMatchObject({ text: '22.5,41..', hex: Buffer.from('22.5,41\r\n').toString('hex') })
    expect(typeof reading?.data.ts).toBe('number')
    abort.abort()
    await seen.done
    const snapshot = await api<{ lines: { dir: string; hex: string }[] }>('/api/adapters/serial/ports/csv1/monitor')
    expect(snapshot.lines.some((f) => f.dir === 'tx' && Buffer.from(f.hex, 'hex').toString() === 'INTERVAL 30 c1\r\n')).toBe(true)
    await hub.publishAsHub(`cmd/${P}/c1/set_interval/plain/req-int-2`, '{"minutes": 1}')
    const bad = await rec.waitFor((m) => m.topic.startsWith(`cmd_resp/${P}/c1/set_interval/req-int-2/`), 10_000, 'cmd_resp')
    expect(json(bad)).toEqual({ status: 'failed', reason: 'the payload lacks seconds', code: 'bad_payload' })
  })

  it('never lets a browser that does not keep up hold the port up: its monitor frames are dropped and counted', async () => {
    type Port = { name: string; counters: { monitorDropped: number }; lines: { rejected: { garbage: number } } }
    const rx1 = async (): Promise<Port> => (await api<{ ports: Port[] }>('/api/adapters/serial/ports')).ports.find((p) => p.name === 'rx1')!
    const garbageBefore = (await rx1()).lines.rejected.garbage
    // A watcher that stops reading (a phone gone to sleep): nothing is read from its socket.
    const req = http.get({ host: '127.0.0.1', port: gw.web.port, path: '/api/adapters/serial/ports/rx1/monitor', headers: { authorization: `Bearer ${API_TOKEN}`, accept: 'text/event-stream' } })
    const [res] = (await once(req, 'response')) as [IncomingMessage]
    expect(res.statusCode).toBe(200)
    res.pause()
    // 20000 lines of 200 bytes (the pattern does not match: each one is garbage, counted and skipped).
    const LINES = 20_000
    const line = `${'x'.repeat(199)}\n`
    for (let i = 0; i < LINES / 1000; i++) await sensors.rx1!.send(line.repeat(1000))
    // The port read every line, however slow the watcher.
    await until(async () => (await rx1()).lines.rejected.garbage >= garbageBefore + LINES, 30_000, 'the port did not read every line')
    const dropped = (await rx1()).counters.monitorDropped
    expect(dropped).toBeGreaterThan(0)
    // Once it reads again, the stream says how many frames it missed.
    let text = ''
    res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')))
    res.resume()
    const told = await until(() => /^event: dropped\ndata: (.*)$/m.exec(text)?.[1], 10_000, 'no dropped event')
    expect((JSON.parse(told) as { count: number }).count).toBeGreaterThan(0)
    req.destroy()
  })

  it('refuses a Modbus read on a line-protocol port, saying why', async () => {
    const res = await fetch(`http://127.0.0.1:${gw.web.port}/api/adapters/serial/ports/csv1/modbus/read`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ unit: 1, table: 'holding', address: 0, count: 1 }),
    })
    expect(res.status).toBe(409)
    expect(await res.json()).toEqual({ error: 'not_modbus', message: 'port csv1 is a line-protocol port (format csv); Modbus reads need a port with protocol: modbus-rtu' })
  })

  it('reports the devices disconnected when the cable is pulled, counts the cut line, and picks up again on replug', async () => {
    await sensors.kv1!.send('id=k1;t=1') // no delimiter: cut by the unplug
    await sleep(200)
    await sensors.kv1!.close()
    await pairs.kv1!.stop()
    await rec.waitFor((m) => m.topic.startsWith(`upload_data/${P}/k1/$connection/`) && json(m).connected === false, 10_000, 'k1 disconnected')
    const ports = await api<{ ports: { name: string; lines: { rejected: Record<string, number> } }[] }>('/api/adapters/serial/ports')
    expect(ports.ports.find((p) => p.name === 'kv1')!.lines.rejected.partial).toBe(1)
    const from = rec.messages.length
    await pairs.kv1!.start()
    sensors.kv1 = await Sensor.open(pairs.kv1!.device)
    await until(async () => (await api<{ ports: { name: string; open: boolean }[] }>('/api/adapters/serial/ports')).ports.find((p) => p.name === 'kv1')!.open, 10_000, 'kv1 did not reopen')
    await sensors.kv1.send('id=k1;t=2.5\n')
    const r = await rec.waitFor((m) => rec.messages.indexOf(m) >= from && m.topic.startsWith(`upload_data/${P}/k1/reading/`), 10_000, 'a reading after the replug')
    expect(json(r)).toEqual({ t: 2.5 })
  })
})
