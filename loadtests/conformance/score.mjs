// Scores cache-tests CLI results with the suite's own rules (determineTestResult, with
// dependencies honoured as cache-tests.fyi shows them). Usage:
//   node score.mjs SUITE_DIR RESULTS.json [--published]
// Prints one JSON object: {"<name>": {"required": [passed, total], "optimal": [...],
// "failing": {"<test id>": ["fail" | "dependency" | ..., detail, test name]}}}.
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, ...files] = process.argv.slice(2)
const engine = fs.existsSync(path.join(suiteDir, 'test-engine')) ? 'test-engine/' : ''
const load = rel => import(pathToFileURL(path.join(suiteDir, rel)).href)

const tests = (await load('tests/index.mjs')).default.slice()
if (fs.existsSync(path.join(suiteDir, 'tests/surrogate-control.mjs')) && engine === '') {
  tests.push((await load('tests/surrogate-control.mjs')).default) // as the 0.4.x CLI does
}
const scoring = engine
  ? await load('test-engine/lib/results.mjs')
  : await load('lib/display.mjs')

const kinds = { pass: 'pass', fail: 'fail', optional_fail: 'fail', dependency_fail: 'dependency', setup_fail: 'setup', harness_fail: 'harness', retry: 'retry', untested: 'untested' }
// The 0.4.x package does not export resultTypes: the same table, keyed by its symbols.
const symbols = { '✅': 'pass', '⛔️': 'fail', '⚠️': 'optional_fail', '⚪️': 'dependency_fail', '🔹': 'setup_fail', '⁉️': 'harness_fail', '↻': 'retry', '-': 'untested' }
const byValue = new Map(Object.entries(scoring.resultTypes || {}).map(([k, v]) => [v[2], k]))
for (const [symbol, name] of Object.entries(symbols)) if (!byValue.has(symbol)) byValue.set(symbol, name)

function score (results) {
  const out = { required: [0, 0], optimal: [0, 0], failing: {} }
  for (const suite of tests) {
    for (const test of suite.tests) {
      if (test.browser_only === true) continue
      const kind = test.kind === undefined ? 'required' : test.kind
      if (kind !== 'required' && kind !== 'optimal') continue
      const verdict = scoring.determineTestResult(tests, test.id, results)
      const name = byValue.get(verdict[2]) || 'other'
      out[kind][1] += 1
      if (name === 'pass') {
        out[kind][0] += 1
      } else if (kind === 'required') {
        const raw = results[test.id]
        const detail = Array.isArray(raw) ? raw.slice(0, 2).join(': ') : String(raw)
        out.failing[test.id] = [kinds[name] || name, detail, test.name]
      }
    }
  }
  return out
}

const report = {}
for (const file of files) {
  if (file === '--published') { // every reverse proxy / CDN in the suite's results/
    const index = (await load('results/index.mjs')).default
    for (const item of index) {
      if (item.type === 'browser') continue
      const results = JSON.parse(fs.readFileSync(path.join(suiteDir, 'results', item.file), 'utf8'))
      const scored = score(results)
      delete scored.failing
      report[`${item.name} ${item.version || ''}`.trim()] = scored
    }
    continue
  }
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  report[file] = score(results)
}
console.log(JSON.stringify(report))
