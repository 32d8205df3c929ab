// Links between the docs: a page moved or a heading renamed leaves readers at a dead end, and
// nothing else notices. Every relative link in README.md and docs/ must name a file that exists,
// and its #anchor a heading of that page (GitHub's slugs).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { repoRoot } from '../helpers/gateway-process.js'

function pages(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f)
    return statSync(p).isDirectory() ? pages(p) : f.endsWith('.md') ? [p] : []
  })
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes. */
function anchors(markdown: string): Set<string> {
  const out = new Set<string>()
  for (const m of markdown.replace(/^```[\s\S]*?^```$/gm, '').matchAll(/^#{1,6} (.+)$/gm)) {
    out.add(m[1].trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-'))
  }
  return out
}

describe('docs links', () => {
  it('every relative link in README.md and docs/ reaches a file, and its anchor a heading', () => {
    const broken: string[] = []
    let checked = 0
    for (const page of [path.join(repoRoot, 'README.md'), ...pages(path.join(repoRoot, 'docs'))]) {
      const text = readFileSync(page, 'utf8').replace(/^```[\s\S]*?^```$/gm, '')
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target)) continue
        const [file, anchor] = target.split('#')
        const dest = file ? path.resolve(path.dirname(page), file) : page
        checked++
        const where = `${path.relative(repoRoot, page)}: ${target}`
        if (!existsSync(dest)) broken.push(`${where} (no such file)`)
        else if (anchor && dest.endsWith('.md') && !anchors(readFileSync(dest, 'utf8')).has(anchor)) broken.push(`${where} (no such heading)`)
      }
    }
    expect(broken).toEqual([])
    expect(checked).toBeGreaterThan(20)
  })
})
