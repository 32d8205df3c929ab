// The history's observer side with its real worker thread and a real history.db: committed uplinks
// become series (JSON leaves, transport metadata and frame-counter gaps), `$connection` uploads and
// command events become device events, and when the history is behind it sheds and counts instead
// of holding anything up.
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { Registry } from 'prom-client'
import { afterEach, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/core/log.js'
import type { Uplink, UplinkMeta } from '../../src/core/types.js'
import { HISTORY_FILE, openHistoryReadOnly } from '../../src/history/history-db.js'
import { HistoryRecorder } from '../../src/history/history-recorder.js'
import { HistoryStore } from '../../src/history/history-store.js'
import { MAX_TEXT, UplinkPack, unpack } from '../../src/history/uplink-pack.js'
import { payloadLeaves } from '../../src/history/payload-leaves.js'
import { HistorySchema, type HistoryConfig } from '../../src/history/schema.js'

const config = (over: Partial<HistoryConfig> = {}): HistoryConfig => ({ ...(Value.Default(HistorySchema, {}) as HistoryConfig), ...over })
let n = 0
const up = (device: string, name: string, payload: unknown, meta?: UplinkMeta, at = Date.now()): Uplink => ({
  topic: { kind: 'upload_data', productId: 'lora', deviceId: device, name, messageId: `m${n++}` },
  payload: Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)),
  transport: 'lorawan',
  receivedAt: at,
  ...(meta ? { meta } : {}),
})

