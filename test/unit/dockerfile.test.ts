// Dockerfile.arm64 read as Docker reads it (no Docker engine here): a supported Node.js LTS base,
// the config it ships actually passed with -c, a health check that finds the port from that
// config, the data volume where that config keeps its data, and the image user documented.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { describe, expect, it } from 'vitest'
import { repoRoot } from '../helpers/gateway-process.js'

interface Instruction {
  op: string
  args: string
}

/** Instructions with their continuation lines joined; comments dropped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = []
  let current = ''
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line)) continue
    current += line.replace(/\\$/, ' ')
    if (line.endsWith('\\')) continue
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(current)
    if (m) out.push({ op: m[1], args: m[2].trim() })
    current = ''
  }
  return out
}

/** An exec-form (JSON array) argument list. */
function execForm(args: string): string[] {
  const parsed: unknown = JSON.parse(args)
  if (!Array.isArray(parsed)) throw new Error(`not an exec form: ${args}`)
  return parsed as string[]
}

const text = readFileSync(path.join(repoRoot, 'Dockerfile.arm64'), 'utf8')
const steps = instructions(text)
const all = (op: string): Instruction[] => steps.filter((s) => s.op === op)
const one = (op: string): Instruction => {
  const found = all(op)
  expect(found, op).toHaveLength(1)
  return found[0]
}

const CONFIG = '/etc/iothub-edge/gateway.yaml'

describe('Dockerfile.arm64', () => {
  it('builds and runs on a supported Node.js LTS line (22 or newer, even major)', () => {
    const bases = all('FROM').map((s) => /node:(\d+)-/.exec(s.args)?.[1])
    expect(bases.length).toBeGreaterThanOrEqual(2)
    for (const major of bases) {
      expect(Number(major)).toBeGreaterThanOrEqual(22)
      expect(Number(major) % 2).toBe(0)
    }
  })

  it('gives the build stage every file `npm run build` reads (the web UI too), before it runs', () => {
    const build = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { scripts: { build: string } }).scripts.build
    const buildStep = steps.findIndex((s) => s.op === 'RUN' && s.args.includes('npm run build'))
    expect(buildStep).toBeGreaterThan(0)
    const copied = steps.slice(0, buildStep).filter((s) => s.op === 'COPY' && !s.args.startsWith('--from')).flatMap((s) => s.args.split(/\s+/).slice(0, -1))
    const covered = (file: string): boolean => copied.some((c) => file === c || file.startsWith(`${c.replace(/\/$/, '')}/`))
    // The files the build script names (tsconfig.build.json, scripts/build-ui.mjs), the sources and the UI it builds.
    const named = [...build.matchAll(/(?:-p |node )(\S+)/g)].map((m) => m[1])
    expect(named).toEqual(['tsconfig.build.json', 'scripts/build-ui.mjs'])
    for (const file of [...named, 'tsconfig.json', 'src/cli.ts', 'ui/main.tsx']) expect(covered(file), file).toBe(true)
  })

  it('puts iothub-edge on the PATH with the config it starts with, for docker exec', () => {
    expect(steps.some((s) => s.op === 'RUN' && s.args.includes('ln -s /opt/iothub-edge/bin/iothub-edge.js /usr/local/bin/iothub-edge'))).toBe(true)
    const env = all('ENV').map((s) => s.args).join(' ')
    expect(env).toContain(`IOTHUB_EDGE_CONFIG=${CONFIG}`)
  })

  it('ships the example config at the path it starts with, passed with -c', () => {
    const copy = all('COPY').find((s) => s.args.endsWith(` ${CONFIG}`))
    expect(copy?.args).toBe(`packaging/gateway.example.yaml ${CONFIG}`)
    const entry = execForm(one('ENTRYPOINT').args)
    const cmd = execForm(one('CMD').args)
    expect(entry).toEqual(['node', '/opt/iothub-edge/bin/iothub-edge.js'])
    expect(cmd).toEqual(['start', '-c', CONFIG])
  })

  it('checks health through `status -c` with that config (the port comes from the config, none is hard-coded)', () => {
    const health = one('HEALTHCHECK').args
    const cmd = execForm(health.slice(health.indexOf('CMD') + 3).trim())
    expect(cmd.slice(1, 3)).toEqual(['/opt/iothub-edge/bin/iothub-edge.js', 'status'])
    expect(cmd.slice(-2)).toEqual(['-c', CONFIG])
    expect(health).not.toMatch(/\b8090\b|127\.0\.0\.1|localhost/)
  })

  it("keeps its volume where the shipped config keeps its data, owned by the image's user (documented)", () => {
    const example = YAML.parse(readFileSync(path.join(repoRoot, 'packaging', 'gateway.example.yaml'), 'utf8'))
    expect(execForm(one('VOLUME').args)).toEqual([example.gateway.dataDir])
    expect(one('USER').args).toBe('node')
    expect(steps.some((s) => s.op === 'RUN' && s.args.includes(`chown node:node ${example.gateway.dataDir}`))).toBe(true)
    const exposed = one('EXPOSE').args.split(/\s+/).map(Number)
    expect(exposed).toEqual(expect.arrayContaining([example.broker.listeners[0].port, example.http.port]))
    const install = readFileSync(path.join(repoRoot, 'docs', 'operators', 'install.md'), 'utf8')
    expect(install).toMatch(/uid 1000/)
  })
})
