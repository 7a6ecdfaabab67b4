// Cube configuration for @cubejs-backend/server 0.33: everything model-specific comes from
// the cube-token-broker's internal callback (SPEC §7), so Cube itself holds no database
// credential and no model file.
//
// Environment (and nothing secret besides the first three):
//   CUBEJS_API_SECRET       HS256 secret shared with the broker; Cube verifies each token
//                           with it and the token's claims become the securityContext
//                           ({model_id, schema_hash, iat, exp, jti}).
//   CUBEJS_API_SECRETS      optional, comma-separated secrets also accepted (the broker's
//                           and Cube >= 1.6.54's name): the old secret while rotating.
//   BROKER_CALLBACK_SECRET  presented to the broker as X-Broker-Callback-Secret.
//   BROKER_INTERNAL_URL     the broker's internal listener as Cube reaches it, e.g.
//                           http://127.0.0.1:8082.
//   BROKER_CALLBACK_TIMEOUT_MS  optional, per callback request (default 10000).
//
// How Cube 0.33 uses the functions below:
//   - contextToAppId keys the compiled schema: one per (model, schema hash), so a changed
//     model (new hash in new tokens) is compiled afresh from the broker's files.
//   - contextToOrchestratorId keys the query orchestrator, which owns the database
//     driver: one per model, so every model has its own connection pool and credentials.
//   - driverFactory is called when an orchestrator first needs a data source; it returns a
//     driver config ({type: 'postgres', host, ...}), which Cube turns into a driver
//     (server-core's resolveDriver). The password travels only in that answer.
//   - dbType would otherwise call driverFactory on every query just to learn the type;
//     the type (not secret) is remembered per model and data source instead.
//   - checkAuth replaces Cube's own token check (HS256 with CUBEJS_API_SECRET) by the same
//     check against every accepted secret, picked by the token's kid (the first 16 hex
//     digits of the secret's SHA-256), so the signing secret rotates without a failed call
//     (Cube 0.33 has no list of its own). Refusals are Cube's own: 403 "Invalid token",
//     403 "Authorization header isn't set".
'use strict';

const crypto = require('crypto');
const jwt = require('jsonwebtoken');
const { CubejsHandlerError } = require('@cubejs-backend/api-gateway');

const MODEL_ID = /^[A-Za-z0-9_-]{1,64}$/;
const SCHEMA_HASH = /^[0-9a-f]{64}$/;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`cube.js: environment variable ${name} is required`);
  }
  return value;
}

const brokerUrl = required('BROKER_INTERNAL_URL').replace(/\/+$/, '');
const acceptedSecrets = [
  required('CUBEJS_API_SECRET'),
  ...(process.env.CUBEJS_API_SECRETS || '').split(',').map((s) => s.trim()).filter(Boolean),
];
const kidOf = (secret) => crypto.createHash('sha256').update(secret).digest('hex').slice(0, 16);
const secretsByKid = new Map(acceptedSecrets.map((secret) => [kidOf(secret), secret]));
const callbackSecret = required('BROKER_CALLBACK_SECRET');
const timeoutMs = Number.parseInt(process.env.BROKER_CALLBACK_TIMEOUT_MS || '10000', 10);
if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) {
  throw new Error('cube.js: BROKER_CALLBACK_TIMEOUT_MS must be a positive integer');
}

/** The model of a security context (the token's claims), checked. */
function modelOf(securityContext) {
  const modelId = securityContext && securityContext.model_id;
  const schemaHash = securityContext && securityContext.schema_hash;
  if (typeof modelId !== 'string' || !MODEL_ID.test(modelId)) {
    throw new Error('securityContext.model_id is missing or invalid');
  }
  if (typeof schemaHash !== 'string' || !SCHEMA_HASH.test(schemaHash)) {
    throw new Error('securityContext.schema_hash is missing or invalid');
  }
  return { modelId, schemaHash };
}

/**
 * One request to the broker's internal API; resolves to the JSON answer.
 * Errors name the URL and the HTTP status (and the broker's error code and message, which
 * never hold a secret), never the request or answer body.
 */
