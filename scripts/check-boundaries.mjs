#!/usr/bin/env node
// Checks the import boundaries of src/ (the rules and why: docs/contributors/boundaries.md)
// with dependency-cruiser and the project's rule set, .dependency-cruiser.js. Run by
// `npm run check:boundaries`, which `npm test` runs after lint. Exits 1 when a rule is broken,
// printing for each violation the rule, the importing and the imported file, and what the rule
// protects.
//
// Usage: node scripts/check-boundaries.mjs [DIR]   checks DIR/src (default: this repository's),
// always with this repository's rules and tsconfig.json; test/unit/boundaries.test.ts points
// it at fixture trees.
//
// Why not the depcruise CLI alone: it exits with the number of errors, which a shell sees
// modulo 256 (256 violations would pass). Plain .mjs, not .ts: tsx's loader would double the
// run time of this step.
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { cruise } from 'dependency-cruiser'
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options'
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config'

const repoRoot = fileURLToPath(new URL('..', import.meta.url))
const configFile = path.join(repoRoot, '.dependency-cruiser.js')
const tsConfigFile = path.join(repoRoot, 'tsconfig.json')

// The rules name paths relative to the checked directory ('^src/core/'), as depcruise does.
process.chdir(path.resolve(process.argv[2] ?? repoRoot))

const options = await extractDepcruiseOptions(configFile)
// ui/ (the web app) too where there is one: it may name src/'s type-only files, nothing else.
const result = await cruise(
  ['src', ...(existsSync('ui') ? ['ui'] : [])],
  { ...options, outputType: 'err-long', tsConfig: { fileName: tsConfigFile } },
  {},
  { tsConfig: extractTSConfig(tsConfigFile) },
)
process.stdout.write(String(result.output))
if (result.exitCode !== 0) {
  process.stderr.write(`check-boundaries: FAILED: ${result.exitCode} boundary violation(s), listed above (docs/contributors/boundaries.md)\n`)
  process.exitCode = 1
}
