import { test, expect, hydrated, signIn, ADMIN } from './fixtures';
import { readFileSync } from 'node:fs';
import type { Page, APIRequestContext } from '@playwright/test';

const publishedKids = async (request: APIRequestContext): Promise<string[]> => {
  const jwks = await (await request.get('/.well-known/jwks.json')).json();
  return jwks.keys.map((k: { kid: string }) => k.kid);
};

const kidOf = (page: Page, alg: string, state: string) =>
  page.locator(`section[data-alg="${alg}"] tr[data-state="${state}"]`).first().getAttribute('data-kid');

test.beforeEach(async ({ page }) => {
  await signIn(page, ADMIN);
  await hydrated(page, '#rotate-keys');
});

test('Config → JWKS lists every key with its state and timestamps, matching the JWKS', async ({ page, request }) => {
  const kids = (await publishedKids(request)).sort();
  const live = page.locator('table.keys tbody tr:is([data-state="active"], [data-state="next"], [data-state="rotated"])');
  const shown = (await live.evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-kid')))).sort();
  expect(shown).toEqual(kids);
  for (const header of ['State', 'Created', 'Activated', 'Rotated', 'Revoked', 'Publication ends']) {
    await expect(page.getByRole('columnheader', { name: header }).first()).toBeVisible();
  }
  await expect(page.getByRole('img', { name: /Timeline of/ })).toBeVisible();

  // The public JWK of a key, and its PEM download.
  const row = page.locator('section[data-alg="EdDSA"] tr[data-state="active"]');
  await row.getByText('Public JWK').click();
  const jwk = JSON.parse((await row.locator('pre.jwk-text').textContent())!);
  expect(jwk.kty).toBe('OKP');
  expect(jwk.d).toBeUndefined();
  const download = page.waitForEvent('download');
  await row.getByRole('link', { name: 'Download PEM' }).click();
  const file = await (await download).path();
  const pem = readFileSync(file, 'utf8');
  expect(pem).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
});

test('Rotate Keys: the active kid changes in the page and the JWKS, the old key shows as rotated', async ({ page, request }) => {
  const oldActive = await kidOf(page, 'EdDSA', 'active');
  const oldNext = await kidOf(page, 'EdDSA', 'next');

  await page.getByRole('button', { name: 'Rotate Keys' }).click();
  const dialog = page.getByRole('dialog', { name: 'Rotate Keys?' });
  await expect(dialog).toBeVisible();
  await dialog.getByRole('button', { name: 'Rotate Keys' }).click();

  await expect(page.locator('#action-status .success')).toContainText('Keys rotated');
  await expect(page.locator(`section[data-alg="EdDSA"] tr[data-kid="${oldActive}"]`)).toHaveAttribute('data-state', 'rotated');
  const newActive = await kidOf(page, 'EdDSA', 'active');
  expect(newActive).toBe(oldNext);
  const kids = await publishedKids(request);
  expect(kids).toContain(newActive);
  expect(kids).toContain(oldActive); // rotated keys stay published until retention ends
});

test('Revoke a single key with a reason: it leaves the JWKS at once', async ({ page, request }) => {
  const next = (await kidOf(page, 'RS256', 'next'))!;
  expect(await publishedKids(request)).toContain(next);

  await page.getByRole('button', { name: `Revoke key ${next}` }).click();
  const dialog = page.getByRole('dialog', { name: 'Revoke this key?' });
  const confirm = dialog.getByRole('button', { name: 'Revoke' });
  await expect(confirm).toBeDisabled(); // a reason is required
  await dialog.getByLabel(/Reason/).fill('found in a debug log');
  await confirm.click();

  await expect(page.locator('#action-status .success')).toContainText(`Key ${next} revoked`);
  await expect(page.locator(`tr[data-kid="${next}"]`)).toHaveAttribute('data-state', 'revoked');
  await expect(page.locator(`tr[data-kid="${next}"]`)).toContainText('Reason: found in a debug log');
  expect(await publishedKids(request)).not.toContain(next);
});

test('Rotate and revoke: the active and next keys leave the JWKS, fresh ones replace them', async ({ page, request }) => {
  await page.getByLabel('Algorithms', { exact: true }).selectOption('EdDSA');
  const active = (await kidOf(page, 'EdDSA', 'active'))!;
  const next = (await kidOf(page, 'EdDSA', 'next'))!;

  await page.getByRole('button', { name: 'Rotate and revoke' }).click();
  const dialog = page.getByRole('dialog', { name: 'Rotate and revoke?' });
  await expect(dialog).toContainText('EdDSA');
  await dialog.getByLabel(/Reason/).fill('suspected compromise');
  await dialog.getByRole('button', { name: 'Rotate and revoke' }).click();

  await expect(page.locator('#action-status .success')).toContainText('revoked');
  await expect(page.locator(`tr[data-kid="${active}"]`)).toHaveAttribute('data-state', 'revoked');
  await expect(page.locator(`tr[data-kid="${next}"]`)).toHaveAttribute('data-state', 'revoked');
  const kids = await publishedKids(request);
  expect(kids).not.toContain(active);
  expect(kids).not.toContain(next);
  const fresh = (await kidOf(page, 'EdDSA', 'active'))!;
  expect(kids).toContain(fresh);
});

test('cancelling the dialog changes nothing', async ({ page, request }) => {
  const before = (await publishedKids(request)).sort();
  await page.getByRole('button', { name: 'Rotate Keys' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  await expect(page.getByRole('dialog')).toBeHidden();
  expect((await publishedKids(request)).sort()).toEqual(before);
});