describe('history recorder', () => {
  let dir: string | undefined
  let recorder: HistoryRecorder | undefined

  afterEach(async () => {
    await recorder?.stop()
    recorder = undefined
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  function make(over: Partial<HistoryConfig> = {}, writerIdleMs?: number): HistoryRecorder {
    dir = mkdtempSync(path.join(os.tmpdir(), 'history-rec-'))
    recorder = new HistoryRecorder({
      dataDir: dir,
      config: config(over),
      log: createLogger({ level: 'silent' }),
      registry: new Registry(),
      gateway: 'gateways/gw-01',
      vitals: () => ({}),
      writerIdleMs,
    })
    return recorder
  }

  const values = (store: HistoryStore, device: string, name: string, t: number): number[] =>
    [...store.rows(store.seriesByName(device, name)!.id, 'raw', t, t + 10_000)].map((x) => x.last)

  function readBack(): HistoryStore {
    const db = openHistoryReadOnly(path.join(dir!, HISTORY_FILE))
    return new HistoryStore(db, config(), Date.now, { reader: true })
  }

  it('records JSON leaves, transport metadata, frame-counter gaps and device events from committed batches', async () => {
    const r = make()
    await r.start()
    const t = Date.now() - 60_000
    r.committed([
      up('m1', '$connection', { connected: true, client_id: 'lorawan:lora/m1', transport: 'lorawan' }, undefined, t),
      up('m1', 'meter', { kwh: 12.5, relay: true, phases: [230, 231] }, { rssi: -97, snr: 7.5, frameCounter: 10, battery: 81 }, t + 1000),
      up('m1', 'meter', { kwh: 12.75 }, { rssi: -99, frameCounter: 14 }, t + 2000),
      up('m1', 'raw', 'not json at all', undefined, t + 3000),
    ])
    r.deviceEvent({ device: { productId: 'lora', deviceId: 'm1' }, at: t + 4000, type: 'command_delivered', detail: { name: 'open', requestId: 'r1' } })
    await r.stop()
    recorder = undefined

    const store = readBack()
    expect(store.listSeries('lora/m1').map((s) => s.name)).toEqual(
      ['$meta.battery', '$meta.fcnt', '$meta.fcnt_gap', '$meta.rssi', '$meta.snr', 'meter.kwh', 'meter.phases.0', 'meter.phases.1', 'meter.relay'].sort(),
    )
    const values = (name: string): number[] => [...store.rows(store.seriesByName('lora/m1', name)!.id, 'raw', t, t + 10_000)].map((x) => x.last)
    expect(values('meter.kwh')).toEqual([12.5, 12.75])
    expect(values('meter.relay')).toEqual([1])
    expect(values('$meta.rssi')).toEqual([-97, -99])
    // Frames 11, 12 and 13 never arrived.
    expect(values('$meta.fcnt_gap')).toEqual([3])
    expect(store.events('lora/m1', t, t + 10_000).map((e) => e.type)).toEqual(['connected', 'command_delivered'])
  })

  it('sheds and counts what it cannot keep up with, and still records what it took', async () => {
    const r = make({ maxPending: 100 })
    await r.start()
    const t = Date.now()
    r.committed(Array.from({ length: 80 }, (_, i) => up('m2', 'v', { x: i }, undefined, t + i)))
    // Nothing was written yet (the writer is handed batches once a second): these do not fit.
    r.committed(Array.from({ length: 50 }, (_, i) => up('m2', 'v', { x: 100 + i }, undefined, t + 100 + i)))
    expect(r.health().shed).toBe(50)
    await r.stop()
    recorder = undefined
    const store = readBack()
    expect([...store.rows(store.seriesByName('lora/m2', 'v.x')!.id, 'raw', t, t + 1000)]).toHaveLength(80)
  })

  it('ends its writer thread as soon as the start\'s work is done when nothing came to write, and keeps it for its idle time once something did', async () => {
    // An idle time far longer than the test: only the start's own rule can end the thread.
    const r = make({}, 600_000)
    await r.start()
    await expect.poll(() => r.writerRunning, { timeout: 15_000 }).toBe(false)
    const t = Date.now()
    r.committed([up('m4', 'meter', { kwh: 2.5 }, undefined, t)])
    await expect.poll(() => r.tables?.seriesByName('lora/m4', 'meter.kwh') !== undefined, { timeout: 15_000 }).toBe(true)
    expect(r.writerWakes).toBe(1)
    expect(r.writerRunning).toBe(true)
  })

  it('stops its writer thread when there is nothing to write, starts it again for the next uplink, and writes the vitals gathered meanwhile', async () => {
    const r = make({ vitalsIntervalSeconds: 1 }, 300)
    await r.start()
    // Idle: the thread (its own V8 isolate) ends.
    await expect.poll(() => r.writerRunning, { timeout: 15_000 }).toBe(false)
    const t = Date.now()
    r.committed([up('m3', 'meter', { kwh: 1.5 }, undefined, t)])
    r.deviceEvent({ device: { productId: 'lora', deviceId: 'm3' }, at: t, type: 'command_delivered', detail: { name: 'open', requestId: 'r3' } })
    // Written by a writer started again, and readable through the API's connection.
    await expect.poll(() => r.tables?.seriesByName('lora/m3', 'meter.kwh') !== undefined, { timeout: 15_000 }).toBe(true)
    expect(r.writerWakes).toBeGreaterThanOrEqual(1)
    expect(r.tables!.events('lora/m3', t, t + 1000).map((e) => e.type)).toEqual(['command_delivered'])
    await expect.poll(() => r.writerRunning, { timeout: 15_000 }).toBe(false)
    // Vitals alone do not wake it; what gathered is written when the gateway stops.
    await new Promise((resolve) => setTimeout(resolve, 2_500))
    expect(r.writerRunning).toBe(false)
    const since = Date.now() - 2_000
    await r.stop()
    recorder = undefined
    const store = readBack()
    const rss = store.seriesByName('gateways/gw-01', '$vitals.rss_bytes')!
    expect([...store.rows(rss.id, 'raw', since, Date.now())].length).toBeGreaterThanOrEqual(1)
    expect(values(store, 'lora/m3', 'meter.kwh', t)).toEqual([1.5])
  })
})

// Uplinks cross to the writer thread packed in one buffer (uplink-pack.ts): what the writer reads
// back is what was committed, whatever the ids, names, payloads and metadata.
describe('uplink pack', () => {
  it('reads back every uplink as committed: non-ASCII ids and names, empty and oversized payloads, metadata, internal ones, past its first buffer', () => {
    const pack = new UplinkPack()
    const ups: Uplink[] = [
      { topic: { kind: 'upload_data', productId: 'prödukt', deviceId: 'Gerät-1', name: 'température', messageId: 'a1' }, payload: Buffer.from('{"t":21.5}'), transport: 'mqtt', receivedAt: 1_700_000_000_123.5 },
      { topic: { kind: 'upload_data', productId: 'p', deviceId: 'd', name: '$connection', messageId: 'a2' }, payload: Buffer.from('{"connected":true}'), transport: 'internal', receivedAt: 2 },
      { topic: { kind: 'update_status', productId: 'p', deviceId: 'd', messageId: 'a3' }, payload: Buffer.alloc(0), transport: 'coap', receivedAt: 3 },
      { topic: { kind: 'cmd_resp', productId: 'p', deviceId: 'd', name: 'x', requestId: 'r', messageId: 'a4' }, payload: Buffer.from('ignored'), transport: 'mqtt', receivedAt: 4 },
      { topic: { kind: 'upload_data', productId: 'p', deviceId: 'd', name: 'big', messageId: 'a5' }, payload: Buffer.alloc(MAX_TEXT + 1, 0x31), transport: 'mqtt', receivedAt: 5 },
      { topic: { kind: 'upload_data', productId: 'lora', deviceId: 'm1', name: '$shadow_updated', messageId: 'a6' }, payload: Buffer.from('{}'), transport: 'lorawan', receivedAt: 6, meta: { rssi: -97, snr: 7.5, frameCounter: 10, port: '/dev/ttyUSB0' } },
    ]
    for (const u of ups) pack.add(u)
    for (let i = 0; i < 500; i++) pack.add({ ...ups[0], receivedAt: i })
    const back = unpack(pack.bytes())
    expect(pack.count).toBe(506)
    expect(back).toHaveLength(506)
    expect(back.slice(0, 6)).toEqual([
      { device: 'prödukt/Gerät-1', what: 'température', ts: 1_700_000_000_123.5, text: '{"t":21.5}' },
      { device: 'p/d', what: '$connection', ts: 2, text: '{"connected":true}', internal: true },
      { device: 'p/d', what: 'status', ts: 3, text: '' },
      { device: 'p/d', what: undefined, ts: 4 },
      { device: 'p/d', what: 'big', ts: 5 },
      { device: 'lora/m1', what: undefined, ts: 6, meta: { rssi: -97, snr: 7.5, frameCounter: 10, port: '/dev/ttyUSB0' } },
    ])
    expect(back[505]).toEqual({ device: 'prödukt/Gerät-1', what: 'température', ts: 499, text: '{"t":21.5}' })
  })
})

// The writer thread parses only what can be JSON with leaves: text and binary payloads are passed
// over (JSON.parse's exception per payload cost it tens of microseconds each), with the same result.
describe('payload leaves', () => {
  it('finds the numeric and boolean leaves of JSON, and none in text, binary, JSON strings or null', () => {
    expect(payloadLeaves(' {"t": 21.5, "ok": true, "cells": [3, 4], "name": "x"}')).toEqual([
      { path: 't', value: 21.5 },
      { path: 'ok', value: 1 },
      { path: 'cells.0', value: 3 },
      { path: 'cells.1', value: 4 },
    ])
    expect(payloadLeaves('\n-12.5 ')).toEqual([{ path: '', value: -12.5 }])
    expect(payloadLeaves(' true\n')).toEqual([{ path: '', value: 1 }])
    expect(payloadLeaves('false')).toEqual([{ path: '', value: 0 }])
    for (const none of ['', '   ', 'pppppppp', 'temperature 21', 'true story', '"42"', 'null', '[1, 2', '12abc', '\u0000\u0001\u00ff']) expect(payloadLeaves(none)).toEqual([])
  })
})
