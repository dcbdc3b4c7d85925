#!/usr/bin/env bash
# Serve test_dir/model with the image as SageMaker would (`docker run IMAGE serve`), on
# 127.0.0.1:${PORT:-8080} of this machine (host network, no published ports). Ctrl-C stops it.
#   local_test/serve_local.sh IMAGE
# NAME names the container (default image-classifier-local); TEST_DIR overrides test_dir.
set -euo pipefail
image=${1:?usage: serve_local.sh IMAGE}
here=$(cd "$(dirname "$0")" && pwd)
test_dir=$(cd "${TEST_DIR:-$here/test_dir}" && pwd)
[ -f "$test_dir/model/model.json" ] || { echo "serve_local: no model in $test_dir/model; run train_local.sh first" >&2; exit 1; }
exec "${DOCKER:-docker}" run --rm --network=host --name "${NAME:-image-classifier-local}" \
  -e SERVE_HOST=127.0.0.1 -e SAGEMAKER_BIND_TO_PORT="${PORT:-8080}" \
  -v "$test_dir:/opt/ml" "$image" serve
