#!/usr/bin/env bash
# Build the SageMaker image and push it to Amazon ECR; prints the image URI.
#
#   ./build_and_push.sh [--gpu] [--tag TAG] [--platform PLATFORM] [--region REGION] [--account ID]
#                       [--wheelhouse DIR] [--no-push] [--dry-run] NAME
#
#   --gpu            the CUDA build: the same base with the registry's CUDA torch wheels, which
#                    bring the CUDA runtime libraries (the driver is the host's, as on SageMaker's
#                    GPU instances); tag gpu unless --tag is given. Its URI is gpu_image_uri in
#                    launch/config.toml, which the launch scripts use for ml.g*/ml.p* instances.
#   --tag TAG        image tag (default: latest; gpu with --gpu)
#   --platform P     the image's platform (default linux/amd64: SageMaker's ml.m/c/g/p instances
#                    are x86_64, and an arm64 laptop's native build fails there with "exec format
#                    error"); linux/arm64 for Graviton instance types (ml.c7g, ml.m7g, ...)
#   --region REGION  ECR region (default: AWS_REGION, AWS_DEFAULT_REGION or `aws configure get region`)
#   --account ID     AWS account (default: AWS_ACCOUNT_ID or `aws sts get-caller-identity`)
#   --wheelhouse DIR install wheels found in DIR first (offline builds; e.g. a local torch wheel)
#   --no-push        build and tag NAME:TAG locally only
#   --dry-run        print the exact commands instead of running them
#
# Environment: DOCKER (docker client, default docker), CA_BUNDLE (CA file passed to pip as a
# build secret, default the system bundle if present), BASE_IMAGE, GPU_BASE_IMAGE, TORCH_SPEC.
set -euo pipefail

usage() {  # the comment block above, as help
  { echo "usage:"; awk 'NR > 1 && /^#/ { sub(/^# ?/, "  "); print; next } NR > 1 { exit }' "$0"; } >&2; exit 2
}
die() { echo "build_and_push.sh: $*" >&2; exit 1; }

gpu=false tag="" platform=linux/amd64 region="" account="${AWS_ACCOUNT_ID:-}" wheelhouse="" push=true dry=false name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu=true ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --platform) platform=${2:?--platform needs a value}; shift ;;
    --region) region=${2:?--region needs a value}; shift ;;
    --account) account=${2:?--account needs a value}; shift ;;
    --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift ;;
    --no-push) push=false ;;
    --dry-run) dry=true ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$name" ] || die "one NAME only (got '$name' and '$1')"; name=$1 ;;
  esac
  shift
done
[ -n "$name" ] || usage
[ -n "$tag" ] || { $gpu && tag=gpu || tag=latest; }
[[ "$name" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "NAME '$name' is not a valid ECR repository name (lowercase letters, digits, . _ - /)"

here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}
run() {  # run a command, or print it exactly under --dry-run
  if $dry; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

# ---- build -------------------------------------------------------------------------------------
build_args=()
if $gpu; then
  # PyPI's torch wheels for Linux are CUDA builds and depend on the CUDA runtime's wheels; the
  # base stays python:3.11-slim-bookworm (GPU_BASE_IMAGE overrides it). A CPU wheel in a
  # --wheelhouse would satisfy torch==VERSION too, so none is used for this build.
  [ -z "$wheelhouse" ] || die "--gpu takes its torch from the registry: leave out --wheelhouse"
  [ -z "${GPU_BASE_IMAGE:-}" ] || build_args+=(--build-arg "BASE_IMAGE=$GPU_BASE_IMAGE")
  build_args+=(--build-arg "TORCH_INDEX_URL=")
else
  [ -z "${BASE_IMAGE:-}" ] || build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ -n "$wheelhouse" ] || build_args+=(--build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
fi
[ -z "${TORCH_SPEC:-}" ] || build_args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ ! -f "$ca" ] || build_args+=(--secret "id=hostca,src=$ca")

$dry || command -v "$docker" >/dev/null || die "docker not found: install Docker (or set DOCKER to the client)"
if [ -n "$wheelhouse" ]; then
  [ -d "$wheelhouse" ] || die "--wheelhouse $wheelhouse is not a directory"
  # Hard links (or copies) into the build context's wheelhouse, removed after the build.
  linked=()
  for whl in "$wheelhouse"/*.whl; do
    [ -e "$whl" ] || continue
    target="$here/container/wheelhouse/$(basename "$whl")"
    $dry || ln -f "$whl" "$target" 2>/dev/null || cp "$whl" "$target"
    linked+=("$target")
  done
  $dry || trap 'rm -f "${linked[@]}"' EXIT
fi
run env DOCKER_BUILDKIT=1 "$docker" build --network=host --platform "$platform" -f "$here/docker/Dockerfile" \
  -t "$name:$tag" "${build_args[@]}" "$here/container"
$push || { echo "$name:$tag"; exit 0; }

# ---- push --------------------------------------------------------------------------------------
$dry || command -v aws >/dev/null || die "aws CLI not found: install it (pip install awscli) to push"
if [ -z "$region" ]; then
  region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}
fi
[ -n "$region" ] || die "no region: pass --region or set AWS_REGION"
if [ -z "$account" ]; then
  account=$(aws sts get-caller-identity --query Account --output text 2>/dev/null) \
    || die "no AWS credentials: run 'aws configure' or set AWS_PROFILE (aws sts get-caller-identity failed)"
fi
domain=amazonaws.com
[[ "$region" != cn-* ]] || domain=amazonaws.com.cn
registry="$account.dkr.ecr.$region.$domain"
uri="$registry/$name:$tag"

if $dry || ! aws ecr describe-repositories --repository-names "$name" --region "$region" >/dev/null 2>&1; then
  run aws ecr create-repository --repository-name "$name" --region "$region" \
    --image-scanning-configuration scanOnPush=true
fi
# The password goes from aws to docker through a pipe: never an argument, never printed.
if $dry; then
  printf '+ aws ecr get-login-password --region %q | %q login --username AWS --password-stdin %q\n' \
    "$region" "$docker" "$registry"
else
  aws ecr get-login-password --region "$region" | "$docker" login --username AWS --password-stdin "$registry" >/dev/null \
    || die "docker login to $registry failed"
fi
run "$docker" tag "$name:$tag" "$uri"
run "$docker" push "$uri"
echo "$uri"
