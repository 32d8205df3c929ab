// The rule engine: the rules slot of the uplink pipeline (UplinkPipeline.setRules). Each message of
// a kind rules see passes the configured rules in order; a rule whose `from` matches and whose
// `where` holds applies its actions in order to the message as the rules before it left it.
//
// Durable and exact (decision 0013-rules): the state the actions keep (window accumulators, last
// reported values, alarm states) is staged in the RuleStateStore while the message is evaluated, and
// written by the same group commit as the outbox rows the message led to. The step's promise (the
// device's acknowledgement) resolves only after that commit. A kill -9 before it loses the message,
// its outputs and its state change together, and the device sends again; after it, all are on disk.
// A failed commit puts the state back to what is on disk. Timer-driven outputs (a window that ends,
// an alarm whose debounce ran out) commit with the state change that made them, and their MessageIds
// are derived from what made them, so even a repeat would be dropped by the hub as a duplicate.
import { createHash } from 'node:crypto'
import type { Command, DeviceRef, RuleStateStore, Uplink } from '../core/types.js'
import { deviceKey } from '../core/types.js'
import type { UpTopic } from '../core/hub-topics.js'
import type { CompiledAction, CompiledRule } from './compile.js'
import { RULE_KINDS } from './compile.js'
import { errorLine, toJson, type CelContext } from './cel.js'
import type { AlarmView, RuleStats } from './rule-types.js'

export type { AlarmView, RuleStats } from './rule-types.js'

/** What the engine needs of the gateway (the composition root wires it; tests hand in their own). */
export interface RulesDeps {
  state: RuleStateStore
  /** Straight to the outbox, for what the timer emits (a closed window, a debounced alarm). */
  emit: (up: Uplink) => Promise<void>
  /** The normal command path (durable queue); a repeated RequestId is dropped there as a duplicate. */
  sendCommand: (cmd: Command) => void
  /** Every device of a product that carries a tag. */
  devicesWithTag: (productId: string, tag: string) => DeviceRef[]
  /** Publish on the local broker for on-site consumers; rejects when there is no local broker. */
  republish: (topic: string, payload: Buffer, retain: boolean) => Promise<void>
  tagsOf: (device: DeviceRef) => readonly string[]
  now: () => number
  log: { warn: (obj: object, msg: string) => void }
}

/** What each rule did to one message (`iothub-edge rules test`). */
export interface RuleTrace {
  rule: string
  matched: boolean
  where?: boolean
  actions: { action: string; result: string }[]
  error?: string
}

export interface Outcome {
  /** What goes to the outbox: the message as the rules left it (unless dropped) and what they emitted. */
  uplinks: Uplink[]
  /** Local broker publications, made once the uplinks are durable. */
  republish: { topic: string; payload: Buffer; retain: boolean }[]
  commands: Command[]
  /** State changed: the acknowledgement waits for the commit even when nothing goes up. */
  stateChanged: boolean
}

type Step = (up: Uplink, next: (up: Uplink) => Promise<void>) => Promise<void>

interface WindowField {
  min: number
  max: number
  sum: number
  n: number
  last: number
}
interface WindowState {
  start: number
  end: number
  topic: { productId: string; deviceId: string; dataType: string }
  n: number
  f: Record<string, WindowField>
}
interface ReportState {
  v: Record<string, unknown>
  at: number
}
interface AlarmState {
  state: 'raised' | 'cleared'
  value: unknown
  since: number
  pendingSince?: number
  pendingValue?: unknown
}

/**
 * The CEL variables of one message. A class, its lazy parts (payload: a JSON parse; device: a tags
 * lookup) getters on the prototype: every context has the same shape, which keeps evaluation fast.
 */
class MessageContext implements CelContext {
  readonly raw: Buffer
  readonly dataType: string
  readonly kind: string
  private dev: unknown
  private metaMap: Record<string, unknown> | undefined

