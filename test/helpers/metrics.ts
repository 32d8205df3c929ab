// Reading the gateway's Prometheus text (GET /metrics) the way a scraper would: by metric name
// and labels, not by matching whole lines.

/** The value of one sample, e.g. metricValue(text, 'iothub_edge_rejected_total', { reason: 'bad_topic' }); 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (!m || m[1] !== name) continue
    const got: Record<string, string> = {}
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[k] = v
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3])
  }
  return 0
}
