import { test, expect, hydrated, signIn, signet, ADMIN } from './fixtures';
import { readFileSync } from 'node:fs';

test.beforeEach(async ({ page }) => {
  await signIn(page, ADMIN, '/events');
  await hydrated(page, '#apply-filters');
});

test('a rotation made in the UI appears with the admin as actor', async ({ page }) => {
  await page.goto('/config/jwks');
  await hydrated(page, '#rotate-keys');
  await page.getByRole('button', { name: 'Rotate Keys' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Rotate Keys' }).click();
  await expect(page.locator('#action-status .success')).toBeVisible();

  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Events' }).click();
  const row = page.locator('tr[data-kind="keys.rotated"]').first();
  await expect(row.locator('td.actor')).toHaveText(ADMIN.email);
  await expect(row).toContainText('ui');
});

test('filters narrow the view, and the export links carry them', async ({ page }) => {
  await page.getByLabel('Kind').selectOption('admin.login');
  await page.getByLabel('Actor').fill(ADMIN.email);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  const rows = page.locator('#first-rows tr');
  await expect(rows.first()).toBeVisible();
  for (const kind of await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-kind')))) {
    expect(kind).toBe('admin.login');
  }
  await expect(page.locator('#export-csv')).toHaveAttribute('href', /kind=admin\.login&actor=admin%40localhost/);

  const download = page.waitForEvent('download');
  await page.locator('#export-csv').click();
  const csv = readFileSync(await (await download).path(), 'utf8');
  const lines = csv.trim().split('\n');
  expect(lines[0]).toBe('id,at,level,kind,actor,trigger,source,kids,reason,details');
  expect(lines.length).toBeGreaterThan(1);
  for (const line of lines.slice(1)) expect(line).toContain(',admin.login,admin@localhost,');

  await page.getByLabel('Level').selectOption('critical');
  await page.getByLabel('Kind').selectOption('');
  await page.getByLabel('Actor').fill('');
  await page.getByLabel('From (UTC)').fill('2999-01-01T00:00');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await expect(page.locator('#no-events')).toBeVisible();
});

test('the live tail shows an event made through the API while the page is open', async ({ page, request }) => {
  await expect(page.locator('#tail-state')).toHaveText('live');
  const token = signet(['token', 'create', `e2e-tail-${Date.now()}`, '--scope', 'keys:write']).trim();
  const res = await request.post('/api/v1/keys/rotate', {
    headers: { authorization: `Bearer ${token}` },
    data: { alg: 'EdDSA' },
  });
  expect(res.status()).toBe(200);
  const live = page.locator('#live-rows tr[data-kind="keys.rotated"]');
  await expect(live).toHaveCount(1, { timeout: 10_000 });
  await expect(live.locator('td.actor')).toHaveText(/^token:e2e-tail-/);
  await expect(live).toContainText('api');
});

test('older events load page by page', async ({ page }) => {
  // More than a page of events: 55 token creations through the CLI.
  for (let i = 0; i < 55; i++) signet(['token', 'create', `e2e-page-${Date.now()}-${i}`, '--scope', 'sign']);
  await page.reload();
  await hydrated(page, '#apply-filters');
  await expect(page.locator('#first-rows tr')).toHaveCount(50);
  const older = page.getByRole('button', { name: 'Load older events' });
  await expect(older).toBeEnabled();
  await older.click();
  await expect(page.locator('#older-rows tr').first()).toBeVisible();
  const ids = await page.locator('tbody tr[data-id]').evaluateAll((trs) => trs.map((tr) => Number(tr.getAttribute('data-id'))));
  for (let i = 1; i < ids.length; i++) expect(ids[i]).toBeLessThan(ids[i - 1]);
});
