// The config examples in the docs, read as the gateway reads a config file: a reader copies a
// ```yaml block into gateway.yaml, and a key the schema does not know (renamed, misspelled, moved)
// or a value of the wrong type would stop the start with exit 78. Every yaml block of README.md
// and docs/ whose top-level keys include one of the config's sections must pass the schema.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { describe, expect, it } from 'vitest'
import { ConfigError, ConfigSchema, parseConfig } from '../../src/config.js'
import { repoRoot } from '../helpers/gateway-process.js'

function pages(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f)
    return statSync(p).isDirectory() ? pages(p) : f.endsWith('.md') ? [p] : []
  })
}

const sections = new Set(Object.keys(ConfigSchema.properties))

describe('config examples in the docs', () => {
  it('every yaml block that is a config (or a part of one) passes the schema', () => {
    const failures: string[] = []
    let checked = 0
    for (const page of [path.join(repoRoot, 'README.md'), ...pages(path.join(repoRoot, 'docs'))]) {
      const text = readFileSync(page, 'utf8')
      for (const m of text.matchAll(/^```ya?ml[^\n]*\n([\s\S]*?)^```$/gm)) {
        let doc: unknown
        try {
          doc = YAML.parse(m[1])
        } catch {
          continue // not YAML on its own (an excerpt with "..."): nothing a reader could paste
        }
        if (!doc || typeof doc !== 'object' || Array.isArray(doc) || !Object.keys(doc).some((k) => sections.has(k))) continue
        checked++
        const line = text.slice(0, m.index).split('\n').length
        try {
          parseConfig(doc, path.dirname(page))
        } catch (err) {
          if (!(err instanceof ConfigError)) throw err
          failures.push(`${path.relative(repoRoot, page)}:${line}: ${err.problems.join('; ')}`)
        }
      }
    }
    expect(checked).toBeGreaterThan(10)
    expect(failures).toEqual([])
  })
})
