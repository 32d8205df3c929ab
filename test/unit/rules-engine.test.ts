// The rule engine alone, one action at a time, with a fake clock: what goes up, what is dropped,
// what the rules keep, and that their state is durable with the outbox rows (a real SQLite file).
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseConfig } from '../../src/config.js'
import { compileRules } from '../../src/rules/compile.js'
import { RulesEngine, type RulesDeps } from '../../src/rules/engine.js'
import { MemoryRuleState } from '../../src/rules/dry-run.js'
import { formatUpTopic, parseUpTopic } from '../../src/core/hub-topics.js'
import type { Command, RuleStateStore, Uplink } from '../../src/core/types.js'
import { openDatabase, type Db } from '../../src/store/db.js'
import { Outbox } from '../../src/store/outbox.js'
import { RuleStateTable } from '../../src/store/rule-state.js'

const T0 = 1_800_000_000_000 // a round minute
let seq = 0

function msg(topic: string, payload: unknown, receivedAt: number, meta?: Uplink['meta']): Uplink {
  const t = parseUpTopic(`${topic}/${(++seq).toString(16).padStart(24, '0')}`)
  if (!t) throw new Error(`bad topic ${topic}`)
  return { topic: t, payload: Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)), transport: 'mqtt', receivedAt, meta }
}

/** An engine over the rules of a YAML-shaped config, its clock in the test's hands. */
function rig(rules: unknown[], state: RuleStateStore = new MemoryRuleState(), tags: { now: string[] } = { now: ['floor2'] }) {
  const cfg = parseConfig({ rules })
  const clock = { now: T0 }
  const emitted: Uplink[] = []
  const commands: Command[] = []
  const republished: { topic: string; payload: string; retain: boolean }[] = []
  const warnings: string[] = []
  const deps: RulesDeps = {
    state,
    emit: (up) => {
      emitted.push(up)
      return Promise.resolve()
    },
    sendCommand: (cmd) => commands.push(cmd),
    devicesWithTag: (productId, tag) => (tag === 'fans' ? [{ productId, deviceId: 'fan-1' }, { productId, deviceId: 'fan-2' }] : []),
    republish: (topic, payload, retain) => {
      republished.push({ topic, payload: payload.toString(), retain })
      return Promise.resolve()
    },
    tagsOf: () => tags.now,
    now: () => clock.now,
    log: { warn: (_o, m) => warnings.push(m) },
  }
  const engine = new RulesEngine(compileRules(cfg.rules).rules, deps)
  engine.start()
  engine.stop() // the tests tick by hand
  /** Send a message through the step as the pipeline does; what reached the outbox. */
  const send = async (up: Uplink): Promise<Uplink[]> => {
    clock.now = Math.max(clock.now, up.receivedAt)
    const out: Uplink[] = []
    await engine.step(up, (u) => {
      out.push(u)
      return Promise.resolve()
    })
    return out
  }
  return { engine, clock, emitted, commands, republished, warnings, send, stats: (name: string) => engine.ruleStats().find((s) => s.name === name)! }
}

const json = (up: Uplink): unknown => JSON.parse(up.payload.toString())