  constructor(private readonly w: Working) {
    const up = w.up
    this.raw = up.payload
    this.dataType = w.dataType
    this.kind = up.topic.kind
  }

  get payload(): unknown {
    return this.w.json()
  }

  get ts(): bigint {
    return BigInt(this.w.up.receivedAt)
  }

  get meta(): unknown {
    if (this.metaMap) return this.metaMap
    const up = this.w.up
    const meta: Record<string, unknown> = { transport: up.transport }
    if (up.meta) for (const [k, v] of Object.entries(up.meta)) if (v !== undefined) meta[k] = v
    return (this.metaMap = meta)
  }

  get device(): unknown {
    const t = this.w.up.topic
    return (this.dev ??= { productId: t.productId, deviceId: t.deviceId, tags: [...this.w.tags()] })
  }
}

/** One message on its way through the rules. */
class Working {
  value: unknown
  private parsed = false
  private ctx: CelContext | undefined
  levels: string[]

  constructor(
    public up: Uplink,
    private readonly tagsOf: (d: DeviceRef) => readonly string[],
  ) {
    this.levels = topicLevels(up.topic)
  }

  get device(): DeviceRef {
    return { productId: this.up.topic.productId, deviceId: this.up.topic.deviceId }
  }

  private devKey: string | undefined
  /** `{p}/{d}`: the device part of the rules' state keys (the device never changes along the way). */
  deviceKey(): string {
    return (this.devKey ??= `${this.up.topic.productId}/${this.up.topic.deviceId}`)
  }

  private at: number | undefined
  /** The clock, read once per message and only by an action that needs it. */
  now(clock: () => number): number {
    return (this.at ??= clock())
  }

  get dataType(): string {
    return this.up.topic.name ?? ''
  }

  json(): unknown {
    if (!this.parsed) {
      this.parsed = true
      this.value = looksLikeJson(this.up.payload) ? parseOrNull(this.up.payload) : null
    }
    return this.value
  }

  private key: string | undefined
  /** Kind, device, DataType (and the tags, for an expression that reads them): what a topic-only expression depends on. */
  topicKey(withTags: boolean): string {
    this.key ??= this.levels.join('/')
    return withTags ? `${this.key}\u0000${this.tags().join('\u0000')}` : this.key
  }

  private tagList: readonly string[] | undefined
  tags(): readonly string[] {
    return (this.tagList ??= this.tagsOf(this.device))
  }

  context(): CelContext {
    return (this.ctx ??= new MessageContext(this))
  }

  restore(up: Uplink): void {
    this.up = up
    this.parsed = false
    this.ctx = undefined
    this.key = undefined
    this.levels = topicLevels(up.topic)
  }

  replace(payload: Buffer, value: unknown, dataType: string | undefined): void {
    const topic: UpTopic = dataType === undefined || this.up.topic.kind !== 'upload_data' ? this.up.topic : { ...this.up.topic, name: dataType }
    this.up = { ...this.up, topic, payload }
    this.value = value
    this.parsed = true
    this.ctx = undefined
    this.key = undefined
    this.levels = topicLevels(topic)
  }
}

/** A payload that cannot be JSON is told apart without the cost of a parse error (binary frames, plain text). */
function looksLikeJson(b: Buffer): boolean {
  let i = 0
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++
  const c = b[i]
  // { [ " - 0-9 t f n
  return c === 0x7b || c === 0x5b || c === 0x22 || c === 0x2d || (c >= 0x30 && c <= 0x39) || c === 0x74 || c === 0x66 || c === 0x6e
}

function parseOrNull(b: Buffer): unknown {
  try {
    return JSON.parse(b.toString('utf8'))
  } catch {
    return null
  }
}

function topicLevels(t: UpTopic): string[] {
  return t.kind === 'upload_data' ? [t.kind, t.productId, t.deviceId, t.name ?? ''] : [t.kind, t.productId, t.deviceId]
}

