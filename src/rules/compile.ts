// Rules from the config, compiled once at start: each CEL expression parsed and type checked, each
// `from` filter checked against the topics rules can see. Every problem names its key path
// (`rules[2].actions[0].transform.payload: ...`), like the schema's own errors, so that a wrong rule
// stops the start (exit 78) instead of failing on the first message.
import type { Aggregate, RuleAction, RuleConfig } from './schema.js'
import { compileCel, type CompiledExpression } from './cel.js'

export type CompiledAction =
  | { kind: 'drop' }
  | { kind: 'transform'; payload?: CompiledExpression; dataType?: string }
  | { kind: 'reportOnChange'; fields: string[][]; fieldNames: string[]; deadband: number; heartbeatMs: number; key: string }
  | { kind: 'window'; ms: number; fields: string[][]; fieldNames: string[]; aggregates: Aggregate[]; dataType?: string; key: string }
  | { kind: 'alarm'; name: string; set: CompiledExpression; clear: CompiledExpression; forMs: number; value?: CompiledExpression; key: string }
  | {
      kind: 'command'
      productId?: string
      deviceId?: string
      tag?: string
      name: string
      payload?: CompiledExpression
      when?: CompiledExpression
      expiresInSeconds?: number
    }
  | { kind: 'republish'; topic: string; retain: boolean }
  | { kind: 'rateLimit'; periodMs: number; burst: number; key: string }

export interface CompiledRule {
  name: string
  from: string
  /** The filter's levels, matched against the message's (kind/product/device[/dataType]). */
  filter: string[]
  where?: CompiledExpression
  actions: CompiledAction[]
  /** Index in the config (for key paths in logs). */
  index: number
}

/** The kinds of up message rules see; the others (replies, requests, m2m, OTA progress) pass untouched. */
export const RULE_KINDS = ['upload_data', 'update_status'] as const

export function compileRules(rules: readonly RuleConfig[]): { rules: CompiledRule[]; problems: string[] } {
  const problems: string[] = []
  const names = new Set<string>()
  const out: CompiledRule[] = []
  rules.forEach((r, i) => {
    const at = `rules[${i}]`
    if (names.has(r.name)) problems.push(`${at}.name: duplicate rule name "${r.name}" (names key the rule's state and metrics)`)
    names.add(r.name)
    const cel = (source: string, key: string): CompiledExpression => {
      try {
        return compileCel(source)
      } catch (err) {
        problems.push(`${at}.${key}: ${(err as Error).message}`)
        return Object.assign(() => undefined, { topicOnly: false, readsDevice: false })
      }
    }
    const filterProblem = checkFilter(r.from)
    if (filterProblem) problems.push(`${at}.from: ${filterProblem}`)
    const actions = r.actions.map((a, j) => compileAction(a, `actions[${j}]`, cel, (p) => problems.push(`${at}.actions[${j}]${p}`), stateKey(r.name, j, a)))
    const last = r.actions.length - 1
    r.actions.forEach((a, j) => {
      if (a.window && j !== last) problems.push(`${at}.actions[${j}].window: must be the rule's last action (the message ends in the window; what comes up is the aggregate)`)
    })
    const alarmNames = new Set<string>()
    for (const a of r.actions) {
      if (!a.alarm) continue
      if (alarmNames.has(a.alarm.name)) problems.push(`${at}.actions: two alarms named "${a.alarm.name}" in one rule`)
      alarmNames.add(a.alarm.name)
    }
    out.push({ name: r.name, from: r.from, filter: r.from.split('/'), where: r.where === undefined ? undefined : cel(r.where, 'where'), actions, index: i })
  })
  return { rules: out, problems }
}

