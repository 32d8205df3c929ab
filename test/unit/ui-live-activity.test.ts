// The data behind the technician's log page and device table, as the gateway keeps it: the log
// ring holds the very lines stdout got (secrets redacted there already), bounded by lines and
// bytes; the device activity keeps the last 20 messages per device within a payload budget, and
// reads radio, battery and firmware from what the device or its transport reported.
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../src/core/log.js'
import { LogRing } from '../../src/core/log-ring.js'
import { DeviceActivity, ERROR_EVENTS_PER_MINUTE } from '../../src/live/device-activity.js'
import type { Uplink, UplinkMeta } from '../../src/core/types.js'

let seq = 0
function up(device: string, kind: 'upload_data' | 'update_status', payload: string | Buffer, meta?: UplinkMeta, name = 'telemetry'): Uplink {
  const [productId, deviceId] = device.split('/')
  return {
    topic: { kind, productId, deviceId, messageId: `m${++seq}`, ...(kind === 'upload_data' ? { name } : {}) },
    payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload),
    transport: meta ? 'lorawan' : 'mqtt',
    receivedAt: seq,
    meta,
  }
}

describe('log ring', () => {
  it('keeps exactly what stdout got, in order, redacted, and filters by level', () => {
    const stdout: string[] = []
    const ring = new LogRing()
    const log = createLogger({ level: 'debug', format: 'json', env: {}, out: (l) => stdout.push(l), tap: ring.push })
    log.debug('d')
    log.info({ password: 'hunter2' }, 'i')
    log.warn({ device: 'p/d' }, 'w')
    log.error('e')
    expect(ring.lines(0, 100).map((l) => l + '\n')).toEqual(stdout)
    expect(ring.lines(0, 100).join('\n')).not.toContain('hunter2')
    expect(ring.lines(40, 100).map((l) => JSON.parse(l).msg)).toEqual(['w', 'e'])
    expect(ring.lines(0, 2).map((l) => JSON.parse(l).msg)).toEqual(['w', 'e'])
  })

  it('pretty stdout does not change what the ring keeps (JSON)', () => {
    const stdout: string[] = []
    const ring = new LogRing()
    createLogger({ level: 'info', format: 'pretty', env: {}, out: (l) => stdout.push(l), tap: ring.push }).info({ a: 1 }, 'hello')
    expect(stdout[0]).toMatch(/ INFO  hello a=1\n$/)
    expect(JSON.parse(ring.lines()[0])).toMatchObject({ msg: 'hello', a: 1, level: 30 })
  })

  it('is bounded by lines and by bytes, dropping the oldest', () => {
    const byLines = new LogRing(3, 1 << 20)
    for (let i = 0; i < 10; i++) byLines.push(`{"level":30,"msg":"${i}"}\n`, 30)
    expect(byLines.size).toBe(3)
    expect(byLines.lines().map((l) => JSON.parse(l).msg)).toEqual(['7', '8', '9'])
    const byBytes = new LogRing(1000, 100)
    for (let i = 0; i < 10; i++) byBytes.push(`{"level":30,"msg":"${String(i).repeat(30)}"}`, 30)
    expect(byBytes.lines().join('').length).toBeLessThanOrEqual(100)
    expect(JSON.parse(byBytes.lines().at(-1)!).msg).toBe('9'.repeat(30))
    // Many more lines than it keeps: still the newest, in order.
    const many = new LogRing(5, 1 << 20)
    for (let i = 0; i < 5000; i++) many.push(`{"level":30,"msg":"${i}"}`, 30)
    expect(many.lines().map((l) => JSON.parse(l).msg)).toEqual(['4995', '4996', '4997', '4998', '4999'])
  })
})

