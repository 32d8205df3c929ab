// The technician web app's entry: one client-rendered page on the gateway's JSON API and its live
// stream (docs/operators/ui.md). Served by src/web/routes/ui.ts; built by scripts/build-ui.mjs.
import { render } from 'preact'
import './styles.css'
import { App } from './app.js'

render(<App />, document.getElementById('app')!)
