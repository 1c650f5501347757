// A real OpenID Connect provider (npm oidc-provider 8.8, the certified implementation) for the
// VRE's OIDC login tests. Plain HTTP on 127.0.0.1 only; throwaway keys made at each start.
//
// Accounts live in a JSON file that is read again at every login and every token/userinfo answer,
// so a test changes someone's groups at the "provider" by rewriting it:
//   {"olivia": {"password": "...", "groups": ["vre-users"], "amr": ["pwd", "otp"],
//               "acr": "https://refeds.org/profile/mfa", "claims": {"eduperson_entitlement": [...]}}}
// The login page is the provider's own (username and password); consent is implied for the one
// client (a first-party client, as an institution's VRE is at its own provider).
//
// Usage: node provider.mjs <config.json>  with config {port, accounts, client_id,
//        client_secret_file, redirect_uri, post_logout_redirect_uri}. Prints "ready <issuer>".
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const accounts = () => JSON.parse(readFileSync(config.accounts, 'utf8'));
const MFA = 'https://refeds.org/profile/mfa';
const SFA = 'https://refeds.org/profile/sfa';

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: 'test' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: readFileSync(config.client_secret_file, 'utf8').trim(),
    redirect_uris: [config.redirect_uri],
    post_logout_redirect_uris: [config.post_logout_redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [Math.random().toString(36).slice(2) + Date.now()] },
  claims: {
    openid: ['sub', 'acr', 'amr'],  // how the login was made: in every ID token, as Keycloak does
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
    entitlements: ['eduperson_entitlement'],
  },
  acrValues: [SFA, MFA],
  features: { devInteractions: { enabled: false }, rpInitiatedLogout: { enabled: true } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = accounts()[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        const a = accounts()[id] || {};  // the file now: a group changed since login counts
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.org`,
                 groups: a.groups || [], ...(a.claims || {}) };
      },
    };
  },
});

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (uid, error) => `<!doctype html><html><head><title>Test provider: sign in</title></head><body>
<h1>Test identity provider</h1>${error ? `<p id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>Username <input name="login" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form></body></html>`;

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return new URLSearchParams(Buffer.concat(chunks).toString());
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'consent') {
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const d = details.prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } },
      { mergeWithLastSubmission: true });
    return;
  }
  if (action !== 'login' || req.method !== 'POST') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page(uid));
    return;
  }
  const form = await body(req);
  const id = form.get('login') || '';
  const account = accounts()[id];
  if (!account || account.password !== form.get('password')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page(uid, 'Wrong username or password.'));
    return;
  }
  const login = { accountId: id, amr: account.amr || ['pwd'], acr: account.acr || SFA };
  await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
}

const handle = provider.callback();
const server = http.createServer(async (req, res) => {
  const m = req.url.match(/^\/interaction\/([^/?]+)(?:\/(login))?/);
  if (!m) return handle(req, res);
  try {
    await interaction(req, res, m[1], m[2]);
  } catch (e) {
    console.error(e);
    res.writeHead(400, { 'content-type': 'text/plain' }).end(`interaction failed: ${e.message}`);
  }
});
server.listen(config.port, '127.0.0.1', () => console.log(`ready ${issuer}`));
