// The error catalogue is one module, and every code in it is real: emitted somewhere in src/ and
// explained, with what to do, in the operators' troubleshooting page.
import { readFileSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ErrorCodes } from '../../src/core/errors.js'
import { repoRoot } from '../helpers/gateway-process.js'

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : [],
  )
}

describe('error catalogue', () => {
  const src = sources(path.join(repoRoot, 'src')).filter((f) => !f.endsWith(path.join('core', 'errors.ts')))
  const code = src.map((f) => readFileSync(f, 'utf8')).join('\n')
  const troubleshooting = readFileSync(path.join(repoRoot, 'docs/operators/troubleshooting.md'), 'utf8')

  it.each(Object.entries(ErrorCodes))('%s is emitted in src/ and documented for operators', (key, value) => {
    expect(code, `ErrorCodes.${key} is never used outside the catalogue`).toContain(`ErrorCodes.${key}`)
    expect(troubleshooting, `${value} is not explained in docs/operators/troubleshooting.md`).toContain(`\`${value}\``)
  })

  it('no code is written out by hand outside the catalogue', () => {
    expect(code).not.toMatch(/'IHE_[A-Z_]+'/)
  })
})
