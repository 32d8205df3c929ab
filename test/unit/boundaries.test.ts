// The import-boundary check (scripts/check-boundaries.mjs with .dependency-cruiser.js) run
// against two small trees shaped like src/: one that breaks every rule once, one laid out as
// the target architecture. The trees live under .tmp/ inside the repository so that package
// imports (mqtt, aedes) resolve to node_modules as they do for the real src/.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('../..', import.meta.url))
const checker = path.join(root, 'scripts', 'check-boundaries.mjs')

type Tree = Record<string, string>

function writeTree(dir: string, tree: Tree): void {
  for (const [file, text] of Object.entries(tree)) {
    const full = path.join(dir, file)
    mkdirSync(path.dirname(full), { recursive: true })
    writeFileSync(full, text)
  }
}

interface CheckRun { status: number | null; stdout: string; stderr: string }

function runCheck(dir: string): CheckRun {
  const r = spawnSync(process.execPath, [checker, dir], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

// Every file is reached from src/cli.ts unless a test wants it not to be.
const forbidden: Tree = {
  'src/cli.ts': [
    "import './store/z.js'",
    "import './core/a.js'",
    "import './core/b.js'",
    "import './core/c1.js'",
    "import './rules/r.js'",
    "import './web/w.js'",
    '',
  ].join('\n'),
  'src/gateway.ts': 'export const root = 1\n',
  'src/southbound/fake/x.ts': [
    "import { y } from '../../northbound/y.js'",
    "import { c } from '../coap/c.js'",
    'export const x = y + c',
    '',
  ].join('\n'),
  'src/southbound/coap/c.ts': 'export const c = 1\n',
  'src/northbound/y.ts': "import { root } from '../gateway.js'\nexport const y = root\n",
  'src/store/z.ts': [
    "import net from 'node:net'",
    "import http from 'http'",
    "import mqtt from 'mqtt'",
    'export const z = [net, http, mqtt]',
    '',
  ].join('\n'),
  'src/core/a.ts': "import { x } from '../southbound/fake/x.js'\nexport const a = x\n",
  'src/core/b.ts': "import { Aedes } from 'aedes'\nexport const b = Aedes\n",
  // A cycle closed by a type-only import: it counts.
  'src/core/c1.ts': "import { c2 } from './c2.js'\nexport type C1 = number\nexport const c1 = c2\n",
  'src/core/c2.ts': "import type { C1 } from './c1.js'\nexport const c2: C1 = 1\n",
  'src/core/log.ts': 'export const log = 1\n',
  'src/core/types.ts': 'export type DeviceRef = string\n',
  'src/rules/r.ts': [
    "import type { DeviceRef } from '../core/types.js'",
    "import { log } from '../core/log.js'",
    'export const r: DeviceRef = String(log)',
    '',
  ].join('\n'),
  'src/core/router.ts': 'export const isId = (s: string): boolean => s.length > 0\n',
  'src/web/w.ts': [
    "import type { DeviceRef } from '../core/types.js'",
    "import { isId } from '../core/router.js'",
    "import { y } from '../northbound/y.js'",
    'export const w: DeviceRef = String(isId(String(y)))',
    '',
  ].join('\n'),
  'src/orphan.ts': 'export const orphan = 1\n',
}

// The target layout, every allowed kind of import once.
const clean: Tree = {
  'src/cli.ts': "import { start } from './gateway.js'\nimport { loadConfig } from './config.js'\nstart(loadConfig())\n",
  'src/config.ts': "import { adapterNames } from './southbound/registry.js'\nexport const loadConfig = (): string[] => adapterNames\n",
  'src/gateway.ts': [
    "import { adapters } from './southbound/registry.js'",
    "import { Bridge } from './northbound/bridge.js'",
    "import { api } from './web/api.js'",
    "import { outbox } from './store/outbox.js'",
    "import { evaluate } from './rules/engine.js'",
    "import { core } from './core/core-api.js'",
    'export const start = (names: string[]): unknown => [names, adapters, Bridge, api, outbox, evaluate, core]',
    '',
  ].join('\n'),
  'src/southbound/registry.ts': [
    "import { broker } from './broker/broker-adapter.js'",
    "import { coap } from './coap/coap-adapter.js'",
    "import type { DeviceRef } from '../core/types.js'",
    'export const adapters = [broker, coap]',
    "export const adapterNames = ['broker', 'coap']",
    "export const owner = (d: DeviceRef): string => d",
    '',
  ].join('\n'),
  'src/southbound/broker/broker-adapter.ts': [
    "import net from 'node:net'",
    "import { Aedes } from 'aedes'",
    "import type { CoreApi } from '../../core/core-api.js'",
    "import { parseTopic } from './topics.js'",
    'export const broker = (c: CoreApi): unknown => [net, Aedes, parseTopic, c]',
    '',
  ].join('\n'),
  'src/southbound/broker/topics.ts': "import { isId } from '../../core/hub-topics.js'\nexport const parseTopic = isId\n",
  'src/southbound/coap/coap-adapter.ts': "import dgram from 'node:dgram'\nexport const coap = dgram\n",
  'src/northbound/bridge.ts': [
    "import mqtt from 'mqtt'",
    "import type { Uplink } from '../core/types.js'",
    "import { outbox } from '../store/outbox.js'",
    'export const Bridge = (u: Uplink): unknown => [mqtt, outbox, u]',
    '',
  ].join('\n'),
  'src/store/outbox.ts': [
    "import { readFileSync } from 'node:fs'",
    "import type { Uplink } from '../core/types.js'",
    'export const outbox = (u: Uplink): unknown => [readFileSync, u]',
    '',
  ].join('\n'),
  'src/core/core-api.ts': "import { outbox } from '../store/outbox.js'\nexport type CoreApi = typeof outbox\nexport const core = outbox\n",
  'src/core/types.ts': "import type { Topic } from './hub-topics.js'\nexport type DeviceRef = string\nexport type Uplink = Topic\n",
  'src/core/hub-topics.ts': 'export type Topic = string\nexport const isId = (s: string): boolean => s.length > 0\n',
  'src/rules/engine.ts': [
    "import type { Uplink } from '../core/types.js'",
    "import { isId } from '../core/hub-topics.js'",
    "import { drop } from './actions.js'",
    'export const evaluate = (u: Uplink): boolean => isId(u) && drop',
    '',
  ].join('\n'),
  'src/rules/actions.ts': 'export const drop = false\n',
  'src/web/api.ts': [
    "import Fastify from 'fastify'",
    "import type { DeviceRef } from '../core/types.js'",
    "import type { Outbox } from '../store/outbox.js'",
    "import type { WebDeps } from './deps.js'",
    'export const api = (d: WebDeps, r: DeviceRef, o: Outbox): unknown => [Fastify, d, r, o]',
    '',
  ].join('\n'),
  'src/web/deps.ts': 'export interface WebDeps { devices(): string[] }\n',
}

describe('import boundaries (npm run check:boundaries)', () => {
  let tmp: string
  let forbiddenDir: string
  let cleanDir: string

  beforeAll(() => {
    mkdirSync(path.join(root, '.tmp'), { recursive: true })
    tmp = mkdtempSync(path.join(root, '.tmp', 'boundaries-'))
    forbiddenDir = path.join(tmp, 'forbidden')
    cleanDir = path.join(tmp, 'clean')
    writeTree(forbiddenDir, forbidden)
    writeTree(cleanDir, clean)
  })

  afterAll(() => {
    rmSync(tmp, { recursive: true, force: true })
  })

  it('fails on forbidden imports, naming the rule, the importing and the imported file', () => {
    const r = runCheck(forbiddenDir)
    expect(r.status, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).toContain('check-boundaries: FAILED')

    // Packages resolve through the repository's node_modules, so their path starts with ../
    const expected: [rule: string, from: string, to: string][] = [
      ['southbound-not-cloud-link', 'src/southbound/fake/x.ts', 'src/northbound/y.ts'],
      ['adapters-not-each-other', 'src/southbound/fake/x.ts', 'src/southbound/coap/c.ts'],
      ['store-no-network', 'src/store/z.ts', 'net'],
      ['store-no-network', 'src/store/z.ts', 'http'],
      ['store-no-network', 'src/store/z.ts', '../../../node_modules/mqtt/'],
      ['core-not-edges', 'src/core/a.ts', 'src/southbound/fake/x.ts'],
      ['only-registry-knows-adapters', 'src/core/a.ts', 'src/southbound/fake/x.ts'],
      ['core-no-transport-packages', 'src/core/b.ts', '../../../node_modules/aedes/'],
      ['northbound-not-devices-or-root', 'src/northbound/y.ts', 'src/gateway.ts'],
      ['rules-only-core-vocabulary', 'src/rules/r.ts', 'src/core/log.ts'],
      ['web-types-only-from-core-and-store', 'src/web/w.ts', 'src/core/router.ts'],
      ['web-not-edges-or-root', 'src/web/w.ts', 'src/northbound/y.ts'],
    ]
    for (const [rule, from, to] of expected) {
      expect(r.stdout, `${rule}: ${from} → ${to}`).toContain(`error ${rule}: ${from} → ${to}`)
    }
    // The cycle, with every hop.
    expect(r.stdout).toMatch(/error no-cycles: src\/core\/c1\.ts → \s+src\/core\/c2\.ts →\s+src\/core\/c1\.ts/)
    expect(r.stdout).toContain('error reachable-from-cli: src/orphan.ts')
    // What the rule protects, in words.
    expect(r.stdout).toContain('Adapters never talk to the cloud link')
    expect(r.stdout).toContain('The store never does network I/O')

    // Nothing more: the allowed imports in the same tree (web's `import type` from the core,
    // rules' from core/types.ts) are not reported.
    expect(r.stdout).not.toContain('src/web/w.ts → src/core/types.ts')
    expect(r.stdout).not.toContain('src/rules/r.ts → src/core/types.ts')
    const total = expected.length + 2
    expect(r.stdout).toContain(`x ${total} dependency violations (${total} errors, 0 warnings)`)
  })

  it('passes the target layout', () => {
    const r = runCheck(cleanDir)
    expect(r.stdout).toContain('no dependency violations found')
    expect(r.status, r.stdout + r.stderr).toBe(0)
  })
})
