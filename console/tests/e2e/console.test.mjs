// End-to-end tests of the console in headless Chromium against a running platform (api,
// scheduler, trainer, Postgres). `scripts/test-console.sh` starts everything and sets:
//   MPL_CONSOLE_URL   the server's base URL, e.g. http://127.0.0.1:41234
//   MPL_ADMIN_TOKEN   a token with write scope
// The steps build on each other (the run needs the dataset, compare needs two runs), so they
// run in order in one browser. Each page is saved as a PNG under docs/screenshots/.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.MPL_CONSOLE_URL ?? 'http://127.0.0.1:8080';
const TOKEN = process.env.MPL_ADMIN_TOKEN;
const FASHION = process.env.MPL_FASHION_DIR ?? '/usr/share/datasets/fashion-mnist';
const RUN_TIMEOUT_MS = Number(process.env.MPL_RUN_TIMEOUT_SECS ?? 900) * 1000;
const SHOTS = fileURLToPath(new URL('../../../docs/screenshots/', import.meta.url));

let browser;
let page;
const runIds = [];
let datasetId;
const offMachine = [];

async function shot(name) {
  await page.screenshot({ path: `${SHOTS}${name}.png`, fullPage: true });
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
async function eventually(check, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Calls the API directly, to check what the console shows against the source. */
async function apiGet(path) {
  const res = await fetch(`${BASE}${path}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(res.status, 200, `GET ${path}`);
  return res.json();
}

/** Puts the token where the console keeps it, so a test does not depend on the sign-in ones. */
async function signedIn() {
  if (!page.url().startsWith(BASE)) await page.goto(`${BASE}/`);
  await page.evaluate((token) => localStorage.setItem('mpl.token', token), TOKEN);
}

async function startSmokeRun(name, algorithm) {
  await page.goto(`${BASE}/#/new-run`);
  await page.locator('#preset').selectOption('smoke');
  await eventually(
    async () => (await page.locator('#dataset-labeled').inputValue()) === datasetId,
    20_000,
    'the uploaded dataset to be picked for the preset',
  );
  await page.locator('#spec-algorithm').waitFor();
  await page.locator('#run-name').fill(name);
  await page.locator('#spec-algorithm').selectOption(algorithm);
  await page.getByRole('button', { name: 'Start run' }).click();
  await page.waitForURL(/#\/runs\/[0-9a-f-]{36}$/, { timeout: 20_000 });
  const id = page.url().split('/').pop();
  runIds.push(id);
  return id;
}

describe('console against the real platform', () => {
  before(async () => {
    assert.ok(TOKEN, 'MPL_ADMIN_TOKEN must be set');
    mkdirSync(SHOTS, { recursive: true });
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const context = await browser.newContext({
      viewport: { width: 1440, height: 900 },
      colorScheme: 'dark',
      acceptDownloads: true,
    });
    page = await context.newPage();
    // Every request the console makes must stay on the server it came from.
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith(BASE) && !url.startsWith('data:') && !url.startsWith('blob:')) {
        offMachine.push(url);
      }
    });
  });

  // With MPL_E2E_ARTIFACTS set, the page as each test left it is saved there (for failures).
  afterEach(async (t) => {
    const dir = process.env.MPL_E2E_ARTIFACTS;
    if (!dir || !page) return;
    mkdirSync(dir, { recursive: true });
    const name = (t?.name ?? 'test').replace(/[^a-z0-9]+/gi, '-').slice(0, 60);
    await page.screenshot({ path: `${dir}/${name}.png`, fullPage: true }).catch(() => {});
  });

  after(async () => {
    await browser?.close();
  });

  test('a bad token is refused and a good one signs in', async () => {
    await page.goto(`${BASE}/`);
    await page.getByLabel('API token').waitFor();
    await shot('signin');
    await page.getByLabel('API token').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('This token is not valid').waitFor();
    await page.getByLabel('API token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Runs', exact: true }).waitFor();
  });

  test('a 401 from the API sends the user back to sign in', async () => {
    await page.evaluate(() => localStorage.setItem('mpl.token', 'revoked-token'));
    await page.goto(`${BASE}/#/workers`);
    await page.waitForURL(/#\/signin\?next=%2Fworkers$/, { timeout: 10_000 });
    await page.getByLabel('API token').waitFor();
    await page.getByLabel('API token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Workers & queue', exact: true }).waitFor();
  });

  test('a Fashion-MNIST upload shows progress, then statistics and samples', async () => {
    await signedIn();
    await page.goto(`${BASE}/#/datasets`);
    await page.locator('#ds-name').fill('fashion-mnist-t10k');
    await page.locator('#ds-kind').selectOption('labeled');
    await page.locator('#ds-format').selectOption('idx');
    await page.locator('#ds-part-images').setInputFiles(`${FASHION}/t10k-images-idx3-ubyte.gz`);
    await page.locator('#ds-part-labels').setInputFiles(`${FASHION}/t10k-labels-idx1-ubyte.gz`);
    // The upload may finish between two polls, so the page itself records every progress
    // value the bar shows.
    await page.evaluate(() => {
      window.uploadProgress = [];
      new MutationObserver(() => {
        const bar = document.querySelector('[role="progressbar"][aria-label="Upload of images"]');
        const value = bar?.getAttribute('aria-valuenow');
        if (value !== null && value !== undefined) window.uploadProgress.push(Number(value));
      }).observe(document.body, { subtree: true, childList: true, attributes: true });
    });
    await page.getByRole('button', { name: 'Create and upload' }).click();
    await page.waitForURL(/#\/datasets\/[0-9a-f-]{36}$/, { timeout: 60_000 });
    datasetId = page.url().split('/').pop();
    const progress = await page.evaluate(() => window.uploadProgress);
    assert.ok(progress.includes(100), `the upload bar reached 100%: ${progress}`);

    await page.locator('.badge.status-ready').waitFor({ timeout: 120_000 });
    await page.getByRole('table', { name: 'Images per class' }).waitFor();
    const bars = await page.locator('.class-bars tbody tr').count();
    assert.equal(bars, 10, 'Fashion-MNIST has 10 classes');
    await eventually(
      async () =>
        (await page.locator('.samples img').count()) > 0 &&
        page
          .locator('.samples img')
          .first()
          .evaluate((img) => img.complete && img.naturalWidth > 0),
      20_000,
      'sample images to load',
    );
    await shot('dataset');

    await page.goto(`${BASE}/#/datasets`);
    await page.locator(`tr[data-dataset-id="${datasetId}"][data-status="ready"]`).waitFor();
    await shot('datasets');
  });

  test("the API's field errors appear beside the form fields", async () => {
    await signedIn();
    await page.goto(`${BASE}/#/new-run`);
    await page.locator('#spec-total_steps').waitFor();
    await page.locator('#spec-total_steps').fill('0');
    await page.locator('#spec-batch_size').fill('0');
    await page.getByRole('button', { name: 'Start run' }).click();
    const error = page.locator('#spec-total_steps-error');
    await error.waitFor({ timeout: 10_000 });
    assert.match(await error.innerText(), /at least 1/);
    await page.locator('#spec-batch_size-error').waitFor();
    assert.equal(await page.locator('#spec-total_steps').getAttribute('aria-invalid'), 'true');
    assert.match(page.url(), /#\/new-run$/, 'no run was created');
  });

  test('a smoke run started from the preset charts its metrics live', async () => {
    await signedIn();
    await page.goto(`${BASE}/#/new-run`);
    await page.locator('#spec-algorithm').waitFor();
    await shot('new-run');
    const id = await startSmokeRun('smoke-mpl', 'mpl');

    const losses = page.locator('figure.chart[aria-label^="Losses"]');
    await losses.waitFor();
    const first = Number(await losses.getAttribute('data-points'));
    // The page loaded the series once; only the SSE stream can make it grow after that.
    const grown = await eventually(
      async () => {
        const n = Number(await losses.getAttribute('data-points'));
        return n > first && n > 0 ? n : false;
      },
      RUN_TIMEOUT_MS,
      'the loss chart to grow from the event stream',
    );
    assert.ok(grown > first);
    await page.locator('figure.chart[aria-label^="Losses"] canvas').first().waitFor();

    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: RUN_TIMEOUT_MS });
    await page.locator('tr[data-kind="final"]').waitFor({ timeout: 30_000 });
    const run = await apiGet(`/v1/runs/${id}`);
    assert.equal(run.status, 'succeeded');
    await page.locator('.logs').filter({ hasNotText: 'No log lines yet.' }).waitFor();
    await shot('run');
  });

  test('a checkpoint file downloads with the listed sha256', async () => {
    const button = page.locator('tr[data-kind="final"] button[data-file]').first();
    const expected = await button.getAttribute('data-sha256');
    const [download] = await Promise.all([page.waitForEvent('download'), button.click()]);
    const path = await download.path();
    const digest = createHash('sha256').update(readFileSync(path)).digest('hex');
    assert.equal(digest, expected);

    const [exported] = await Promise.all([
      page.waitForEvent('download'),
      page.locator('tr[data-kind="final"]').getByRole('button', { name: 'Export student' }).click(),
    ]);
    const bytes = readFileSync(await exported.path());
    // A safetensors file starts with the little-endian length of its JSON header.
    const headerLength = Number(bytes.readBigUInt64LE(0));
    assert.ok(headerLength > 0 && headerLength < bytes.length);
    assert.equal(bytes.subarray(8, 9).toString(), '{');
  });

  test('two runs compare: overlaid metric and highlighted spec differences', async () => {
    await signedIn();
    await startSmokeRun('smoke-supervised', 'supervised');
    await page.locator('h1 .badge.status-succeeded').waitFor({ timeout: RUN_TIMEOUT_MS });
    await page.goto(`${BASE}/#/runs`);
    for (const id of runIds) {
      await page.locator(`tr[data-run-id="${id}"] input[type="checkbox"]`).check();
    }
    await page.getByRole('button', { name: 'Compare (2)' }).click();
    await page.waitForURL(/#\/compare\?ids=/);
    const differing = page.locator('.spec-diff tr.differs th', { hasText: /^algorithm/ });
    await differing.waitFor({ timeout: 20_000 });
    // Overlay a metric both runs logged (an accuracy when there is one).
    const [a, b] = await Promise.all(runIds.map((id) => apiGet(`/v1/runs/${id}/metrics`)));
    const shared = a.names.filter((n) => b.names.includes(n));
    assert.ok(shared.length > 0, `the two runs share no metric: ${a.names} / ${b.names}`);
    const metric = shared.find((n) => n.endsWith('top1')) ?? shared[0];
    let offered = [];
    await eventually(
      async () => {
        offered = await page
          .locator('#compare-metric option')
          .evaluateAll((options) => options.map((o) => o.value));
        return offered.includes(metric);
      },
      30_000,
      `the metric selector to offer ${metric}`,
    ).catch(async (err) => {
      const shown = await page.locator('[role="alert"]').allInnerTexts();
      throw new Error(`${err.message}; it offers [${offered}]; alerts: [${shown}]`);
    });
    await page.locator('#compare-metric').selectOption(metric);
    await eventually(
      async () =>
        Number(await page.locator('section figure.chart').getAttribute('data-points')) > 0,
      RUN_TIMEOUT_MS,
      'the compare chart to have points',
    );
    const legend = await page.locator('section figure.chart .u-legend').innerText();
    assert.match(legend, /smoke-mpl/);
    assert.match(legend, /smoke-supervised/);
    await shot('compare');
  });

  test('the runs table, workers and queue pages show the platform state', async () => {
    await signedIn();
    await page.goto(`${BASE}/#/runs`);
    await page.locator(`tr[data-run-id="${runIds[0]}"][data-status="succeeded"]`).waitFor();
    await shot('runs');
    await page.goto(`${BASE}/#/workers`);
    await page.locator('text=alive').first().waitFor({ timeout: 20_000 });
    await shot('workers');
    await page.evaluate(() => localStorage.setItem('mpl.theme', 'light'));
    await page.goto(`${BASE}/#/runs/${runIds[0]}`);
    await page.reload();
    await page.locator('h1 .badge').waitFor();
    await page.locator('figure.chart canvas').first().waitFor();
    await shot('run-light');
  });

  test('no request left the machine', () => {
    assert.deepEqual(offMachine, []);
  });
});
