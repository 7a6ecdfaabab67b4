#!/usr/bin/env bash
# Runs the broker on the embedded default: SQLite store in var/, the sample models in
# config/. Secrets for this local run are generated once into var/dev.env (mode 600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p var
if [ ! -f var/dev.env ]; then
  umask 077
  gen() { .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))'; }
  cat > var/dev.env <<ENV
CUBEJS_API_SECRET=$(gen)
BROKER_CALLBACK_SECRET=$(gen)
ATHENA_KEY_12=$(gen)
ENV
fi
set -a
# shellcheck disable=SC1091
. var/dev.env
set +a
export BROKER_LOG_FORMAT=${BROKER_LOG_FORMAT:-text}
host=${BROKER_HOST:-127.0.0.1}
port=${BROKER_PORT:-8080}
.venv/bin/cube-broker check-config
cat <<MSG

cube-broker: listening on http://$host:$port (store ${BROKER_STORE:-sqlite:///./var/broker.db}, models ${BROKER_MODELS:-config/models.yaml})

Get a first key, either over HTTP with the admin key kept in var/dev.env:
  set -a; . var/dev.env; set +a
  curl -s -X POST http://$host:$port/admin/api-keys -H "X-API-Key: \$ATHENA_KEY_12" \\
       -H 'Content-Type: application/json' -d '{"name": "first", "rights": ["semantic_model.*"]}'
or from the command line, straight on the store:
  (set -a; . var/dev.env; .venv/bin/cube-broker keys create --name first --right 'semantic_model.*')

MSG
exec .venv/bin/cube-broker serve
