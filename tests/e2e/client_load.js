// The real dashboard client against the broker: @cubejs-client/core (from the Cube install
// of scripts/install-cube.sh) with apiUrl = cube_url and the token of generate-token, as a
// browser app would use them. Run by tests/e2e/test_through_broker.py.
//
// Input (environment, so the token never shows in a process listing):
//   CUBE_INSTALL_DIR  the folder whose node_modules holds @cubejs-client/core
//   CUBE_API_URL      cube_url from generate-token (<broker>/cubejs-api/v1)
//   CUBE_TOKEN        the token from generate-token
//   CUBE_QUERY        the Cube query, JSON
// Output: one JSON line {"tablePivot": [...], "rawData": [...], "cubes": [names from meta]};
// on error, a line on stderr with the status and the body, and exit code 1.
'use strict';

const { createRequire } = require('module');
const path = require('path');

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`client_load.js: environment variable ${name} is required`);
  }
  return value;
}

async function main() {
  const fromInstall = createRequire(path.join(required('CUBE_INSTALL_DIR'), 'package.json'));
  // 0.33 ships CommonJS whose module.exports.default is the cubejs() factory.
  const cubejs = fromInstall('@cubejs-client/core').default;
  const api = cubejs(required('CUBE_TOKEN'), { apiUrl: required('CUBE_API_URL'), pollInterval: 0.2 });
  const resultSet = await api.load(JSON.parse(required('CUBE_QUERY')));
  const meta = await api.meta();
  const out = {
    tablePivot: resultSet.tablePivot(),
    rawData: resultSet.rawData(),
    cubes: meta.cubes.map((cube) => cube.name),
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((error) => {
  const detail = error && error.response ? ` ${JSON.stringify(error.response)}` : '';
  process.stderr.write(`client_load.js: ${error && error.status ? `HTTP ${error.status}: ` : ''}${error}${detail}\n`);
  process.exit(1);
});
