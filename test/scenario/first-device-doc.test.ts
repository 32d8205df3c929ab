// docs/integrators/first-device.md, run as a reader would: its yaml block becomes the config, its
// `sh` blocks run in order in one folder (shell variables carry from block to block, as in one
// terminal), `sh terminal-N` blocks keep running in the background, and each `text` block is what
// the block before it (or terminal N) must print, 24-hex ids standing for any. Against a real
// gateway from bin/, Mosquitto as the hub, and Debian's mosquitto_pub/mosquitto_sub, curl and jq,
// so the page cannot drift from what the product does. Only the hub URL, the ports and 0.0.0.0 are
// changed, for the test's own.
import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { gatewayBin, repoRoot } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { freePort } from '../helpers/ports.js'
import { stopProcessGroup, trackChild } from '../helpers/child-processes.js'

const PAGE = path.join(repoRoot, 'docs', 'integrators', 'first-device.md')
const HUB_IN_PAGE = 'mqtts://hub.example.com:8883'

interface Block {
  lang: string
  /** `terminal-2` in ```sh terminal-2 */
  tag: string | undefined
  body: string
}

function blocksOf(markdown: string): Block[] {
  return [...markdown.matchAll(/^```(\w*)(?: (\S+))?\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1], tag: m[2], body: m[3] }))
}

/** An expected output: exact lines, except that a 24-hex id stands for any (MessageIds, RequestIds). */
function outputPattern(expected: string): RegExp {
  const lines = expected.trimEnd().split('\n').map((l) => l.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/[0-9a-f]{24}/g, '[0-9a-f]{24}'))
  return new RegExp(`^${lines.join('\n')}$`, 'm')
}

let dir: string
let hub: HubBroker
let uploads: HubRecorder
let ports: { ext: number; int: number; http: number }
const background: ChildProcess[] = []

/** The page's values, with the test's hub, ports and a loopback-only listener. */
function localize(text: string): string {
  return text
    .replaceAll(HUB_IN_PAGE, hub.url)
    .replaceAll('0.0.0.0', '127.0.0.1')
    .replace(/\b11883\b/g, String(ports.int))
    .replace(/\b1883\b/g, String(ports.ext))
    .replace(/\b8090\b/g, String(ports.http))
}

// Each block sees the variables the earlier ones set (vars.sh), as in one terminal (read-only ones
// are left out: declaring them again would fail).
const script = (body: string, save: boolean): string =>
  `set -euo pipefail\nset -a\n[ -f vars.sh ] && . ./vars.sh\n${localize(body)}\n${save ? "export -p | grep -Ev '^declare -[a-z]*r' > vars.sh\n" : ''}`

const env = (): NodeJS.ProcessEnv => ({ ...process.env, PATH: `${path.join(dir, 'bin')}:${process.env.PATH ?? ''}` })

function run(body: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script(body, true)], { cwd: dir, env: env(), stdio: ['ignore', 'pipe', 'pipe'] })
    trackChild(child)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c))
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c))
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

/** A terminal left running; `output()` is what it printed so far. */
function runInBackground(body: string): { output: () => string } {
  // A process group of its own, so that stopping it stops what the shell started.
  const child = spawn('bash', ['-c', script(body, false)], { cwd: dir, env: env(), stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  trackChild(child)
  background.push(child)
  let out = ''
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (out += c))
  child.stderr?.setEncoding('utf8').on('data', (c: string) => (out += c))
  return { output: () => out }
}

async function api(p: string): Promise<unknown> {
  const token = (await readFile(path.join(dir, 'data', 'api-token'), 'utf8')).trim()
  const res = await fetch(`http://127.0.0.1:${ports.http}${p}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5_000) })
  return res.json()
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-first-device-'))
  ports = { ext: await freePort(), int: await freePort(), http: await freePort() }
  // `iothub-edge` on the PATH, as the package installs it.
  const bin = path.join(dir, 'bin')
  await mkdir(bin)
  writeFileSync(path.join(bin, 'iothub-edge'), `#!/bin/sh\nexec "${process.execPath}" "${gatewayBin}" "$@"\n`)
  chmodSync(path.join(bin, 'iothub-edge'), 0o755)
  hub = new HubBroker({
    devices: [],
    gateway: { productId: 'gateways', deviceId: 'my-gateway', secret: 'my-gateway-secret', children: [{ productId: 'demo', deviceId: 'sensor-1' }] },
  })
  await hub.start()
  uploads = await hub.subscribeAll('upload_data/#')
})

afterAll(async () => {
  for (const child of background) await stopProcessGroup(child, 15_000)
  await uploads?.close()
  await hub?.close()
  if (dir) await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
})

describe('docs/integrators/first-device.md', () => {
  it('every step does what the page says: the reading reaches the hub, the command reaches the device and its reply the gateway', async () => {
    const blocks = blocksOf(readFileSync(PAGE, 'utf8'))
    const terminals = new Map<string, { output: () => string }>()
    const config = blocks.filter((b) => b.lang === 'yaml')
    expect(config).toHaveLength(1)
    writeFileSync(path.join(dir, 'gateway.yaml'), localize(config[0].body))

    let last: { body: string; stdout: string } | undefined
    let ran = 0
    for (const block of blocks) {
      if (block.lang === 'sh' && block.tag) {
        const terminal = runInBackground(block.body)
        terminals.set(block.tag, terminal)
        // What the page has the reader wait for before going on.
        if (/iothub-edge start/.test(block.body)) {
          await expect
            .poll(() => fetch(`http://127.0.0.1:${ports.http}/api/health`).then((r) => r.status, () => 0), { timeout: 30_000, message: terminal.output() })
            .toBe(200)
        } else if (/mosquitto_sub/.test(block.body)) {
          await expect
            .poll(async () => ((await api('/api/devices/demo/sensor-1')) as { online?: boolean }).online, { timeout: 15_000, message: terminal.output() })
            .toBe(true)
        }
      } else if (block.lang === 'sh') {
        const r = await run(block.body)
        expect(r.code, `${block.body}\n--- stderr\n${r.stderr}\n--- terminals\n${[...terminals.values()].map((t) => t.output()).join('\n')}`).toBe(0)
        last = { body: block.body, stdout: r.stdout }
        ran++
      } else if (block.lang === 'text' && block.tag) {
        const terminal = terminals.get(block.tag)
        expect(terminal, `no ${block.tag} started before its output`).toBeDefined()
        await expect.poll(() => terminal!.output(), { timeout: 10_000 }).toMatch(outputPattern(block.body))
      } else if (block.lang === 'text') {
        expect(last, 'an output block with no command before it').toBeDefined()
        expect(last!.stdout, last!.body).toMatch(outputPattern(block.body))
      }
    }
    expect(ran).toBeGreaterThanOrEqual(5)

    // The reading reached the hub unchanged: same topic, same MessageId, same bytes.
    const vars = readFileSync(path.join(dir, 'vars.sh'), 'utf8')
    const messageId = /MESSAGE_ID="([0-9a-f]{24})"/.exec(vars)?.[1]
    expect(messageId).toBeDefined()
    const up = await uploads.waitFor((m) => m.topic === `upload_data/demo/sensor-1/temperature/${messageId}`, 15_000)
    expect(up.payload.toString()).toBe('{"celsius": 21.5}')
  })
})
