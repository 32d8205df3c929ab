// The rule engine alone, in this process: microseconds per message for the rule sets of
// bench/rule-sets.ts (npx tsx bench/rules-engine.ts). No I/O: the rules' own cost, to set against the
// gateway's CPU per message (docs/performance.md).
import { parseConfig } from '../src/config.js'
import { compileRules } from '../src/rules/compile.js'
import { MemoryRuleState } from '../src/rules/dry-run.js'
import { RulesEngine } from '../src/rules/engine.js'
import { parseUpTopic } from '../src/core/hub-topics.js'
import { ALL_MATCH_RULES, SITE_RULES } from './rule-sets.js'

const up = { topic: parseUpTopic('upload_data/bench/d1/bench/0123456789abcdef01234567')!, payload: Buffer.alloc(64, 'p'), transport: 'mqtt' as const, receivedAt: Date.now() }

for (const [name, rules] of [['site', SITE_RULES], ['allMatch', ALL_MATCH_RULES]] as const) {
  const engine = new RulesEngine(compileRules(parseConfig({ rules }).rules).rules, {
    state: new MemoryRuleState(),
    emit: () => Promise.resolve(),
    sendCommand: () => undefined,
    devicesWithTag: () => [],
    republish: () => Promise.resolve(),
    tagsOf: () => [],
    now: Date.now,
    log: { warn: () => undefined },
  })
  const results: number[] = []
  for (let run = 0; run < 5; run++) {
    const n = 100_000
    const t0 = performance.now()
    for (let i = 0; i < n; i++) engine.evaluate(up)
    results.push(((performance.now() - t0) * 1000) / n)
  }
  results.sort((a, b) => a - b)
  process.stdout.write(`${name}: ${results[2].toFixed(2)} µs per message (median of 5 runs of 100k; min ${results[0].toFixed(2)})\n`)
}