describe('device activity', () => {
  const flushed = async (): Promise<void> => new Promise((r) => setImmediate(r))

  it('keeps the last 20 messages per device, newest first, JSON or base64', async () => {
    const a = new DeviceActivity()
    for (let i = 0; i < 25; i++) a.committed([up('p/a', 'upload_data', JSON.stringify({ i }))])
    a.committed([up('p/a', 'upload_data', Buffer.from([0, 255]), undefined, 'raw')])
    a.committed([up('p/a', 'upload_data', '{"connected":true}', undefined, '$connection')])
    await flushed()
    const m = a.messages('p/a')
    expect(m).toHaveLength(20)
    expect(m[0]).toMatchObject({ dataType: 'raw', payload: { base64: 'AP8=' } })
    expect(m[1].payload).toEqual({ i: 24 })
    expect(m[19].payload).toEqual({ i: 6 })
    expect(a.messages('p/none')).toEqual([])
  })

  it('battery from the transport or a payload field, whichever came last; radio from the transport; firmware from update_status', () => {
    const a = new DeviceActivity()
    a.committed([up('p/a', 'upload_data', '{"battery": 80, "t": 1}')])
    expect(a.view('p/a')).toMatchObject({ battery: 80, rssi: null, protocol: 'mqtt', firmwareVersion: null })
    a.committed([up('p/a', 'upload_data', '{"t": 2}', { rssi: -90, snr: 3.5, battery: 55 })])
    expect(a.view('p/a')).toMatchObject({ battery: 55, rssi: -90, snr: 3.5, protocol: 'lorawan' })
    // Volts are not a percentage: kept as it was.
    a.committed([up('p/a', 'upload_data', '{"battery": 3600}')])
    expect(a.view('p/a').battery).toBe(55)
    a.committed([up('p/a', 'update_status', '{"firmware": {"version": "2.1.0"}}')])
    expect(a.view('p/a').firmwareVersion).toBe('2.1.0')
    a.committed([up('p/a', 'update_status', '{"battery": 12}')])
    expect(a.view('p/a')).toMatchObject({ firmwareVersion: '2.1.0', battery: 12 })
    a.committed([up('p/a', 'update_status', '{"fw_version": 3}')])
    expect(a.view('p/a').firmwareVersion).toBe('3')
  })

  it('gives back its devices\' facts after a restart, and skips what is not facts', () => {
    const a = new DeviceActivity()
    a.committed([up('p/a', 'update_status', '{"version": "1.0", "battery": 70}', { rssi: -80, snr: 2 })])
    expect(a.changed).toBe(true)
    const saved = JSON.parse(JSON.stringify(a.facts()))
    expect(a.changed).toBe(false)
    const b = new DeviceActivity()
    b.restore({ ...saved, nodevice: { battery: 1 }, 'p/junk': { battery: 'full', firmwareVersion: 7 } })
    expect(b.view('p/a')).toMatchObject({ protocol: 'lorawan', firmwareVersion: '1.0', battery: 70, rssi: -80, snr: 2, errors: 0 })
    expect(b.view('p/junk')).toMatchObject({ battery: null, firmwareVersion: null })
    expect(b.messages('p/a')).toEqual([])
  })

  it('counts the warnings and errors that name a device', () => {
    const a = new DeviceActivity()
    a.logLine('{"level":50,"time":5,"device":"p/a","code":"IHE_AUTH_FAILED","msg":"device refused"}', 50)
    a.logLine('{"level":30,"device":"p/a","msg":"device connected"}', 30)
    a.logLine('{"level":40,"msg":"no device here"}', 40)
    expect(a.view('p/a')).toMatchObject({ errors: 1, lastError: { time: 5, msg: 'device refused', code: 'IHE_AUTH_FAILED' } })
  })

  it('passes a device\'s errors on to its timeline, at most ERROR_EVENTS_PER_MINUTE per device and minute (all are counted)', () => {
    const a = new DeviceActivity()
    const told: { device: string; time: number; code: string | null }[] = []
    a.onError = (device, e) => told.push({ device, time: e.time, code: e.code })
    const line = (device: string, time: number): void => a.logLine(`{"level":40,"time":${time},"device":"${device}","code":"IHE_BAD_TOPIC","msg":"publish refused"}`, 40)
    for (let i = 0; i < 10; i++) line('p/a', 60_000 + i)
    line('p/b', 60_500)
    line('p/a', 120_000)
    expect(told.filter((t) => t.device === 'p/a').map((t) => t.time)).toEqual([...Array.from({ length: ERROR_EVENTS_PER_MINUTE }, (_, i) => 60_000 + i), 120_000])
    expect(told.filter((t) => t.device === 'p/b')).toEqual([{ device: 'p/b', time: 60_500, code: 'IHE_BAD_TOPIC' }])
    expect(a.view('p/a').errors).toBe(11)
  })

  it('stays within its payload budget and device count, losing the least recently active first', () => {
    const a = new DeviceActivity({ perDevice: 20, messageBytes: 1000, budgetBytes: 10_000, maxDevices: 3 })
    const kb = JSON.stringify({ x: 'y'.repeat(990) })
    for (let i = 0; i < 20; i++) a.committed([up('p/old', 'upload_data', kb)])
    for (let i = 0; i < 5; i++) a.committed([up('p/new', 'upload_data', kb)])
    expect(a.messages('p/new')).toHaveLength(5)
    expect(a.messages('p/old').length).toBeLessThanOrEqual(5)
    a.committed([up('p/big', 'upload_data', 'z'.repeat(5000))])
    expect(a.messages('p/big')[0].payload).toEqual({ omitted: true, bytes: 5000 })
    a.committed([up('p/fourth', 'upload_data', '{}')])
    // Four devices over a cap of three: the least recently active is gone.
    expect(a.messages('p/old')).toEqual([])
    expect(a.messages('p/new')).toHaveLength(5)
  })
})
