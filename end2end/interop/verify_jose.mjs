// Verifies tokens against Signet's live JWKS with jose's createRemoteJWKSet.
// Usage: node verify_jose.mjs JWKS_URL ISSUER TOKEN... ; prints one JSON line per token.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, ...tokens] = process.argv.slice(2);
for (const token of tokens) {
  // A fresh key set per token: no cache hides a revocation.
  const jwks = createRemoteJWKSet(new URL(jwksUrl), { cacheMaxAge: 0, cooldownDuration: 0 });
  try {
    const { payload } = await jwtVerify(token, jwks, { issuer });
    console.log(JSON.stringify({ valid: true, sub: payload.sub }));
  } catch (e) {
    console.log(JSON.stringify({ valid: false, error: `${e.code ?? e.name}: ${e.message}` }));
  }
}
