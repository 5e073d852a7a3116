#!/usr/bin/env bash
# Builds the browser UI into webui/dist (served at / by `python -m worker.server`): `npm ci` from the
# npm registry, then `npm run build` (type check + Vite). Idempotent: installs only when
# package-lock.json is newer than webui/node_modules, builds only when a source is newer than the
# last build; FORCE=1 does both. Needs Node.js 20.19+ with npm.
set -euo pipefail
cd "$(dirname "$0")/../webui"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "build-webui: node and npm are needed (Node.js 20.19 or newer)" >&2
    exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
    echo "build-webui: Node.js $(node --version) is too old; Vite needs 20.19 or newer" >&2
    exit 1
fi

force=${FORCE:-0}
# npm writes node_modules/.package-lock.json on every install: newer than the lock file = installed.
if [ "$force" = 1 ] || [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
    npm ci --no-audit --no-fund
fi

stamp=dist/index.html
sources=(src index.html package.json package-lock.json vite.config.ts tsconfig.json)
if [ "$force" != 1 ] && [ -f "$stamp" ] && [ -z "$(find "${sources[@]}" -newer "$stamp" -print -quit)" ]; then
    echo "build-webui: webui/dist is up to date"
    exit 0
fi
npm run build
# Vite keeps index.html's old time when its content did not change: mark this build as the newest.
touch "$stamp"
