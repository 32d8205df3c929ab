// V8's young generation, kept small however the gateway is started (docs/performance.md, "Memory").
// Node.js lets the semi-space grow to 16 MiB (32 MiB of new space, touched once and kept): on an
// idle gateway that is a third of its heap. `--max-semi-space-size` is read only when the process
// starts (set by npm start, the .deb's wrapper and the image), so a gateway started as
// `node bin/iothub-edge.js start` grows it during its start. What can be set at run time is the
// growth factor: at 1 the new space keeps its initial size (1 MiB semi-spaces). V8 raises the
// factor back to its minimum of 2 whenever it configures a new isolate, i.e. each time a worker
// thread starts, so whoever starts one calls this again right after (src/gateway.ts: after the store
// opened its writer thread, and for each start of the history's).
import v8 from 'node:v8'

let operatorChose: boolean | undefined

/** Stop the young generation from growing, unless the operator set its size themselves. */
export function keepYoungGenerationSmall(): void {
  operatorChose ??= /semi[-_]space/.test([...process.execArgv, process.env.NODE_OPTIONS ?? ''].join(' '))
  if (!operatorChose) v8.setFlagsFromString('--semi-space-growth-factor=1')
}
