// How numbers, sizes, times and ages read in the app, in the chosen language.
import { lang, t } from './i18n.js'

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`
}

export function dateTime(ms: number | null | undefined): string {
  if (!ms) return '—'
  return new Date(ms).toLocaleString(lang.value === 'zh' ? 'zh-CN' : 'en-GB', { hour12: false })
}

/** "3 min", "2 h 5 min", "4 d": how long, for ages and durations. */
export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—'
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 60) return t('unit.s', { n: s })
  const m = Math.floor(s / 60)
  if (m < 60) return t('unit.min', { n: m })
  const h = Math.floor(m / 60)
  if (h < 48) return `${t('unit.h', { n: h })} ${t('unit.min', { n: m % 60 })}`
  return t('unit.d', { n: Math.floor(h / 24) })
}

/** "5 min ago", from a time in ms. */
export function ago(ms: number | null | undefined, now = Date.now()): string {
  if (!ms) return t('never')
  return t('ago', { d: duration(now - ms) })
}

export function num(n: number | null | undefined, digits = 0): string {
  return n === null || n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(digits)
}

export function payloadText(p: unknown): string {
  if (typeof p === 'string') return p
  return JSON.stringify(p)
}
