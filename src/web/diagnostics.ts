// The diagnostics bundle (GET /api/diagnostics, `iothub-edge diagnostics`): what a support engineer
// asks for first, in one tar.gz: the config with every secret replaced, health, a metrics
// snapshot, the recent logs, outbox and hub link statistics, the system and versions. The config's
// secrets (and the API token) are replaced wherever they appear in the bundle, not only in the
// config: a secret that reached a log line by any path is still not shipped.
import { gzipSync } from 'node:zlib'
import { createTar } from 'nanotar'
import YAML from 'yaml'
import type { WebDeps } from './deps.js'
import type { SystemInfo } from './system-info.js'

export const REDACTED = '[redacted]'
// Shorter values would replace common text everywhere; the config itself still hides them.
const MIN_SCRUBBED = 4

export interface Bundle {
  name: string
  body: Buffer
}

export async function diagnosticsBundle(deps: WebDeps, system: SystemInfo, now = new Date()): Promise<Bundle> {
  const { config, secrets } = deps.support?.redactedConfig() ?? { config: null, secrets: [] }
  const health = deps.health()
  const files: Record<string, string> = {
    'config.redacted.yaml': YAML.stringify(config),
    'health.json': json(health),
    'metrics.txt': (await deps.metrics()).body,
    'logs.ndjson': (deps.logs?.lines(0, Number.MAX_SAFE_INTEGER) ?? []).map((l) => l + '\n').join(''),
    'outbox.json': json({ outbox: deps.outboxStats(), northbound: health.northbound, clock: health.clock }),
    'system.json': json(system),
    'versions.json': json({ gateway: deps.support?.version ?? null, node: process.versions, platform: process.platform, arch: process.arch }),
  }
  // Also as it reads inside a JSON string (a log line), when escaping changes it.
  const scrub = [...new Set([...secrets, deps.apiToken].flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]))].filter((s) => s.length >= MIN_SCRUBBED).sort((a, b) => b.length - a.length)
  const stamp = now.toISOString().replace(/[:.]/g, '-')
  const dir = `iothub-edge-diagnostics-${stamp}`
  const mtime = now.getTime()
  const tar = createTar(
    Object.entries(files).map(([name, text]) => ({
      name: `${dir}/${name}`,
      data: Buffer.from(scrubbed(text, scrub)),
      attrs: { mode: '644', mtime, uid: 0, gid: 0 },
    })),
  )
  return { name: `${dir}.tar.gz`, body: gzipSync(tar) }
}

const json = (v: unknown): string => JSON.stringify(v, null, 2) + '\n'

function scrubbed(text: string, secrets: readonly string[]): string {
  let out = text
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(REDACTED)
  return out
}
