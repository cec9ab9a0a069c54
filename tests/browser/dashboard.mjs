// Drives the coordinator's dashboard in headless Chromium while a job trains (run by tests/tests/dashboard.rs).
// Arguments come as environment variables; every check that fails throws, and the exit status says so.
//   DASHBOARD_URL     https://127.0.0.1:PORT
//   SERVER_CERT       the dashboard's certificate (PEM): Chromium trusts exactly its key, nothing else
//   VIEWER_TOKEN, OPERATOR_TOKEN, CLIENT_TOKEN
//   JOB_ID, CLASSES, EPOCHS
//   SCREENSHOTS       folder for the screenshots people look at
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync, mkdirSync } from 'node:fs';
import { chromium } from './node_modules/playwright-core/index.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('DASHBOARD_URL');
const jobId = env('JOB_ID');
const classes = Number(env('CLASSES'));
const epochs = Number(env('EPOCHS'));
const screenshots = env('SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

// Pin the server's public key: certificate errors for any other key still fail.
const spki = new X509Certificate(readFileSync(env('SERVER_CERT'))).publicKey.export({ type: 'spki', format: 'der' });
const spkiHash = createHash('sha256').update(spki).digest('base64');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', `--ignore-certificate-errors-spki-list=${spkiHash}`,
  ],
});

async function login(context, token) {
  const page = await context.newPage();
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', 'a page without a token is sent to the login form');
  await page.fill('input[name="token"]', token);
  await Promise.all([page.waitForNavigation(), page.press('input[name="token"]', 'Enter')]);
  return page;
}

try {
  // Without a token: the login form, and the live fragment answers 401.
  const anonymous = await browser.newContext();
  const anonymousPage = await anonymous.newPage();
  await anonymousPage.goto(`${base}/jobs/${jobId}`);
  check(new URL(anonymousPage.url()).pathname === '/login', 'the job page without a token redirects to /login');
  // Asked from the (same-origin) login page, as the job page's own polling would.
  const liveStatus = await anonymousPage.evaluate((url) => fetch(url).then((response) => response.status), `/jobs/${jobId}/live`);
  check(liveStatus === 401, `the live fragment without a token answers 401 (got ${liveStatus})`);
  await anonymousPage.fill('input[name="token"]', 'not-a-token');
  await anonymousPage.press('input[name="token"]', 'Enter');
  await anonymousPage.waitForLoadState();
  check(new URL(anonymousPage.url()).pathname === '/login', 'a wrong token stays on the login form');
  check((await anonymousPage.content()).includes('unknown token'), 'a wrong token is told so');
  await anonymous.close();

  // An inference client's token is authenticated but not allowed to see jobs.
  const client = await browser.newContext();
  const clientPage = await login(client, env('CLIENT_TOKEN'));
  const clientResponse = await clientPage.goto(`${base}/`);
  check(clientResponse.status() === 403, `the client role is refused the jobs list (got ${clientResponse.status()})`);
  await client.close();

  // A viewer: the jobs list shows the job.
  const viewer = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const jobsPage = await login(viewer, env('VIEWER_TOKEN'));
  await jobsPage.goto(`${base}/`);
  check(await jobsPage.locator(`tr.job-row[data-job-id="${jobId}"]`).count() === 1, 'the jobs list shows the job');
  await jobsPage.screenshot({ path: `${screenshots}/jobs.png`, fullPage: true });

  // The job page gains epoch points while it stays loaded (its own polling, no reload).
  const jobPage = await viewer.newPage();
  await jobPage.goto(`${base}/jobs/${jobId}`);
  await jobPage.evaluate(() => { window.__notReloaded = true; });
  const macroF1Points = () => jobPage.locator('#epoch-curve circle.point[data-series="macro_f1"]').count();
  const first = await macroF1Points();
  console.log(`epoch points when the page loaded: ${first}`);
  check(first < epochs, `the page loaded before the last epoch (${first} of ${epochs} points)`);
  const seen = new Set([first]);
  const deadline = Date.now() + 240_000;
  let finished = false;
  while (!finished && Date.now() < deadline) {
    await jobPage.waitForTimeout(500);
    seen.add(await macroF1Points());
    finished = (await jobPage.locator('#live').getAttribute('data-finished')) === 'true';
    if (seen.size === 2 && !finished) {
      await jobPage.screenshot({ path: `${screenshots}/job-training.png`, fullPage: true });
    }
  }
  check(finished, 'the job page saw the job finish');
  const last = await macroF1Points();
  check(last === epochs, `the macro-F1 curve has one point per epoch (${last} of ${epochs})`);
  check([...seen].some((count) => count > first), `the curve gained points while the page was open (${[...seen]})`);
  check(await jobPage.evaluate(() => window.__notReloaded === true), 'the page updated itself without reloading');
  check(await jobPage.locator('#loss-curve polyline.series').count() >= 1, 'the loss curve is drawn');
  const cells = await jobPage.locator('#confusion rect.cell').count();
  check(cells === classes * classes, `the heatmap has classes x classes cells (${cells} = ${classes}^2)`);
  const rows = await jobPage.locator('#per-class tbody tr').count();
  check(rows === classes, `the per-class table has a row per class (${rows})`);
  await jobPage.screenshot({ path: `${screenshots}/job.png`, fullPage: true });

  // The viewer sees models but may not promote them.
  const viewerModels = await viewer.newPage();
  await viewerModels.goto(`${base}/models`);
  check(await viewerModels.locator('#models tbody tr').count() >= 1, 'the models page lists the trained model');
  check(await viewerModels.locator('form[action="/models/promote"]').count() === 0, 'a viewer gets no promote button');
  await viewer.close();

  // An operator promotes the model with the button.
  const operator = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const operatorPage = await login(operator, env('OPERATOR_TOKEN'));
  await operatorPage.goto(`${base}/models`);
  const form = operatorPage.locator('form[action="/models/promote"]').first();
  await form.locator('input[name="alias"]').fill('production');
  await Promise.all([operatorPage.waitForNavigation(), form.locator('button').click()]);
  check((await operatorPage.content()).includes('is now production'), 'the operator promoted the model');
  await operatorPage.screenshot({ path: `${screenshots}/models.png`, fullPage: true });
  await operatorPage.goto(`${base}/workers`);
  check(await operatorPage.locator('#workers-list tbody tr').count() >= 2, 'the workers page lists the workers');
  await operatorPage.screenshot({ path: `${screenshots}/workers.png`, fullPage: true });
  await operator.close();
} finally {
  await browser.close();
}
