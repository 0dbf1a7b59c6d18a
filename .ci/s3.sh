#!/usr/bin/env bash
# Start a throw-away S3-compatible server (moto's standalone server, from the package registry)
# for the artifact-store tests and print its endpoint URL; the tests reach it only through boto3.
set -euo pipefail
port=${SWEEPER_S3_PORT:-55500}
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >/tmp/sweeper-s3.log 2>&1 &
echo $! > /tmp/sweeper-s3.pid
for _ in $(seq 100); do
  if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; then
    echo "http://127.0.0.1:$port"
    exit 0
  fi
  sleep 0.2
done
echo "moto_server did not start; see /tmp/sweeper-s3.log" >&2
exit 1
