#!/usr/bin/env bash
# Builds deploy/Containerfile with podman or docker (`make image`); prints how when neither is installed.
#   TORCH_VARIANT=cpu|cu130   libtorch build (cu130: GPU workers, NCCL), default cpu
#   IMAGE=name                image name, default plankton-cluster
#   TAG=tag                   default: the workspace version, with -cu130 for the GPU variant
#   CONTAINER_ENGINE=podman|docker  force one
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VARIANT=${TORCH_VARIANT:-cpu}
IMAGE=${IMAGE:-plankton-cluster}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
case "$TORCH_VARIANT" in
  cpu) TAG=${TAG:-$version} ;;
  cu130) TAG=${TAG:-$version-cu130} ;;
  *) echo "image: TORCH_VARIANT must be cpu or cu130, not '$TORCH_VARIANT'" >&2; exit 2 ;;
esac

# An engine counts when it answers (docker: a running daemon, and BuildKit's buildx for RUN --mount).
usable() {
  case "$1" in
    podman) podman info >/dev/null 2>&1 ;;
    docker) docker info >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}
engine=
for candidate in ${CONTAINER_ENGINE:-podman docker}; do
  if command -v "$candidate" >/dev/null 2>&1; then
    if usable "$candidate"; then engine=$candidate; break; fi
    echo "image: $candidate is installed but not usable here (podman info / docker info + docker buildx version failed)" >&2
  fi
done
if [ -z "$engine" ]; then
  cat >&2 <<HOW
image: no usable podman or docker here, so no image was built. On a machine with one:
  podman build -f deploy/Containerfile --ignorefile deploy/Containerfile.dockerignore \\
      --build-arg TORCH_VARIANT=$TORCH_VARIANT -t $IMAGE:$TAG .
  DOCKER_BUILDKIT=1 docker build -f deploy/Containerfile --build-arg TORCH_VARIANT=$TORCH_VARIANT -t $IMAGE:$TAG .
(docker's BuildKit reads deploy/Containerfile.dockerignore by itself.)
HOW
  exit 1
fi

args=(build -f deploy/Containerfile --build-arg "TORCH_VARIANT=$TORCH_VARIANT" -t "$IMAGE:$TAG")
case "$engine" in
  podman) args+=(--ignorefile deploy/Containerfile.dockerignore) ;;
  docker) export DOCKER_BUILDKIT=1 ;;
esac
echo "image: $engine ${args[*]} ."
"$engine" "${args[@]}" .
echo "image: built $IMAGE:$TAG; push it where your cluster pulls from and set it in the overlay:"
echo "  images: in deploy/k8s/overlays/*/kustomization.yaml, or: kustomize edit set image plankton-cluster=REGISTRY/$IMAGE:$TAG"