describe('rules: drop and transform', () => {
  it('drop: nothing goes up, counted per rule; other data types pass untouched', async () => {
    const r = rig([{ name: 'no-debug', from: 'upload_data/+/+/debug', actions: [{ drop: true }] }])
    expect(await r.send(msg('upload_data/p/d/debug', { x: 1 }, T0))).toEqual([])
    const t = msg('upload_data/p/d/temperature', { t: 1 }, T0)
    expect(await r.send(t)).toEqual([t])
    expect(r.stats('no-debug')).toMatchObject({ matched: 1, dropped: 1 })
  })

  it('transform: a CEL map becomes the payload, the DataType changes, the MessageId stays', async () => {
    const r = rig([
      { name: 'f-to-c', from: 'upload_data/+/+/temp_f', actions: [{ transform: { payload: '{"celsius": (payload.f - 32.0) * 5.0 / 9.0, "at": ts, "rssi": meta.rssi}', dataType: 'temperature' } }] },
    ])
    const m = msg('upload_data/p/d/temp_f', { f: 212 }, T0, { rssi: -71 })
    const [out] = await r.send(m)
    expect(formatUpTopic(out.topic)).toBe(`upload_data/p/d/temperature/${m.topic.messageId}`)
    expect(json(out)).toEqual({ celsius: 100, at: T0, rssi: -71 })
  })

  it('rules run in order, each on what the one before left', async () => {
    const r = rig([
      { name: 'rename', from: 'upload_data/+/+/t', actions: [{ transform: { dataType: 'temperature' } }] },
      { name: 'double', from: 'upload_data/+/+/temperature', actions: [{ transform: { payload: '{"v": payload.v * 2.0}' } }] },
    ])
    const [out] = await r.send(msg('upload_data/p/d/t', { v: 2 }, T0))
    expect(out.topic.name).toBe('temperature')
    expect(json(out)).toEqual({ v: 4 })
  })

  it('an expression failing on a message (a missing field) is counted; the message goes on unchanged', async () => {
    const r = rig([{ name: 'hot-only', from: 'upload_data/+/+/+', where: 'payload.t > 30.0', actions: [{ transform: { payload: '{"hot": payload.t}' } }] }])
    const m = msg('upload_data/p/d/temperature', { humidity: 40 }, T0)
    expect(await r.send(m)).toEqual([m])
    expect(r.stats('hot-only').errors).toBe(1)
    expect(r.stats('hot-only').lastError).toMatchObject({ device: 'p/d' })
    expect(r.stats('hot-only').lastError!.message).toMatch(/missing|key/i)
    expect(r.warnings).toHaveLength(1)
    // guarded with has(): not an error, just not applied
    const g = rig([{ name: 'guarded', from: 'upload_data/+/+/+', where: 'has(payload.t) && payload.t > 30.0', actions: [{ drop: true }] }])
    expect(await g.send(m)).toEqual([m])
    expect(g.stats('guarded')).toMatchObject({ errors: 0, matched: 0 })
  })

  it('a where on device, dataType and kind only is remembered per device and DataType, and follows tag changes', async () => {
    const tags = { now: ['floor2'] }
    const r = rig([{ name: 'quiet-floor', from: 'upload_data/+/+/+', where: '"floor2" in device.tags && dataType == "noise"', actions: [{ drop: true }] }], new MemoryRuleState(), tags)
    expect(await r.send(msg('upload_data/p/d/noise', {}, T0))).toEqual([])
    expect(await r.send(msg('upload_data/p/d/noise', {}, T0))).toEqual([])
    const other = msg('upload_data/p/d/temperature', {}, T0)
    expect(await r.send(other)).toEqual([other])
    tags.now = ['floor3']
    const moved = msg('upload_data/p/d/noise', {}, T0)
    expect(await r.send(moved)).toEqual([moved])
    expect(r.stats('quiet-floor')).toMatchObject({ matched: 2, dropped: 2 })
  })

  it('wildcards do not match internal ($) data types', async () => {
    const r = rig([{ name: 'all', from: 'upload_data/#', actions: [{ drop: true }] }])
    const m = msg('upload_data/p/d/$shadow_reported', { state: {} }, T0)
    expect(await r.send(m)).toEqual([m])
  })
})