/** MQTT filter matching over levels; a wildcard never matches a level starting with $ (internal data types). */
function matches(filter: string[], levels: string[]): boolean {
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]
    if (f === '#') {
      for (let j = i; j < levels.length; j++) if (levels[j].charCodeAt(0) === 0x24) return false
      return true
    }
    if (i >= levels.length) return false
    if (f === '+') {
      if (levels[i].charCodeAt(0) === 0x24) return false
    } else if (f !== levels[i]) return false
  }
  return filter.length === levels.length
}

function field(value: unknown, path: string[]): unknown {
  let v = value
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<string, unknown>)[p]
  }
  return v
}

/** 24 hex characters (PROTOCOL.md MessageId shape), the same for the same cause. */
function derivedId(...parts: (string | number)[]): string {
  return createHash('sha1').update(parts.join('\u0000')).digest('hex').slice(0, 24)
}

function payloadOf(v: unknown): Buffer {
  if (typeof v === 'string') return Buffer.from(v)
  if (v instanceof Uint8Array) return Buffer.from(v)
  return Buffer.from(JSON.stringify(toJson(v)))
}

const TICK_MS = 1_000
const MEMO_MAX = 10_000
const WARN_EVERY_MS = 60_000
const EVAL_SAMPLE = 8

export class RulesEngine {
  private readonly state = new Map<string, unknown>()
  private readonly buckets = new Map<string, { tokens: number; at: number }>()
  private readonly stats: Map<string, RuleStats>
  private readonly statList: RuleStats[]
  private readonly warnedAt = new Map<string, number>()
  private timer?: NodeJS.Timeout
  private nextDue = 0
  private evaluated = 0

  constructor(
    readonly rules: readonly CompiledRule[],
    private readonly d: RulesDeps,
  ) {
    this.stats = new Map(
      rules.map((r) => [
        r.name,
        { name: r.name, from: r.from, actions: r.actions.map((a) => a.kind), matched: 0, dropped: 0, emitted: 0, commands: 0, republished: 0, errors: 0, evalSeconds: 0, lastError: null },
      ]),
    )
    this.statList = rules.map((r) => this.stats.get(r.name)!)
    d.state.onFailed(() => this.reload())
  }

  /** Load the state kept across restarts; close what ended while the gateway was down. */
  start(): void {
    this.reload()
    this.tick(this.d.now())
    this.timer = setInterval(() => this.tick(this.d.now()), TICK_MS)
    this.timer.unref()
  }

  stop(): void {
    clearInterval(this.timer)
  }

  private reload(): void {
    this.state.clear()
    for (const [k, v] of this.d.state.load()) {
      try {
        this.state.set(k, JSON.parse(v))
      } catch {
        // A value this version cannot read: start that piece of state afresh.
      }
    }
    this.nextDue = 0
  }

  private put(key: string, value: unknown): void {
    if (value === undefined) this.state.delete(key)
    else this.state.set(key, value)
    this.d.state.stage(key, value === undefined ? undefined : JSON.stringify(value))
  }

  /** The pipeline step: resolves once the message, its outputs and the rules' state are durable. */
  readonly step: Step = (up, next) => {
    if (this.rules.length === 0 || !(RULE_KINDS as readonly string[]).includes(up.topic.kind)) return next(up)
    const out = this.evaluate(up)
    if (out.uplinks.length === 1 && out.uplinks[0] === up && !out.stateChanged && !out.commands.length && !out.republish.length) return next(up)
    for (const c of out.commands) this.sendCommand(c)
    const waits = out.uplinks.map((u) => next(u))
    if (out.stateChanged) waits.push(this.d.state.committed())
    const done = waits.length === 1 ? waits[0] : Promise.all(waits).then(() => undefined)
    if (out.republish.length === 0) return done
    // Live data for on-site consumers: published once what it came from is durable, best effort.
    return done.then(() => {
      for (const r of out.republish) this.republish(r)
    })
  }

