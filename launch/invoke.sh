#!/usr/bin/env bash
# Invoke an endpoint with the AWS CLI and print the JSON answer.
#   launch/invoke.sh ENDPOINT IMAGE [OUT.json]
# ENDPOINT_URL=http://127.0.0.1:8080 sends the same call to a local endpoint (deploy.py --local);
# CUSTOM_ATTRIBUTES='top_k=3' passes CustomAttributes; CONTENT_TYPE (default image/jpeg);
# TARGET_MODEL=dogs.tar.gz picks the model of a multi-model endpoint (multi_model.py).
set -euo pipefail
endpoint=${1:?usage: invoke.sh ENDPOINT IMAGE [OUT.json]}
image=${2:?usage: invoke.sh ENDPOINT IMAGE [OUT.json]}
out=${3:-$(mktemp --suffix=.json)}
aws sagemaker-runtime invoke-endpoint \
  --endpoint-name "$endpoint" \
  --body "fileb://$image" \
  --content-type "${CONTENT_TYPE:-image/jpeg}" \
  --accept application/json \
  ${CUSTOM_ATTRIBUTES:+--custom-attributes "$CUSTOM_ATTRIBUTES"} \
  ${TARGET_MODEL:+--target-model "$TARGET_MODEL"} \
  ${ENDPOINT_URL:+--endpoint-url "$ENDPOINT_URL"} \
  "$out" >&2
cat "$out"; echo
