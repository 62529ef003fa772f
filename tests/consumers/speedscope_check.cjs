// Checks a pyebpf speedscope file the way a user meets it, with the npm package `speedscope`:
//  1. validates it against the file-format schema shipped in the package (ajv);
//  2. opens it in the speedscope app shipped in the package, served from 127.0.0.1, in headless
//     Debian Chromium (playwright-core drives the browser, none is downloaded), and reads back
//     what the app shows: the thread it opened, the threads it lists, the frame under the mouse
//     at the root of the flame chart, and the functions of its sandwich table.
//
// Usage: node speedscope_check.cjs FILE.speedscope.json SCREENSHOT.png
// Prints one JSON object on stdout; exits non-zero with a one-line reason on failure.
// Needs NODE_PATH pointing at the node_modules installed from this folder's package-lock.json.
'use strict'
const fs = require('fs')
const http = require('http')
const path = require('path')
const Ajv = require('ajv')
const { chromium } = require('playwright-core')

const [file, screenshot] = process.argv.slice(2)
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium'
const release = path.join(path.dirname(require.resolve('speedscope/package.json')), 'dist', 'release')

function fail(message) {
  console.error(`speedscope check: ${message}`)
  process.exit(1)
}

function validate(profile) {
  const schema = JSON.parse(fs.readFileSync(path.join(release, 'file-format-schema.json'), 'utf8'))
  // strict: false because the generated schema carries `title` next to `$ref`.
  const check = new Ajv({ strict: false, allErrors: true }).compile(schema)
  if (!check(profile)) fail(`schema: ${JSON.stringify(check.errors.slice(0, 5))}`)
}

// The app's files and the profile, from loopback only (the browser has no other network).
function serve(profileBytes) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
    '.wasm': 'application/wasm', '.png': 'image/png', '.woff2': 'font/woff2' }
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1')
    if (url.pathname === '/profile.speedscope.json') {
      res.writeHead(200, { 'content-type': 'application/json' })
      return res.end(profileBytes)
    }
    const target = path.join(release, path.normalize(url.pathname).replace(/^[/\\]+/, ''))
    if (!target.startsWith(release) || !fs.existsSync(target) || fs.statSync(target).isDirectory()) {
      res.writeHead(404)
      return res.end()
    }
    res.writeHead(200, { 'content-type': types[path.extname(target)] || 'application/octet-stream' })
    fs.createReadStream(target).pipe(res)
  })
  return new Promise(resolve => server.listen(0, '127.0.0.1', () => resolve(server)))
}

async function main() {
  const bytes = fs.readFileSync(file)
  const profile = JSON.parse(bytes)
  validate(profile)

  const server = await serve(bytes)
  const base = `http://127.0.0.1:${server.address().port}`
  // playwright-core starts the browser with a fresh temporary profile directory of its own and
  // removes it afterwards; the flags keep Chromium off the (closed) network.
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    chromiumSandbox: false,
    args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  })
  const problems = []
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } })
    page.on('pageerror', e => problems.push(`page error: ${e.message}`))
    page.on('console', m => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`) })
    page.on('dialog', async d => { problems.push(`dialog: ${d.message()}`); await d.dismiss() })
    await page.goto(`${base}/index.html#profileURL=${encodeURIComponent(base + '/profile.speedscope.json')}`)

    // The toolbar names the open profile, "(i/n)" after it, once the import is done.
    const index = profile.activeProfileIndex ?? 0
    const counter = `(${index + 1}/${profile.profiles.length})`
    const toolbar = page.locator('span', { hasText: counter }).first()
    await toolbar.waitFor({ timeout: 20000 }).catch(() => fail(`the app never showed a profile; ${problems.join('; ')}`))
    if (await page.getByText('Something went wrong').count()) fail(`import failed: ${problems.join('; ')}`)
    const shown = (await toolbar.innerText()).replace(counter, '').trim()

    // The profile picker's table (in the DOM while closed) lists every thread with its total.
    const threads = await page.$$eval('tr[title]', rows => rows.map(r => r.title))

    // Left Heavy merges stacks, heaviest first: the frame at the top-left is the heaviest root,
    // and hovering it makes speedscope name it (weight, name, file:line) in a DOM tooltip.
    await page.getByText('Left Heavy').click()
    await page.waitForTimeout(300)
    const chart = await page.locator('canvas').last().boundingBox()
    const plain = await page.evaluate(() => document.body.innerText)
    await page.mouse.move(chart.x + 40, chart.y + 31)
    await page.waitForTimeout(300)
    const hovered = (await page.evaluate(() => document.body.innerText)).slice(plain.length).trim()
    await page.screenshot({ path: screenshot })

    // Sandwich: a DOM table of functions by total weight, heaviest first.
    await page.getByText('Sandwich').click()
    await page.waitForTimeout(300)
    const functions = await page.$$eval('tr', rows => rows.filter(r => !r.title && r.offsetParent !== null)
      .map(r => r.innerText.split('\t').map(c => c.trim())).filter(c => c.length === 3 && c[0] !== 'Total'))
    await page.screenshot({ path: screenshot.replace(/\.png$/, '-sandwich.png') })
    console.log(JSON.stringify({ shown, threads, hovered, functions, problems }))
  } finally {
    await browser.close()
    server.close()
  }
}

main().catch(e => fail(e.stack || String(e)))