describe('rules: rateLimit and reportOnChange', () => {
  it('rateLimit: burst messages per period and device, the rest dropped', async () => {
    const r = rig([{ name: 'slow', from: 'upload_data/+/+/+', actions: [{ rateLimit: { perSeconds: 10, burst: 2 } }] }])
    const sent = async (t: number, dev = 'd'): Promise<number> => (await r.send(msg(`upload_data/p/${dev}/x`, {}, t))).length
    expect([await sent(T0), await sent(T0 + 1), await sent(T0 + 2)]).toEqual([1, 1, 0])
    expect(await sent(T0 + 3, 'other')).toBe(1)
    expect(await sent(T0 + 5_002)).toBe(1) // one token back after half the period
    expect(await sent(T0 + 5_003)).toBe(0)
    expect(r.stats('slow').dropped).toBe(2)
  })

  it('reportOnChange: up when a field moves beyond the deadband, or when the heartbeat is due', async () => {
    const r = rig([{ name: 'roc', from: 'upload_data/+/+/+', actions: [{ reportOnChange: { fields: ['t', 'mode'], deadband: 0.5, heartbeatSeconds: 60 } }] }])
    const up = async (t: number, body: unknown): Promise<boolean> => (await r.send(msg('upload_data/p/d/x', body, t))).length === 1
    expect(await up(T0, { t: 20, mode: 'a' })).toBe(true) // first: always
    expect(await up(T0 + 1_000, { t: 20.4, mode: 'a' })).toBe(false) // within the deadband
    expect(await up(T0 + 2_000, { t: 20.6, mode: 'a' })).toBe(true) // moved 0.6 from 20
    expect(await up(T0 + 3_000, { t: 20.6, mode: 'b' })).toBe(true) // a non-number changed
    expect(await up(T0 + 62_000, { t: 20.6, mode: 'b' })).toBe(false) // 59 s after the last report
    expect(await up(T0 + 63_000, { t: 20.6, mode: 'b' })).toBe(true) // heartbeat
  })
})

describe('rules: window', () => {
  const rule = { name: 'per-minute', from: 'upload_data/+/+/power', actions: [{ window: { seconds: 60, fields: ['w'], aggregates: ['min', 'max', 'avg', 'sum', 'count', 'last'], dataType: 'power_1m' } }] }

  it('one upload per tumbling window and device, stamped with start and end, emitted when the window ends', async () => {
    const r = rig([rule])
    for (const [t, w] of [[T0 + 1_000, 10], [T0 + 20_000, 30], [T0 + 59_000, 20]] as const) expect(await r.send(msg('upload_data/p/d/power', { w }, t))).toEqual([])
    expect(await r.send(msg('upload_data/p/other/power', { w: 5 }, T0 + 2_000))).toEqual([])
    r.engine.tick(T0 + 59_999)
    expect(r.emitted).toEqual([])
    r.engine.tick(T0 + 60_000)
    expect(r.emitted.map((u) => `${u.topic.deviceId}/${u.topic.name}`).sort()).toEqual(['d/power_1m', 'other/power_1m'])
    const d = r.emitted.find((u) => u.topic.deviceId === 'd')!
    expect(json(d)).toEqual({ start: T0, end: T0 + 60_000, count: 3, w: { min: 10, max: 30, avg: 20, sum: 60, count: 3, last: 20 } })
    r.engine.tick(T0 + 120_000)
    expect(r.emitted).toHaveLength(2) // never twice
  })

  it('a message of the next window closes the previous one in the same commit', async () => {
    const r = rig([rule])
    await r.send(msg('upload_data/p/d/power', { w: 1 }, T0 + 1_000))
    const out = await r.send(msg('upload_data/p/d/power', { w: 2 }, T0 + 61_000))
    expect(out.map((u) => json(u))).toEqual([{ start: T0, end: T0 + 60_000, count: 1, w: { min: 1, max: 1, avg: 1, sum: 1, count: 1, last: 1 } }])
  })

  it('the accumulator survives a restart; a window that ended meanwhile is emitted at start, with the same MessageId', async () => {
    const state = new MemoryRuleState()
    const a = rig([rule], state)
    await a.send(msg('upload_data/p/d/power', { w: 7 }, T0 + 1_000))
    const b = rig([rule], state)
    await b.send(msg('upload_data/p/d/power', { w: 9 }, T0 + 2_000))
    b.engine.tick(T0 + 60_000)
    expect(json(b.emitted[0])).toMatchObject({ count: 2, w: { min: 7, max: 9 } })
    // The same window emitted twice (say, a commit lost after the hub had it) carries one MessageId.
    const again = rig([rule], (() => {
      const s = new MemoryRuleState()
      s.stage(`w/per-minute/0/p/d`, JSON.stringify({ start: T0, end: T0 + 60_000, topic: { productId: 'p', deviceId: 'd', dataType: 'power_1m' }, n: 2, f: { w: { min: 7, max: 9, sum: 16, n: 2, last: 9 } } }))
      return s
    })())
    again.engine.tick(T0 + 60_000)
    expect(again.emitted[0].topic.messageId).toBe(b.emitted[0].topic.messageId)
  })
})