  /**
   * Run the rules on one message (synchronous: the state staged here and the outbox rows the caller
   * enqueues in the same turn land in one group commit).
   */
  evaluate(up: Uplink, trace?: RuleTrace[]): Outcome {
    const w = new Working(up, this.d.tagsOf)
    const out: Outcome = { uplinks: [], republish: [], commands: [], stateChanged: false }
    let alive = true
    // The time per rule is sampled: one message in EVAL_SAMPLE is timed (a clock reading per matching
    // rule, each rule's time running from the end of the one before) and counts EVAL_SAMPLE times.
    // Reading the clock around every rule of every message cost more than many rules themselves.
    const timed = ++this.evaluated % EVAL_SAMPLE === 0
    let t0 = 0
    for (let i = 0; i < this.rules.length; i++) {
      const rule = this.rules[i]
      if (!matches(rule.filter, w.levels)) {
        trace?.push({ rule: rule.name, matched: false, actions: [] })
        continue
      }
      const st = this.statList[i]
      if (timed && t0 === 0) t0 = performance.now()
      const tr: RuleTrace | undefined = trace ? { rule: rule.name, matched: true, actions: [] } : undefined
      if (tr) trace!.push(tr)
      const before = w.up
      const marks = out.uplinks.length
      const marksRepublish = out.republish.length
      const marksCommands = out.commands.length
      try {
        if (rule.where && this.where(rule, i, w) !== true) {
          if (tr) tr.where = false
          continue
        }
        if (tr && rule.where) tr.where = true
        st.matched++
        for (const a of rule.actions) {
          const r = this.apply(rule, a, w, out, st)
          tr?.actions.push({ action: a.kind, result: r })
          if (r === 'dropped' || r === 'absorbed') {
            if (r === 'dropped') st.dropped++
            alive = false
            break
          }
        }
      } catch (err) {
        // The message goes on as it was before this rule; what the rule had emitted for it is undone.
        w.restore(before)
        out.uplinks.length = marks
        out.republish.length = marksRepublish
        out.commands.length = marksCommands
        alive = true
        this.failed(st, w, err)
        if (tr) tr.error = errorLine(err)
      } finally {
        if (timed) {
          const t1 = performance.now()
          st.evalSeconds += ((t1 - t0) / 1000) * EVAL_SAMPLE
          t0 = t1
        }
      }
      if (!alive) break
    }
    if (alive) out.uplinks.unshift(w.up)
    return out
  }

  // A where that reads only device, dataType and kind is the same for every message of a device and
  // DataType: remembered (errors too) rather than evaluated per message.
  private readonly whereMemo: (Map<string, unknown> | undefined)[] = []

  private where(rule: CompiledRule, i: number, w: Working): unknown {
    const where = rule.where!
    if (!where.topicOnly) return where(w.context())
    let memo = this.whereMemo[i]
    if (!memo) this.whereMemo[i] = memo = new Map()
    const key = w.topicKey(where.readsDevice)
    let r = memo.get(key)
    if (r === undefined) {
      try {
        r = where(w.context())
      } catch (err) {
        r = err instanceof Error ? err : new Error(String(err))
      }
      if (memo.size >= MEMO_MAX) memo.clear()
      memo.set(key, r)
    }
    if (r instanceof Error) throw r
    return r
  }

  private failed(st: RuleStats, w: Working, err: unknown): void {
    st.errors++
    const message = errorLine(err)
    const device = deviceKey(w.device)
    st.lastError = { message, at: this.d.now(), device }
    // Counted always, logged once a minute per rule: a sensor that lacks a field sends it every time.
    const last = this.warnedAt.get(st.name) ?? -Infinity
    if (this.d.now() - last >= WARN_EVERY_MS) {
      this.warnedAt.set(st.name, this.d.now())
      this.d.log.warn(
        { rule: st.name, device, err: message, errors: st.errors },
        `rule ${st.name}: an expression failed on a message, which went on unchanged; guard optional fields with has(payload.x) or payload.?x.orValue(...) (GET /api/rules shows the last error)`,
      )
    }
  }