function compileAction(
  a: RuleAction,
  key: string,
  cel: (source: string, key: string) => CompiledExpression,
  problem: (p: string) => void,
  state: string,
): CompiledAction {
  if (a.drop) return { kind: 'drop' }
  if (a.transform) {
    const t = a.transform
    return { kind: 'transform', payload: t.payload === undefined ? undefined : cel(t.payload, `${key}.transform.payload`), dataType: t.dataType }
  }
  if (a.reportOnChange) {
    const r = a.reportOnChange
    return { kind: 'reportOnChange', fields: r.fields.map((f) => f.split('.')), fieldNames: r.fields, deadband: r.deadband, heartbeatMs: r.heartbeatSeconds * 1000, key: state }
  }
  if (a.window) {
    const w = a.window
    return { kind: 'window', ms: w.seconds * 1000, fields: w.fields.map((f) => f.split('.')), fieldNames: w.fields, aggregates: w.aggregates, dataType: w.dataType, key: state }
  }
  if (a.alarm) {
    const al = a.alarm
    return {
      kind: 'alarm',
      name: al.name,
      set: cel(al.set, `${key}.alarm.set`),
      clear: cel(al.clear, `${key}.alarm.clear`),
      forMs: al.forSeconds * 1000,
      value: al.value === undefined ? undefined : cel(al.value, `${key}.alarm.value`),
      key: state,
    }
  }
  if (a.command) {
    const c = a.command
    if (c.tag !== undefined && c.deviceId !== undefined) problem('.command: set deviceId or tag, not both')
    return {
      kind: 'command',
      productId: c.productId,
      deviceId: c.deviceId,
      tag: c.tag,
      name: c.name,
      payload: c.payload === undefined ? undefined : cel(c.payload, `${key}.command.payload`),
      when: c.when === undefined ? undefined : cel(c.when, `${key}.command.when`),
      expiresInSeconds: c.expiresInSeconds,
    }
  }
  if (a.republish) {
    const topic = a.republish.topic
    if (/[+#\u0000]/.test(topic) || topic.startsWith('$')) problem('.republish.topic: no wildcards (+, #), NUL or leading $ in a topic one publishes on')
    const unknown = [...topic.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]).filter((p) => !['productId', 'deviceId', 'dataType'].includes(p))
    if (unknown.length) problem(`.republish.topic: unknown placeholder {${unknown[0]}} (use {productId}, {deviceId}, {dataType})`)
    return { kind: 'republish', topic, retain: a.republish.retain }
  }
  if (a.rateLimit) return { kind: 'rateLimit', periodMs: a.rateLimit.perSeconds * 1000, burst: a.rateLimit.burst, key: state }
  // The schema lets exactly one known key through; this is for a schema and a compiler out of step.
  problem(': unknown action')
  return { kind: 'drop' }
}

/**
 * The prefix of the keys an action keeps its state under, one per device after it: `r/{rule}/{action
 * index}/`, `w/{rule}/{action index}/`, `a/{rule}/{alarm}/` (stored in rule_state, so these shapes
 * must not change) and `{rule}/` for the rate limiter's in-memory buckets. Built once, at start.
 */
function stateKey(rule: string, index: number, a: RuleAction): string {
  if (a.reportOnChange) return `r/${rule}/${index}/`
  if (a.window) return `w/${rule}/${index}/`
  if (a.alarm) return `a/${rule}/${a.alarm.name}/`
  return `${rule}/`
}

function checkFilter(from: string): string | undefined {
  const levels = from.split('/')
  const kind = levels[0]
  if (!(RULE_KINDS as readonly string[]).includes(kind)) return `must start with ${RULE_KINDS.join('/ or ')}/ (rules see telemetry and status)`
  const hash = levels.indexOf('#')
  if (hash >= 0 && hash !== levels.length - 1) return '# must be the last level'
  if (levels.some((l) => l !== '+' && l !== '#' && (l === '' || /[+#]/.test(l)))) return 'a level is empty, or mixes + or # with other characters'
  const want = kind === 'upload_data' ? 4 : 3
  if (hash < 0 && levels.length !== want) {
    return kind === 'upload_data'
      ? 'upload_data/{ProductId}/{DeviceId}/{DataType} (4 levels, no MessageId; + and # as in MQTT)'
      : 'update_status/{ProductId}/{DeviceId} (3 levels, no MessageId; + and # as in MQTT)'
  }
  if (levels.length > want) return `at most ${want} levels (the MessageId is not part of it)`
  return undefined
}
