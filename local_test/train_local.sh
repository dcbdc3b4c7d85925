#!/usr/bin/env bash
# Train with the image as SageMaker would: test_dir mounted as /opt/ml, `docker run IMAGE train`.
#   local_test/train_local.sh IMAGE
# Starts fresh each time (clears test_dir's model/, output/ and checkpoints/), then checks that a
# model was written; on failure prints the job's one-line reason. TEST_DIR overrides test_dir.
set -euo pipefail
image=${1:?usage: train_local.sh IMAGE}
here=$(cd "$(dirname "$0")" && pwd)
test_dir=$(cd "${TEST_DIR:-$here/test_dir}" && pwd)
docker=${DOCKER:-docker}

for d in model output checkpoints; do rm -rf "${test_dir:?}/$d"; mkdir -p "$test_dir/$d"; done
# --network=host: no bridge network is created; the job itself needs no network.
status=0
"$docker" run --rm --network=host -v "$test_dir:/opt/ml" "$image" train || status=$?
if [ "$status" != 0 ]; then
  echo "train_local: training failed (exit $status): $(cat "$test_dir/output/failure" 2>/dev/null || echo 'no failure file')" >&2
  exit 1
fi
for f in model/model.pt model/model.json output/success; do
  [ -f "$test_dir/$f" ] || { echo "train_local: $f missing after training" >&2; exit 1; }
done
echo "train_local: model in $test_dir/model"