  private apply(rule: CompiledRule, a: CompiledAction, w: Working, out: Outcome, st: RuleStats): string {
    switch (a.kind) {
      case 'drop':
        return 'dropped'
      case 'transform': {
        if (a.payload) {
          const v = toJson(a.payload(w.context()))
          w.replace(typeof v === 'string' ? Buffer.from(v) : Buffer.from(JSON.stringify(v)), v, a.dataType)
        } else {
          w.replace(w.up.payload, w.json(), a.dataType)
        }
        return 'transformed'
      }
      case 'rateLimit': {
        const key = a.key + w.deviceKey()
        const now = w.now(this.d.now)
        let b = this.buckets.get(key)
        if (!b) this.buckets.set(key, (b = { tokens: a.burst, at: now }))
        b.tokens = Math.min(a.burst, b.tokens + ((now - b.at) / a.periodMs) * a.burst)
        b.at = now
        if (b.tokens < 1) return 'dropped'
        b.tokens -= 1
        return 'passed'
      }
      case 'reportOnChange': {
        const key = a.key + w.deviceKey()
        const now = w.now(this.d.now)
        const last = this.state.get(key) as ReportState | undefined
        const value = w.json()
        const current: Record<string, unknown> = {}
        a.fields.forEach((f, i) => (current[a.fieldNames[i]] = field(value, f)))
        const changed = !last || a.fieldNames.some((f) => moved(last.v[f], current[f], a.deadband))
        const heartbeat = last !== undefined && a.heartbeatMs > 0 && now - last.at >= a.heartbeatMs
        if (!changed && !heartbeat) return 'dropped'
        this.put(key, { v: current, at: now } satisfies ReportState)
        out.stateChanged = true
        return changed ? 'changed' : 'heartbeat'
      }
      case 'window': {
        const key = a.key + w.deviceKey()
        const ts = w.up.receivedAt
        const start = Math.floor(ts / a.ms) * a.ms
        let acc = this.state.get(key) as WindowState | undefined
        if (acc && acc.start !== start) {
          out.uplinks.push(this.windowUplink(rule, a, key, acc))
          st.emitted++
          acc = undefined
        }
        acc ??= { start, end: start + a.ms, topic: { productId: w.device.productId, deviceId: w.device.deviceId, dataType: a.dataType ?? (w.dataType || 'status') }, n: 0, f: {} }
        const value = w.json()
        acc.n++
        a.fields.forEach((f, i) => {
          const v = field(value, f)
          if (typeof v !== 'number' || !Number.isFinite(v)) return
          const name = a.fieldNames[i]
          const s = acc.f[name]
          acc.f[name] = s ? { min: Math.min(s.min, v), max: Math.max(s.max, v), sum: s.sum + v, n: s.n + 1, last: v } : { min: v, max: v, sum: v, n: 1, last: v }
        })
        this.put(key, acc)
        this.due(acc.end)
        out.stateChanged = true
        return 'absorbed'
      }
      case 'alarm': {
        const key = a.key + w.deviceKey()
        const s = (this.state.get(key) as AlarmState | undefined) ?? { state: 'cleared', value: null, since: 0 }
        const ctx = w.context()
        const cond = (s.state === 'cleared' ? a.set(ctx) : a.clear(ctx)) === true
        if (!cond) {
          if (s.pendingSince === undefined) return `${s.state} (unchanged)`
          this.put(key, { state: s.state, value: s.value, since: s.since } satisfies AlarmState)
          out.stateChanged = true
          return `${s.state} (debounce reset)`
        }
        const value = toJson(a.value ? a.value(ctx) : w.json())
        const now = w.now(this.d.now)
        if (a.forMs > 0 && (s.pendingSince === undefined || now - s.pendingSince < a.forMs)) {
          const pendingSince = s.pendingSince ?? now
          this.put(key, { ...s, pendingSince, pendingValue: value } satisfies AlarmState)
          this.due(pendingSince + a.forMs)
          out.stateChanged = true
          return `${s.state} (pending)`
        }
        out.uplinks.push(this.alarmChange(rule, a.name, key, s, value, now, w.up.topic.messageId))
        st.emitted++
        out.stateChanged = true
        return s.state === 'cleared' ? 'raised' : 'cleared'
      }
      case 'command': {
        const ctx = w.context()
        if (a.when && a.when(ctx) !== true) return 'not sent'
        const payload = a.payload ? payloadOf(a.payload(ctx)) : Buffer.alloc(0)
        const productId = a.productId ?? w.device.productId
        const targets = a.tag !== undefined ? this.d.devicesWithTag(productId, a.tag) : [{ productId, deviceId: a.deviceId ?? w.device.deviceId }]
        // Derived from the message: a message sent again (no PUBACK before a crash) makes the same
        // RequestId, which the command queue drops as a duplicate.
        const requestId = derivedId('cmd', rule.name, rule.actions.indexOf(a), deviceKey(w.device), w.up.topic.messageId)
        const expiresAt = a.expiresInSeconds ? Math.floor(w.now(this.d.now) / 1000) + a.expiresInSeconds : undefined
        for (const device of targets) out.commands.push({ type: 'cmd', device, name: a.name, encoding: 'plain', requestId, expiresAt, payload })
        st.commands += targets.length
        return `${targets.length} command(s)`
      }
      case 'republish': {
        const t = w.up.topic
        const topic = a.topic.replace(/\{(productId|deviceId|dataType)\}/g, (_, k: string) => (k === 'productId' ? t.productId : k === 'deviceId' ? t.deviceId : (t.name ?? '')))
        out.republish.push({ topic, payload: w.up.payload, retain: a.retain })
        st.republished++
        return topic
      }
    }
  }

