// `iothub-edge rules test`: what each rule does to sample messages, without a running gateway: the
// same engine, with its state in memory, commands and republishes recorded instead of sent.
import type { Command, RuleStateStore, Uplink } from '../core/types.js'
import { formatUpTopic, parseUpTopic } from '../core/hub-topics.js'
import type { RuleConfig } from './schema.js'
import { compileRules } from './compile.js'
import { RulesEngine, type RuleTrace } from './engine.js'

/** Rule state kept in memory: for dry runs and tests of the engine alone. */
export class MemoryRuleState implements RuleStateStore {
  readonly data = new Map<string, string>()
  private readonly listeners: (() => void)[] = []
  load(): Map<string, string> {
    return new Map(this.data)
  }
  stage(key: string, value: string | undefined): void {
    if (value === undefined) this.data.delete(key)
    else this.data.set(key, value)
  }
  committed(): Promise<void> {
    return Promise.resolve()
  }
  onFailed(listener: () => void): void {
    this.listeners.push(listener)
  }
}

/** A sample message: `{topic, payload, meta?, tags?, ts?}`; the topic may leave out the MessageId. */
export interface SampleMessage {
  topic: string
  payload?: unknown
  /** The payload as text, for what is not JSON. */
  payloadText?: string
  meta?: Record<string, unknown>
  tags?: string[]
  ts?: number
}

export interface DryRunResult {
  message: string
  rules: RuleTrace[]
  up: { topic: string; payload: string }[]
  commands: { device: string; name: string; payload: string; requestId: string }[]
  republish: { topic: string; payload: string }[]
}

const SAMPLE_MESSAGE_ID = '000000000000000000000000'

export function dryRun(rules: readonly RuleConfig[], samples: readonly SampleMessage[], now = Date.now()): DryRunResult[] {
  const compiled = compileRules(rules)
  if (compiled.problems.length) throw new Error(compiled.problems.join('\n'))
  let clock = now
  const results: DryRunResult[] = []
  let current: DryRunResult | undefined
  let tagsNow: readonly string[] = []
  const engine = new RulesEngine(compiled.rules, {
    state: new MemoryRuleState(),
    emit: (up) => {
      current?.up.push(show(up))
      return Promise.resolve()
    },
    sendCommand: () => undefined,
    devicesWithTag: (productId, tag) => [{ productId, deviceId: `(every device tagged ${tag})` }],
    republish: () => Promise.resolve(),
    tagsOf: () => tagsNow,
    now: () => clock,
    log: { warn: () => undefined },
  })
  samples.forEach((s, i) => {
    const up = toUplink(s, i, clock)
    clock = up.receivedAt
    tagsNow = s.tags ?? []
    engine.tick(clock)
    const trace: RuleTrace[] = []
    current = { message: formatUpTopic(up.topic), rules: trace, up: [], commands: [], republish: [] }
    const out = engine.evaluate(up, trace)
    current.commands.push(...out.commands.map(showCommand))
    current.up.push(...out.uplinks.map(show))
    current.republish.push(...out.republish.map((r) => ({ topic: r.topic, payload: r.payload.toString('utf8') })))
    results.push(current)
  })
  return results
}

function showCommand(cmd: Command): DryRunResult['commands'][number] {
  return { device: `${cmd.device.productId}/${cmd.device.deviceId}`, name: cmd.name, payload: cmd.payload.toString('utf8'), requestId: cmd.requestId }
}

function show(up: Uplink): { topic: string; payload: string } {
  return { topic: formatUpTopic(up.topic), payload: up.payload.toString('utf8') }
}

function toUplink(s: SampleMessage, i: number, clock: number): Uplink {
  if (typeof s?.topic !== 'string') throw new Error(`message ${i + 1}: needs a "topic" (upload_data/{ProductId}/{DeviceId}/{DataType})`)
  const topic = parseUpTopic(s.topic) ?? parseUpTopic(`${s.topic}/${SAMPLE_MESSAGE_ID.slice(0, 22)}${String(i).padStart(2, '0').slice(-2)}`)
  if (!topic) throw new Error(`message ${i + 1}: "${s.topic}" is not an up topic of PROTOCOL.md`)
  const payload = s.payloadText !== undefined ? Buffer.from(s.payloadText) : Buffer.from(JSON.stringify(s.payload ?? {}))
  return { topic, payload, transport: 'mqtt', receivedAt: s.ts ?? clock + (i ? 1000 : 0), meta: s.meta }
}
