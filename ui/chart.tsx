// A time series chart of one history series (min/avg/max per bucket). uPlot loads with the first
// chart, not with the first page.
import { useEffect, useRef, useState } from 'preact/hooks'
import { t } from './i18n.js'
import type { HistoryPoint } from './types.js'

export function Chart(props: { title: string; points: HistoryPoint[]; from: number; to: number }) {
  const box = useRef<HTMLDivElement>(null)
  const [error, setError] = useState<string>()
  useEffect(() => {
    const el = box.current
    if (!el) return
    let plot: { destroy(): void; setSize(s: { width: number; height: number }): void } | undefined
    let gone = false
    const width = (): number => Math.max(200, el.clientWidth)
    import('uplot').then(
      ({ default: UPlot }) => {
        if (gone) return
        const p = props.points
        const data: [number[], number[], number[], number[]] = [p.map((x) => x.t / 1000), p.map((x) => x.min), p.map((x) => x.avg), p.map((x) => x.max)]
        plot = new UPlot(
          {
            width: width(),
            height: 220,
            // The chosen range, not just the span of the data: a quiet day shows as quiet.
            scales: { x: { time: true, range: [props.from / 1000, props.to / 1000] } },
            series: [
              {},
              { label: t('chart.min'), stroke: '#5b7fa8', width: 1 },
              { label: t('chart.avg'), stroke: '#0b5394', width: 2 },
              { label: t('chart.max'), stroke: '#a83232', width: 1 },
            ],
            axes: [{}, { size: 60 }],
          },
          data,
          el,
        )
      },
      (e: Error) => setError(e.message),
    )
    const onResize = (): void => plot?.setSize({ width: width(), height: 220 })
    window.addEventListener('resize', onResize)
    return () => {
      gone = true
      window.removeEventListener('resize', onResize)
      plot?.destroy()
    }
  }, [props.points, props.from, props.to])
  return (
    <figure class="chart">
      <figcaption>{props.title}</figcaption>
      <div ref={box} role="img" aria-label={t('chart.label', { name: props.title, n: props.points.length })} />
      {error && <p class="error">{error}</p>}
    </figure>
  )
}
