// The gateway's one live stream (GET /api/events, server-sent events): health, devices going on
// and off line, uplinks, alarms, command states and log lines. Pages subscribe to the event types
// they show; the browser's EventSource reconnects by itself when the stream drops. What happened
// while no stream was open (before the first one connected, while the gateway restarted) reaches a
// page only if it loads again: pages reload what they show each time the stream opens, or says it
// dropped events for a slow reader (onLiveGap).
import { signal } from '@preact/signals'
import { sessionStillOn } from './api.js'
import type { HealthReport } from './types.js'

export type LiveEvent = 'health' | 'device' | 'uplink' | 'alarm' | 'command' | 'log'
type Listener = (data: unknown) => void

export const liveConnected = signal(false)
export const health = signal<HealthReport | null>(null)
const listeners = new Map<LiveEvent, Set<Listener>>()
const gapListeners = new Set<() => void>()
let source: EventSource | null = null
let retry: ReturnType<typeof setTimeout> | undefined
// After a refusal (not a dropped connection, which EventSource retries by itself).
const RETRY_REFUSED_MS = 10_000

export function startLive(): void {
  if (source) return
  const es = new EventSource('/api/events')
  source = es
  es.onopen = () => {
    liveConnected.value = true
    gap()
  }
  // The gateway dropped events this reader was too slow for (docs/integrators/api.md, "Live data").
  es.addEventListener('dropped', gap)
  es.onerror = () => {
    liveConnected.value = false
    // CLOSED: the reconnect was answered with an error (401 once the session ended, 503 when too
    // many streams are open), and EventSource gives up. Signed out: the sign-in page; else retry.
    if (es.readyState !== EventSource.CLOSED || source !== es) return
    source = null
    void sessionStillOn().then((on) => {
      if (on && !source) retry = setTimeout(startLive, RETRY_REFUSED_MS)
    })
  }
  for (const type of ['health', 'device', 'uplink', 'alarm', 'command', 'log'] as const) {
    es.addEventListener(type, (e: MessageEvent<string>) => {
      let data: unknown
      try {
        data = JSON.parse(e.data)
      } catch {
        return
      }
      if (type === 'health') health.value = data as HealthReport
      for (const l of listeners.get(type) ?? []) l(data)
    })
  }
}

export function stopLive(): void {
  clearTimeout(retry)
  source?.close()
  source = null
  liveConnected.value = false
}

/** Calls `fn` for each event of `type`; returns the unsubscribe (a useEffect cleanup). */
export function onLive<T>(type: LiveEvent, fn: (data: T) => void): () => void {
  let set = listeners.get(type)
  if (!set) listeners.set(type, (set = new Set()))
  const l = fn as Listener
  set.add(l)
  return () => set.delete(l)
}

function gap(): void {
  for (const l of [...gapListeners]) l()
}

/**
 * Calls `fn` each time events may have been missed: the stream opened (the first connection and
 * every reconnection, after a dropped connection or a gateway restart: events sent while no stream
 * was open never arrive) or the gateway dropped some for this slow reader. A page reloads what it
 * shows. Returns the unsubscribe (a useEffect cleanup).
 */
export function onLiveGap(fn: () => void): () => void {
  gapListeners.add(fn)
  return () => gapListeners.delete(fn)
}

/** Loads the health report once when the stream has not sent one yet (/api/health answers 503 with the same body while degraded). */
export function ensureHealth(): void {
  if (health.value) return
  fetch('/api/health', { credentials: 'same-origin' })
    .then((r) => r.json() as Promise<HealthReport>)
    .then(
      (h) => (health.value ??= h),
      () => undefined,
    )
}

/** Whether the gateway runs an adapter of that name; undefined until the health report is in. */
export function hasAdapter(name: string): boolean | undefined {
  const h = health.value
  return h ? h.adapters.some((a) => a.name === name) : undefined
}