  private alarmChange(rule: CompiledRule, alarm: string, key: string, s: AlarmState, value: unknown, now: number, cause: string): Uplink {
    const state = s.state === 'cleared' ? 'raised' : 'cleared'
    this.put(key, { state, value, since: now } satisfies AlarmState)
    const [productId, deviceId] = key.split('/').slice(3)
    return {
      topic: { kind: 'upload_data', productId, deviceId, name: 'alarm', messageId: derivedId('alarm', key, state, cause) },
      payload: Buffer.from(JSON.stringify({ alarm: alarm, rule: rule.name, state, value, ts: now })),
      transport: 'internal',
      receivedAt: now,
    }
  }

  private windowUplink(rule: CompiledRule, a: Extract<CompiledAction, { kind: 'window' }>, key: string, acc: WindowState): Uplink {
    this.put(key, undefined)
    const body: Record<string, unknown> = { start: acc.start, end: acc.end, count: acc.n }
    for (const name of a.fieldNames) {
      const s = acc.f[name]
      if (!s) continue
      const agg: Record<string, number> = {}
      for (const g of a.aggregates) agg[g] = g === 'avg' ? s.sum / s.n : g === 'count' ? s.n : s[g]
      body[name] = agg
    }
    return {
      topic: { kind: 'upload_data', productId: acc.topic.productId, deviceId: acc.topic.deviceId, name: acc.topic.dataType, messageId: derivedId('window', key, acc.start) },
      payload: Buffer.from(JSON.stringify(body)),
      transport: 'internal',
      receivedAt: acc.end,
    }
  }

  private due(at: number): void {
    if (this.nextDue === 0 || at < this.nextDue) this.nextDue = at
  }