describe('rules: alarm', () => {
  const alarm = { name: 'hot', from: 'upload_data/+/+/temperature', actions: [{ alarm: { name: 'overheat', set: 'payload.t > 30.0', clear: 'payload.t < 28.0', value: 'payload.t' } }] }
  const changes = (out: Uplink[]): unknown[] => out.filter((u) => u.topic.name === 'alarm').map((u) => (json(u) as { state: string }).state)

  it('raised once (not on every message), cleared with hysteresis; the message goes up too', async () => {
    const r = rig([alarm])
    const states: unknown[] = []
    for (const [i, t] of [25, 31, 32, 29, 30, 27.9, 26, 31].entries()) {
      const out = await r.send(msg('upload_data/p/d/temperature', { t }, T0 + i * 1_000))
      expect(out.filter((u) => u.topic.name === 'temperature')).toHaveLength(1)
      states.push(...changes(out))
    }
    expect(states).toEqual(['raised', 'cleared', 'raised'])
    const [view] = r.engine.alarms()
    expect(view).toMatchObject({ rule: 'hot', alarm: 'overheat', productId: 'p', deviceId: 'd', state: 'raised', value: 31 })
  })

  it('the change is uploaded as upload_data/{p}/{d}/alarm with alarm, state, value, ts', async () => {
    const r = rig([alarm])
    const out = await r.send(msg('upload_data/p/d/temperature', { t: 35 }, T0))
    const a = out.find((u) => u.topic.name === 'alarm')!
    expect(a.topic).toMatchObject({ kind: 'upload_data', productId: 'p', deviceId: 'd', name: 'alarm' })
    expect(a.topic.messageId).toMatch(/^[0-9a-f]{24}$/)
    expect(json(a)).toEqual({ alarm: 'overheat', rule: 'hot', state: 'raised', value: 35, ts: T0 })
  })

  it('forSeconds: the condition must hold that long (debounced); the change comes on the tick', async () => {
    const r = rig([{ ...alarm, actions: [{ alarm: { ...alarm.actions[0].alarm, forSeconds: 30 } }] }])
    expect(changes(await r.send(msg('upload_data/p/d/temperature', { t: 31 }, T0)))).toEqual([])
    expect(changes(await r.send(msg('upload_data/p/d/temperature', { t: 29 }, T0 + 10_000)))).toEqual([]) // back under: debounce reset
    expect(changes(await r.send(msg('upload_data/p/d/temperature', { t: 33 }, T0 + 20_000)))).toEqual([])
    r.engine.tick(T0 + 49_999)
    expect(r.emitted).toEqual([])
    r.engine.tick(T0 + 50_000)
    expect(r.emitted.map((u) => json(u))).toEqual([{ alarm: 'overheat', rule: 'hot', state: 'raised', value: 33, ts: T0 + 50_000 }])
    r.engine.tick(T0 + 90_000)
    expect(r.emitted).toHaveLength(1)
  })
})

