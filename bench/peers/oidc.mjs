// node oidc-provider serving its JWKS with two signing keys (EdDSA and RS256, like
// Signet's default), for bench/run. Usage: node oidc.mjs PORT
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] ?? 3993);
const jwk = (type, options, alg) => {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig' };
};
const keys = [
  jwk('ed25519', {}, 'EdDSA'),
  jwk('rsa', { modulusLength: 2048 }, 'RS256'),
];
const provider = new Provider(`http://127.0.0.1:${port}`, { jwks: { keys } });
provider.listen(port, '127.0.0.1');