  /**
   * Close the windows that ended and change the alarms whose debounce ran out. Each output and the
   * state change that made it go into the same group commit.
   */
  tick(now: number): void {
    if (this.nextDue !== 0 && now < this.nextDue) return
    let next = 0
    const emits: Uplink[] = []
    for (const [key, v] of this.state) {
      if (key.startsWith('w/')) {
        const acc = v as WindowState
        if (acc.end > now) {
          next = next === 0 ? acc.end : Math.min(next, acc.end)
          continue
        }
        const found = this.actionFor(key, 'window')
        if (!found) {
          this.put(key, undefined) // the rule is gone from the config
          continue
        }
        emits.push(this.windowUplink(found.rule, found.action as Extract<CompiledAction, { kind: 'window' }>, key, acc))
        this.stats.get(found.rule.name)!.emitted++
      } else if (key.startsWith('a/')) {
        const s = v as AlarmState
        if (s.pendingSince === undefined) continue
        const found = this.actionFor(key, 'alarm')
        if (!found) continue
        const a = found.action as Extract<CompiledAction, { kind: 'alarm' }>
        const at = s.pendingSince + a.forMs
        if (at > now) {
          next = next === 0 ? at : Math.min(next, at)
          continue
        }
        emits.push(this.alarmChange(found.rule, a.name, key, s, s.pendingValue ?? null, now, `held:${s.pendingSince}`))
        this.stats.get(found.rule.name)!.emitted++
      }
    }
    this.nextDue = next
    for (const up of emits) {
      // A failed commit reloads the state from disk (onFailed): the same outputs come again next tick.
      this.d.emit(up).catch((err: unknown) => this.d.log.warn({ err: errorLine(err), topic: up.topic.name }, 'rules: could not store a window or alarm output; retried on the next tick'))
    }
  }

  /** The rule and action a state key belongs to: `w/{rule}/{action index}/{p}/{d}`, `a/{rule}/{alarm}/{p}/{d}`. */
  private actionFor(key: string, kind: 'window' | 'alarm'): { rule: CompiledRule; action: CompiledAction } | undefined {
    const [, ruleName, which] = key.split('/')
    const rule = this.rules.find((r) => r.name === ruleName)
    if (!rule) return undefined
    const action = kind === 'window' ? rule.actions[Number(which)] : rule.actions.find((a) => a.kind === 'alarm' && a.name === which)
    return action?.kind === kind ? { rule, action } : undefined
  }

  private sendCommand(cmd: Command): void {
    try {
      this.d.sendCommand(cmd)
    } catch (err) {
      this.d.log.warn({ err: errorLine(err), device: deviceKey(cmd.device), command: cmd.name }, 'rules: a command could not be queued')
    }
  }

  private republish(r: { topic: string; payload: Buffer; retain: boolean }): void {
    this.d.republish(r.topic, r.payload, r.retain).catch((err: unknown) => {
      const last = this.warnedAt.get(`republish`) ?? -Infinity
      if (this.d.now() - last < WARN_EVERY_MS) return
      this.warnedAt.set('republish', this.d.now())
      this.d.log.warn({ err: errorLine(err), topic: r.topic }, 'rules: republish on the local broker failed (is the broker adapter running?)')
    })
  }

  ruleStats(): RuleStats[] {
    return [...this.stats.values()].map((s) => ({ ...s, lastError: s.lastError && { ...s.lastError } }))
  }

  alarms(): AlarmView[] {
    const out: AlarmView[] = []
    for (const [key, v] of this.state) {
      if (!key.startsWith('a/')) continue
      const [, rule, alarm, productId, deviceId] = key.split('/')
      const s = v as AlarmState
      if (s.since === 0 && s.pendingSince === undefined) continue
      out.push({ rule, alarm, productId, deviceId, state: s.state, value: s.value, since: s.since, pendingSince: s.pendingSince ?? null })
    }
    return out.sort((x, y) => (x.state === y.state ? y.since - x.since : x.state === 'raised' ? -1 : 1))
  }
}

/** A field moved: a number by more than the deadband, anything else by being different. */
function moved(before: unknown, now: unknown, deadband: number): boolean {
  if (typeof before === 'number' && typeof now === 'number') return Math.abs(now - before) > deadband
  return JSON.stringify(before) !== JSON.stringify(now)
}
