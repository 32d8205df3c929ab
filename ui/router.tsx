// Client-side routes under /ui/ (the server answers index.html there), so the app never shadows
// /api, the HTTP ingest's /devices, /ota or /metrics.
import { signal } from '@preact/signals'
import type { ComponentChildren } from 'preact'

export const BASE = '/ui'
export const route = signal(currentPath())

function currentPath(): string {
  const p = location.pathname
  return p.startsWith(BASE) ? p.slice(BASE.length) || '/' : '/'
}

window.addEventListener('popstate', () => (route.value = currentPath()))

export function navigate(to: string): void {
  history.pushState(null, '', BASE + to)
  route.value = to
  window.scrollTo(0, 0)
}

export function Link(props: { to: string; children: ComponentChildren; class?: string; 'aria-current'?: 'page' | undefined }) {
  return (
    <a
      href={BASE + props.to}
      class={props.class}
      aria-current={props['aria-current']}
      onClick={(e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return
        e.preventDefault()
        navigate(props.to)
      }}
    >
      {props.children}
    </a>
  )
}