async function callBroker(method, path, body) {
  const url = `${brokerUrl}${path}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        'X-Broker-Callback-Secret': callbackSecret,
        Accept: 'application/json',
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
    });
  } catch (e) {
    const why = e && e.name === 'AbortError' ? `no answer within ${timeoutMs} ms` : String(e && e.cause ? e.cause.code || e.cause : e);
    throw new Error(`broker ${method} ${url}: ${why}`);
  } finally {
    clearTimeout(timer);
  }
  let text;
  try {
    text = await response.text();
  } catch (e) {
    throw new Error(`broker ${method} ${url}: HTTP ${response.status}: answer unreadable`);
  }
  if (!response.ok) {
    let detail = '';
    try {
      const error = JSON.parse(text);
      detail = `: ${error.error}: ${error.message}`;
    } catch (e) {
      // not the broker's JSON error shape: say nothing about the body
    }
    throw new Error(`broker ${method} ${url}: HTTP ${response.status}${detail}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`broker ${method} ${url}: HTTP ${response.status}: answer is not JSON`);
  }
}

/**
 * Cube's token check against every accepted secret: the one the token's kid names, or
 * (a token without a kid) each in turn. HS256 only; the claims become the security context.
 */
function checkAuth(req, auth) {
  if (!auth) {
    throw new CubejsHandlerError(403, 'Forbidden', "Authorization header isn't set");
  }
  const decoded = jwt.decode(auth, { complete: true });
  const kid = decoded && decoded.header ? decoded.header.kid : undefined;
  let candidates = acceptedSecrets;
  if (kid !== undefined) {
    candidates = secretsByKid.has(kid) ? [secretsByKid.get(kid)] : [];
  }
  for (const secret of candidates) {
    try {
      req.securityContext = jwt.verify(auth, secret, { algorithms: ['HS256'] });
      return;
    } catch (e) {
      if (!(e instanceof jwt.JsonWebTokenError) || e.message !== 'invalid signature') {
        break; // expired, malformed, wrong algorithm: no other secret changes that
      }
    }
  }
  throw new CubejsHandlerError(403, 'Forbidden', 'Invalid token');
}

const dbTypes = new Map();

async function driverConfig({ securityContext, dataSource }) {
  const { modelId, schemaHash } = modelOf(securityContext);
  const source = dataSource || 'default';
  const config = await callBroker('POST', '/internal/v1/credentials', {
    securityContext: { model_id: modelId, schema_hash: schemaHash },
    dataSource: source,
  });
  if (!config || typeof config.type !== 'string') {
    throw new Error(`broker credentials for ${modelId}/${source}: answer has no driver type`);
  }
  dbTypes.set(`${modelId}/${source}`, config.type);
  return config;
}

module.exports = {
  jwt: { algorithms: ['HS256'] },
  checkAuth,

  contextToAppId: ({ securityContext }) => {
    const { modelId, schemaHash } = modelOf(securityContext);
    return `CUBE_APP_${modelId}_${schemaHash}`;
  },

  contextToOrchestratorId: ({ securityContext }) => `CUBE_ORCH_${modelOf(securityContext).modelId}`,

  schemaVersion: ({ securityContext }) => modelOf(securityContext).schemaHash,

  // The broker serves its current files; when they moved on past the token's hash the
  // newest files are compiled under the token's app ID (tokens carry the hash only as a
  // cache key; the next minted token names the new hash).
  repositoryFactory: ({ securityContext }) => {
    const { modelId } = modelOf(securityContext);
    return {
      localPath: () => process.cwd(),
      dataSchemaFiles: async () => {
        const answer = await callBroker('GET', `/internal/v1/models/${encodeURIComponent(modelId)}/files`);
        if (!answer || !Array.isArray(answer.files)) {
          throw new Error(`broker files of ${modelId}: answer has no files list`);
        }
        return answer.files.map(({ fileName, content }) => ({ fileName, content }));
      },
    };
  },

  driverFactory: driverConfig,

  dbType: async (context) => {
    const { modelId } = modelOf(context.securityContext);
    const known = dbTypes.get(`${modelId}/${context.dataSource || 'default'}`);
    return known || (await driverConfig(context)).type;
  },

  scheduledRefreshContexts: async () => {
    const models = await callBroker('GET', '/internal/v1/models');
    return models.map(({ asset_id: modelId, schema_hash: schemaHash }) => ({
      securityContext: { model_id: modelId, schema_hash: schemaHash },
    }));
  },
};