describe('rules: command and republish', () => {
  it('command: to a device or a tag, payload from CEL, RequestId the same for the same message', async () => {
    const r = rig([
      {
        name: 'cool',
        from: 'upload_data/+/+/temperature',
        actions: [
          { command: { deviceId: 'fan-1', name: 'set_speed', payload: '{"speed": payload.t > 30.0 ? 100 : 0}', when: 'payload.t > 30.0', expiresInSeconds: 60 } },
          { command: { tag: 'fans', name: 'alert', payload: '"hot"', when: 'payload.t > 30.0' } },
        ],
      },
    ])
    const m = msg('upload_data/site/s1/temperature', { t: 31 }, T0)
    await r.send(m)
    await r.send(msg('upload_data/site/s1/temperature', { t: 20 }, T0 + 1)) // when false: none
    expect(r.commands.map((c) => [c.device.productId, c.device.deviceId, c.name, c.payload.toString()])).toEqual([
      ['site', 'fan-1', 'set_speed', '{"speed":100}'],
      ['site', 'fan-1', 'alert', 'hot'],
      ['site', 'fan-2', 'alert', 'hot'],
    ])
    expect(r.commands[0].expiresAt).toBe(Math.floor(T0 / 1000) + 60)
    const before = r.commands[0].requestId
    await r.send(m) // the same message again (resent after a crash)
    expect(r.commands[3].requestId).toBe(before)
  })

  it('republish: the (transformed) message on a local topic with placeholders, after it is durable', async () => {
    const r = rig([{ name: 'scada', from: 'upload_data/+/+/+', actions: [{ transform: { payload: '{"v": payload.v}' } }, { republish: { topic: 'site/{productId}/{deviceId}/{dataType}', retain: true } }] }])
    await r.send(msg('upload_data/p/d/level', { v: 3, noise: 1 }, T0))
    expect(r.republished).toEqual([{ topic: 'site/p/d/level', payload: '{"v":3}', retain: true }])
  })
})

describe('rules: state is committed with the outbox rows', () => {
  let dir: string
  let db: Db
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rules-state-'))
    db = openDatabase(dir)
  })
  afterEach(() => {
    db.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const rules = [
    { name: 'hot', from: 'upload_data/+/+/temperature', actions: [{ alarm: { name: 'overheat', set: 'payload.t > 30.0', clear: 'payload.t < 28.0' } }] },
    { name: 'avg', from: 'upload_data/+/+/power', actions: [{ window: { seconds: 60, fields: ['w'] } }] },
  ]

  it('a message the rules absorb is acknowledged only once its state change is on disk', async () => {
    const outbox = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000 })
    const table = new RuleStateTable(db, outbox)
    const r = rig(rules, table)
    await r.engine.step(msg('upload_data/p/d/power', { w: 5 }, T0 + 1_000), (u) => outbox.enqueue(u))
    const rows = db.prepare('SELECT key, value FROM rule_state').all() as { key: string; value: string }[]
    expect(rows.map((x) => x.key)).toEqual(['w/avg/0/p/d'])
    expect(JSON.parse(rows[0].value)).toMatchObject({ n: 1, f: { w: { sum: 5 } } })
  })

  it('a failed commit refuses the message and puts the rules back to what is on disk (no double count on the resend)', async () => {
    const outbox = new Outbox(db, { maxBytes: 1 << 30, rpcRespTtlMs: 10_000 })
    outbox.on('error', () => undefined)
    const table = new RuleStateTable(db, outbox)
    const r = rig(rules, table)
    const hot = msg('upload_data/p/d/temperature', { t: 35 }, T0)
    db.exec("CREATE TRIGGER fail BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    await expect(r.engine.step(hot, (u) => outbox.enqueue(u))).rejects.toThrow(/disk trouble/)
    expect(r.engine.alarms()).toEqual([])
    expect(db.prepare('SELECT COUNT(*) AS n FROM rule_state').get()).toEqual({ n: 0 })
    db.exec('DROP TRIGGER fail')
    await r.engine.step(hot, (u) => outbox.enqueue(u))
    const topics = (outbox.read(1, 0, 10).concat(outbox.read(2, 0, 10))).map((x) => x.topic.split('/')[3]).sort()
    expect(topics).toEqual(['alarm', 'temperature'])
    expect(r.engine.alarms()).toMatchObject([{ state: 'raised' }])
  })
})
