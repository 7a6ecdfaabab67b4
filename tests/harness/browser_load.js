// A real browser against the broker: Debian's Chromium, driven by playwright-core (from
// scripts/install-browser.sh), opens each page of PAGE_URLS, a page on an origin of its
// own that loads @cubejs-client/core's browser bundle and writes the outcome of a load()
// into its #outcome element (tests/harness/dashboard.html), and optionally saves a
// screenshot of it. Run by tests/harness/browser.py (for tests/e2e/test_browser.py and
// the end of make demo).
//
// Input (environment):
//   PLAYWRIGHT_INSTALL_DIR  the folder whose node_modules holds playwright-core
//   CHROMIUM                the Chromium executable (/usr/bin/chromium)
//   PAGE_URLS               the pages to open, a JSON list
//   PAGE_TIMEOUT_MS         how long a page may take to write its outcome
//   SCREENSHOTS             optional, a JSON object {"<url>": "<PNG path>"}: the page's
//                           screenshot, taken once its outcome is written
// Output: one JSON line {"<url>": {"outcome": <the page's JSON or null>, "title": ...,
// "console": [...], "failed": [{"url", "error"}...]}, ...}; on a failure of the script
// itself, a line on stderr and exit code 1.
'use strict';

const { createRequire } = require('module');
const path = require('path');

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`browser_load.js: environment variable ${name} is required`);
  }
  return value;
}

async function visit(browser, url, timeout, screenshot) {
  const context = await browser.newContext({ viewport: { width: 720, height: 360 } });
  try {
    const page = await context.newPage();
    const consoleLines = [];
    const failed = [];
    page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
    page.on('requestfailed', (request) => {
      const failure = request.failure();
      failed.push({ url: request.url(), error: failure ? failure.errorText : '' });
    });
    await page.goto(url, { timeout });
    const outcome = page.locator('#outcome[data-done]');
    await outcome.waitFor({ state: 'attached', timeout });
    if (screenshot) {
      await page.screenshot({ path: screenshot, type: 'png', timeout });
    }
    return {
      outcome: JSON.parse(await outcome.textContent()),
      title: await page.title(),
      console: consoleLines,
      failed,
    };
  } finally {
    await context.close();
  }
}

async function main() {
  const fromInstall = createRequire(path.join(required('PLAYWRIGHT_INSTALL_DIR'), 'package.json'));
  const { chromium } = fromInstall('playwright-core');
  const urls = JSON.parse(required('PAGE_URLS'));
  const timeout = Number(required('PAGE_TIMEOUT_MS'));
  const screenshots = JSON.parse(process.env.SCREENSHOTS || '{}');
  // launch() gives Chromium a fresh profile (--user-data-dir) of its own and removes it.
  const browser = await chromium.launch({
    executablePath: required('CHROMIUM'),
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const out = {};
    for (const url of urls) {
      out[url] = await visit(browser, url, timeout, screenshots[url]);
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  process.stderr.write(`browser_load.js: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
