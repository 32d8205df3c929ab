// One supported Node.js range, said the same way everywhere a user or a build reads it: package.json
// `engines`, the Node.js the Debian package ships, the Dockerfile's base image, the install docs.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { repoRoot } from '../helpers/gateway-process.js'

const read = (...p: string[]): string => readFileSync(path.join(repoRoot, ...p), 'utf8')

const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node
const minimum = Number(/^>=(\d+)$/.exec(engines)?.[1])
const packaged = /NODE_VERSION=\$\{IOTHUB_EDGE_NODE_VERSION:-(\d+)\.\d+\.\d+\}/.exec(read('scripts', 'package-deb.sh'))?.[1]

describe('supported Node.js versions', () => {
  it('starts at an LTS line that is not end-of-life (20 ended 2026-04-30)', () => {
    expect(minimum).toBeGreaterThanOrEqual(22)
    expect(minimum % 2).toBe(0)
  })

  it('the Debian package and the container image run the same LTS line, inside the supported range', () => {
    expect(Number(packaged)).toBeGreaterThanOrEqual(minimum)
    expect(Number(packaged) % 2).toBe(0)
    const bases = [...read('Dockerfile.arm64').matchAll(/^FROM .*node:(\d+)-/gm)].map((m) => Number(m[1]))
    expect(bases.length).toBeGreaterThan(0)
    expect(new Set(bases)).toEqual(new Set([Number(packaged)]))
  })

  it('the install docs state the range and the Node.js the package ships', () => {
    const install = read('docs', 'operators', 'install.md')
    expect(install).toMatch(new RegExp(`\`engines\`\\s+in\\s+package\\.json\\s+says\\s+\`${engines}\``))
    expect(install).toContain(`official Node.js ${packaged} build`)
    expect(read('scripts', 'node-matrix.sh')).toMatch(new RegExp(`LINES=\\(${minimum} `))
  })
})
