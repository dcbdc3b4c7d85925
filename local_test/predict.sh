#!/usr/bin/env bash
# Send an image to the local endpoint and print the JSON answer; exits non-zero unless HTTP 200.
#   local_test/predict.sh FILE [CONTENT_TYPE]      (CONTENT_TYPE default image/jpeg; PORT default 8080)
set -euo pipefail
file=${1:?usage: predict.sh FILE [CONTENT_TYPE]}
content_type=${2:-image/jpeg}
[ -f "$file" ] || { echo "predict: no such file: $file" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
code=$(curl -sS -o "$out" -w '%{http_code}' -H "Content-Type: $content_type" \
  ${CUSTOM_ATTRIBUTES:+-H "X-Amzn-SageMaker-Custom-Attributes: $CUSTOM_ATTRIBUTES"} \
  --data-binary "@$file" "http://127.0.0.1:${PORT:-8080}/invocations")
cat "$out"; echo
[ "$code" = 200 ] || { echo "predict: HTTP $code" >&2; exit 1; }
