// Small pieces every page uses: a titled section, a status badge, a table that scrolls inside
// itself on a phone, an error line, and the hook that loads a route's JSON.
import { useCallback, useEffect, useState } from 'preact/hooks'
import type { ComponentChildren } from 'preact'
import { ApiError, api } from './api.js'
import { t } from './i18n.js'

export function Section(props: { title: string; children: ComponentChildren; id?: string; actions?: ComponentChildren }) {
  const id = props.id ?? `s-${props.title.replace(/\W+/g, '-').toLowerCase()}`
  return (
    <section class="card" aria-labelledby={id}>
      <div class="card-head">
        <h2 id={id}>{props.title}</h2>
        {props.actions}
      </div>
      {props.children}
    </section>
  )
}

export type Tone = 'ok' | 'bad' | 'warn' | 'muted'

export function Badge(props: { tone: Tone; children: ComponentChildren }) {
  return <span class={`badge ${props.tone}`}>{props.children}</span>
}

export function TableWrap(props: { label: string; children: ComponentChildren }) {
  // Focusable so a keyboard user can scroll a wide table (axe: scrollable-region-focusable).
  return (
    <div class="table-wrap" role="region" aria-label={props.label} tabIndex={0}>
      <table>{props.children}</table>
    </div>
  )
}

/** A table's header row; a `{ hidden }` column has a heading only screen readers get (a buttons column). */
export function THead(props: { cols: (string | { hidden: string })[] }) {
  return (
    <thead>
      <tr>
        {props.cols.map((c) =>
          typeof c === 'string' ? (
            <th key={c} scope="col">
              {c}
            </th>
          ) : (
            <th key={c.hidden} scope="col">
              <span class="visually-hidden">{c.hidden}</span>
            </th>
          ),
        )}
      </tr>
    </thead>
  )
}

export function ErrorLine(props: { error: unknown }) {
  if (!props.error) return null
  const e = props.error
  const text = e instanceof ApiError ? `${e.message} (${e.code})` : e instanceof Error ? e.message : String(e)
  return (
    <p class="error" role="alert">
      {text}
    </p>
  )
}

export function Empty(props: { children?: ComponentChildren }) {
  return <p class="muted">{props.children ?? t('none')}</p>
}

export interface Loaded<T> {
  data: T | undefined
  error: unknown
  /** Load again for the user (after a change they made, a click on Refresh): counts as the session's use. */
  reload: () => void
  /**
   * Load again on the page's own account (a live event, the live stream reconnecting): a background
   * request, like the poll, so that an unattended page still reaches the session's idle timeout.
   */
  refresh: () => void
}

/** GET `path` now, and again every `everyMs` when given (data the live stream does not carry). */
export function useApi<T>(path: string | null, everyMs?: number): Loaded<T> {
  const [data, setData] = useState<T>()
  const [error, setError] = useState<unknown>()
  const [tick, setTick] = useState({ n: 0, background: false })
  const reload = useCallback(() => setTick((t) => ({ n: t.n + 1, background: false })), [])
  const refresh = useCallback(() => setTick((t) => ({ n: t.n + 1, background: true })), [])
  useEffect(() => {
    if (!path) return
    let live = true
    // The first load is the page the user opened; the repeats are the page's own (background).
    const load = (background = false): void => {
      api<T>(path, { background }).then(
        (d) => {
          if (!live) return
          setData(d)
          setError(undefined)
        },
        (e: unknown) => live && setError(e),
      )
    }
    load(tick.background)
    const timer = everyMs ? setInterval(() => load(true), everyMs) : undefined
    return () => {
      live = false
      clearInterval(timer)
    }
  }, [path, everyMs, tick])
  return { data, error, reload, refresh }
}

/** Re-render every `ms` (ages like "5 min ago" move on). */
export function useNow(ms = 5_000): number {
  const [now, setNow] = useState(Date.now())
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms)
    return () => clearInterval(timer)
  }, [ms])
  return now
}

/** A link that downloads a route's file (same origin: the session cookie goes with it). */
export function Download(props: { href: string; children: ComponentChildren }) {
  return (
    <a class="button" href={props.href} download>
      {props.children}
    </a>
  )
}

/**
 * A form field's value kept in state, spread onto an input: `<input {...field} />`. An input given
 * a plain `value` is reset to it on every render (and pages re-render every few seconds).
 */
export function useField(initial: string): { value: string; onInput: (e: Event) => void } {
  const [value, setValue] = useState(initial)
  return { value, onInput: (e) => setValue((e.currentTarget as HTMLInputElement).value) }
}
