// The running config with every secret replaced, for the diagnostics bundle: any field whose name
// says secret, password, token or key (a device's secret, the hub password, ChirpStack's API
// token and HTTP secret, the API token, TLS key paths), and the credentials inside URLs. The values
// replaced are returned too, so the bundle can scrub them from everything else it ships.
import { redactUrls } from './core/log.js'

export const REDACTED = '[redacted]'

const SECRET_FIELD = /secret|passw|passphrase|token|credential|apikey|api_key|privatekey|(^|[a-z_])key$/i

export function redactConfig(config: unknown): { config: unknown; secrets: string[] } {
  const secrets = new Set<string>()
  const collect = (v: unknown): void => {
    if (typeof v === 'string' && v !== '') secrets.add(v)
    else if (Array.isArray(v)) v.forEach(collect)
    else if (v && typeof v === 'object') Object.values(v).forEach(collect)
  }
  const walk = (v: unknown, key?: string): unknown => {
    if (key !== undefined && SECRET_FIELD.test(key) && v !== undefined && v !== null && v !== '') {
      collect(v)
      return REDACTED
    }
    if (typeof v === 'string') {
      for (const m of v.matchAll(/[a-z][a-z0-9+.-]*:\/\/([^/@\s]+)@/gi)) {
        const userinfo = m[1]
        secrets.add(userinfo)
        const password = userinfo.split(':').slice(1).join(':')
        if (password) secrets.add(decoded(password))
      }
      return redactUrls(v)
    }
    if (Array.isArray(v)) return v.map((x) => walk(x))
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, k)]))
    return v
  }
  return { config: walk(config), secrets: [...secrets] }
}

function decoded(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}
