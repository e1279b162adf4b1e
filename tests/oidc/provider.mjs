// A real OpenID provider (the `oidc-provider` package) on loopback, for tests/test_oauth.py.
//
// Usage: node provider.mjs '<json config>'
//   {"port": 1234, "clients": [{client_id, client_secret, redirect_uris, token_endpoint_auth_method}]}
// Prints "ready <issuer>" on stdout once it listens.
//
// Accounts are derived from the login name typed into the (development) login form, so the
// tests can choose the claims they need without a user table:
//   "alice"            -> sub "alice", email alice@example.test, email_verified true
//   "unverified-bob"   -> sub "unverified-bob", email bob@example.test, email_verified false
//   "noemail-carol"    -> sub "noemail-carol", no email claim
// It also answers GitHub's two user API calls (GET /user, GET /user/emails) for an access
// token it issued, so CodeSync's GitHub code path runs against it too.
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2] || '{}');
const port = Number(config.port);
const issuer = `http://127.0.0.1:${port}`;

function claimsFor(id) {
  const claims = { sub: id, name: `Test ${id}`, preferred_username: id };
  if (id.startsWith('noemail-')) return claims;
  if (id.startsWith('unverified-')) {
    return { ...claims, email: `${id.slice('unverified-'.length)}@example.test`, email_verified: false };
  }
  return { ...claims, email: `${id}@example.test`, email_verified: true };
}

const provider = new Provider(issuer, {
  clients: (config.clients || []).map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...client,
  })),
  async findAccount(_ctx, id) {
    return { accountId: id, async claims() { return claimsFor(id); } };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'read:user', 'user:email'],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['codesync-test-cookie-key'] },
});

// GitHub's user API, answered for access tokens this provider issued.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'GET' || (ctx.path !== '/user' && ctx.path !== '/user/emails')) {
    return next();
  }
  const [scheme, value] = (ctx.get('authorization') || '').split(' ');
  const token = ['bearer', 'token'].includes((scheme || '').toLowerCase())
    ? await provider.AccessToken.find(value || '') : undefined;
  if (!token) {
    ctx.status = 401;
    ctx.body = { message: 'Bad credentials' };
    return undefined;
  }
  const claims = claimsFor(token.accountId);
  if (ctx.path === '/user') {
    ctx.body = {
      id: `gh-${claims.sub}`, login: claims.preferred_username, name: claims.name, email: null,
    };
  } else {
    ctx.body = claims.email
      ? [
        { email: `other-${claims.email}`, primary: false, verified: true, visibility: null },
        { email: claims.email, primary: true, verified: claims.email_verified, visibility: 'private' },
      ]
      : [];
  }
  return undefined;
});

const server = createServer(provider.callback());
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
