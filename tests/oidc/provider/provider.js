// A real OpenID Provider for poolgate's tests: panva's oidc-provider (the OpenID-certified
// implementation), configured from a JSON file written by the Rust harness
// (tests/oidc/provider.rs) and run as `node provider.js CONFIG.json`.
//
// What the config holds: the loopback `port`, `issuer`, `clients` (oidc-provider client
// metadata), `accounts` ({id, username, password, groups, amr, name, email}), `idTokenTtl`
// (seconds), and for the fault cases `advertiseAlgs` (the discovery document's
// id_token_signing_alg_values_supported, whatever the provider signs with),
// `advertiseIssuer` (the discovery document's issuer, whatever the tokens say) and
// `idTokenAudience` (the ID tokens' aud, whatever the client is).
//
// The login is a plain HTML form (no devInteractions): GET /interaction/:uid shows it,
// POST /interaction/:uid/login signs in (and grants the requested scopes: no consent page),
// POST /interaction/:uid/abort answers the client with error=access_denied. A test drives it
// over HTTP; Chromium can click it (#username, #password, #sign-in, #cancel).
//
// Test endpoints: POST /test/rotate (a new RS256 key: the old one is no longer published),
// POST /test/clock?offset=SECONDS (the provider's clock moves), GET /test/stats (requests
// counted by path). The process prints `listening on PORT` once it serves.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.id, a]));

// The clock: every Date.now() of the provider (token iat/exp, cookies) is offset.
const realNow = Date.now.bind(Date);
let clockOffsetMs = 0;
Date.now = () => realNow() + clockOffsetMs;

const counts = {};

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function build(signingKey) {
  const provider = new Provider(config.issuer, {
    clients: config.clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: ['poolgate-test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true },
    },
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'HS256'] },
    pkce: { required: () => true },
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub', 'preferred_username', 'groups', 'amr'],
      profile: ['name'],
      email: ['email'],
    },
    ttl: { IdToken: config.idTokenTtl ?? 3600 },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const account = accounts.get(id);
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: account.username,
            groups: account.groups,
            name: account.name ?? account.username,
            email: account.email ?? `${account.username}@example.org`,
          };
        },
      };
    },
    // No consent page: the scopes asked for are granted (a first-party client).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
      await grant.save();
      return grant;
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/.well-known/openid-configuration' && ctx.body) {
      if (config.advertiseAlgs) ctx.body.id_token_signing_alg_values_supported = config.advertiseAlgs;
      if (config.advertiseIssuer) ctx.body.issuer = config.advertiseIssuer;
    }
  });
  if (config.idTokenAudience) {
    const { issue } = provider.IdToken.prototype;
    provider.IdToken.prototype.issue = function tampered(options) {
      const client = this.client;
      this.client = new Proxy(client, {
        get: (target, prop) => (prop === 'clientId' ? config.idTokenAudience : Reflect.get(target, prop, target)),
      });
      return issue.call(this, options);
    };
  }
  return provider;
}

let provider = build(newSigningKey());

function form(uid, message = '') {
  return `<!doctype html><html><head><title>Test provider sign-in</title></head><body>
<h1>Test provider sign-in</h1>
${message ? `<p id="message">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Username <input id="username" name="username" autofocus></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="sign-in" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${escapeHtml(uid)}/abort">
<button id="cancel" type="submit">Cancel</button>
</form></body></html>`;
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, text) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(text);
}

async function interaction(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
  if (req.method === 'GET' && !action) return send(res, 200, 'text/html', form(uid));
  if (req.method === 'POST' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'login') {
    const params = await body(req);
    const account = config.accounts.find((a) => a.username === params.get('username'));
    if (!account || account.password !== params.get('password')) {
      return send(res, 200, 'text/html', form(uid, 'Invalid username or password.'));
    }
    return provider.interactionFinished(req, res, {
      login: { accountId: account.id, amr: account.amr ?? ['pwd'] },
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, 'text/plain', 'not found');
}

function testEndpoint(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/test/rotate') {
    const key = newSigningKey();
    provider = build(key);
    return send(res, 200, 'application/json', JSON.stringify({ kid: key.kid }));
  }
  if (req.method === 'POST' && url.pathname === '/test/clock') {
    clockOffsetMs = Number(url.searchParams.get('offset') ?? 0) * 1000;
    return send(res, 200, 'application/json', JSON.stringify({ offset: clockOffsetMs / 1000 }));
  }
  if (req.method === 'GET' && url.pathname === '/test/stats') {
    return send(res, 200, 'application/json', JSON.stringify(counts));
  }
  return send(res, 404, 'text/plain', 'not found');
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, config.issuer);
  counts[url.pathname] = (counts[url.pathname] ?? 0) + 1;
  try {
    if (url.pathname.startsWith('/test/')) return testEndpoint(req, res, url);
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res, url);
    return provider.callback()(req, res);
  } catch (e) {
    console.error(e);
    if (!res.headersSent) send(res, 500, 'text/plain', String(e.message ?? e));
  }
});

server.listen(config.port, '127.0.0.1', () => {
  console.log(`listening on ${config.port}`);
});
