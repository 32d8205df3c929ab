// CEL (Common Expression Language) for the rules, with @marcbachmann/cel-js: typed, not Turing
// complete, no host access (the project never evaluates user code with eval, new Function or
// node:vm). One environment declares the variables a rule sees; expressions are parsed and type
// checked once, at start, and every error is reported against the key it came from.
// cel-js is loaded by the first expression compiled, so a gateway without rules never holds it
// (~0.8 MB of heap, docs/performance.md "2026-12-03"); compiling is synchronous (the config's
// check), hence `require` of the ES module (Node.js >= 20.19 and 22.12).
import { createRequire } from 'node:module'
import type { Environment } from '@marcbachmann/cel-js'

/** The variables every expression sees (documented in docs/operators/rules.md). */
export const CEL_VARIABLES = {
  payload: { type: 'dyn', doc: 'the payload parsed as JSON (numbers are doubles); null when it is not JSON' },
  raw: { type: 'bytes', doc: 'the payload bytes as received' },
  device: { type: 'map', doc: '{productId, deviceId, tags}' },
  dataType: { type: 'string', doc: 'the DataType (upload_data), "" for update_status' },
  kind: { type: 'string', doc: '"upload_data" or "update_status"' },
  meta: { type: 'map', doc: 'what the transport knew: transport, rssi, snr, frameCounter, gatewayCount, port, unitId, battery, remoteAddress (only those it knew)' },
  ts: { type: 'int', doc: 'when the gateway received the message, milliseconds since the epoch' },
} as const

export type CelContext = Record<keyof typeof CEL_VARIABLES, unknown>

let environment: Environment | undefined

function celEnvironment(): Environment {
  if (environment) return environment
  const { Environment } = createRequire(import.meta.url)('@marcbachmann/cel-js') as typeof import('@marcbachmann/cel-js')
  const env = new Environment({
    // JSON maps mix value types ({"t": 21.5, "unit": "C"}); literal maps a rule builds do too.
    homogeneousAggregateLiterals: false,
    // payload.?humidity.orValue(0.0): a field that may be missing, without an error.
    enableOptionalTypes: true,
    limits: { maxAstNodes: 2_000, maxDepth: 50, maxListElements: 1_000, maxMapEntries: 200, maxCallArguments: 16 },
  })
  for (const [name, v] of Object.entries(CEL_VARIABLES)) env.registerVariable(name, v.type)
  return (environment = env)
}

export type CompiledExpression = ((ctx: CelContext) => unknown) & {
  /**
   * It reads only `device`, `dataType` and `kind`: its result is the same for every message of one
   * device and DataType (with the same tags), so the engine may remember it instead of evaluating it
   * per message.
   */
  topicOnly: boolean
  /** It reads `device` (whose tags cost a registry lookup). */
  readsDevice: boolean
}

const TOPIC_VARIABLES = new Set(['device', 'dataType', 'kind'])

/** Parse and type-check; throws an Error whose message says what is wrong and where. */
export function compileCel(source: string): CompiledExpression {
  const env = celEnvironment()
  const checked = env.check(source)
  if (!checked.valid) throw new Error(firstLines(checked.error?.message ?? 'invalid expression'))
  const fn = env.parse(source)
  const vars = new Set<string>()
  collectIdentifiers(fn.ast, vars)
  const used = [...vars].filter((v) => v in CEL_VARIABLES)
  return Object.assign((ctx: CelContext) => fn(ctx), { topicOnly: used.every((v) => TOPIC_VARIABLES.has(v)), readsDevice: used.includes('device') })
}

/** The identifiers an expression's syntax tree names (variables, and macro variables, which are harmless here). */
function collectIdentifiers(node: unknown, out: Set<string>): void {
  if (Array.isArray(node)) return node.forEach((n) => collectIdentifiers(n, out))
  if (!node || typeof node !== 'object') return
  const n = node as { op?: string; args?: unknown }
  if (n.op === 'id' && typeof n.args === 'string') out.add(n.args)
  else collectIdentifiers(n.args, out)
}

function firstLines(message: string): string {
  // cel-js appends the expression and a caret under the culprit (`>    1 | expr` / `   ^`): one
  // line for a log or a config error, with the column the caret points at.
  const lines = message.split('\n')
  const source = lines.findIndex((l) => /^>\s+\d+ \| /.test(l))
  if (source < 0) return lines[0]
  const prefix = (/^>\s+\d+ \| /.exec(lines[source]) ?? [''])[0].length
  const caret = lines[source + 1]?.indexOf('^') ?? -1
  return caret >= prefix ? `${lines[0]} (column ${caret - prefix + 1})` : lines[0]
}

/** A CEL result made into plain JSON: ints (bigint) become numbers, bytes base64, Maps objects. */
export function toJson(v: unknown): unknown {
  if (typeof v === 'bigint') return Number(v)
  if (v instanceof Uint8Array) return Buffer.from(v).toString('base64')
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), toJson(x)]))
  if (Array.isArray(v)) return v.map(toJson)
  if (v && typeof v === 'object') {
    // cel-js's uint and optional wrappers carry their value; plain objects are JSON already but may hold bigints.
    const o = v as { value?: unknown; constructor?: { name?: string } }
    if (o.constructor && o.constructor !== Object && 'value' in o) return toJson(o.value)
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]))
  }
  return v
}

/** One line for an evaluation error (kept as the rule's last error). */
export function errorLine(err: unknown): string {
  return firstLines((err as Error).message ?? String(err))
}
