// The files a running gateway leaves in its data folder for the command line on the same box:
// where its API answers (runtime.json) and the API token. Kept apart from the web server so that
// the CLI reads them without loading fastify.
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'

export const RUNTIME_FILE = 'runtime.json'
export const API_TOKEN_FILE = 'api-token'

/** Where a running gateway can be reached, for the CLI acting on the same data dir. */
export interface RuntimeInfo {
  pid: number
  httpPort: number
  /** 'https' with http.tls (absent in files of older versions: http). */
  scheme?: 'http' | 'https'
  /** The served certificate's SHA-256 fingerprint (`AB:CD:...`): the CLI pins it. */
  certSha256?: string
  /** The served certificate's file (PEM): the CLI trusts it, pinned to certSha256. */
  certFile?: string
}

export function readApiToken(dataDir: string): string | undefined {
  const f = path.join(dataDir, API_TOKEN_FILE)
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined
}

/**
 * The configured token, else the one in {dataDir}/api-token, else a new one written there (0600);
 * `created` is told the file's path then (the token itself is never printed or logged).
 */
export function loadOrCreateApiToken(dataDir: string, configured?: string, created?: (file: string) => void): string {
  if (configured) return configured
  const existing = readApiToken(dataDir)
  if (existing) return existing
  const token = randomBytes(24).toString('base64url')
  const file = path.join(dataDir, API_TOKEN_FILE)
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' })
  created?.(file)
  return token
}
