import { test, expect } from './fixtures';

test('Config → JWKS lists every key, matching the published JWKS', async ({ page, request }) => {
  const published = await (await request.get('/.well-known/jwks.json')).json();
  const kids: string[] = published.keys.map((k: { kid: string }) => k.kid).sort();
  expect(kids.length).toBe(4);

  await page.goto('/config/jwks');
  const rows = page.locator('table.keys tbody tr');
  await expect(rows).toHaveCount(4);
  const shown = (await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-kid')))).sort();
  expect(shown).toEqual(kids);
  await expect(page.locator('tr[data-state="active"]')).toHaveCount(2);
  await expect(page.locator('tr[data-state="next"]')).toHaveCount(2);
  await expect(page.getByRole('columnheader', { name: 'Publication ends' })).toBeVisible();
});
