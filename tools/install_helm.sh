#!/usr/bin/env bash
# Build a pinned helm from the Go module proxy (helm is not on PyPI, npm or Debian) and cache it.
# Prints the path of the helm binary on stdout; everything else goes to stderr.
#
#   tools/install_helm.sh            # -> ~/.cache/octavo-tools/helm-v3.19.5/helm
#   HELM_VERSION=v3.18.6 tools/install_helm.sh
set -euo pipefail

# v3.19.5: the release whose Kubernetes client libraries match the e2e control plane (1.34).
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
CACHE_DIR="${OCTAVO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/octavo-tools}"
BIN_DIR="$CACHE_DIR/helm-$HELM_VERSION"
HELM="$BIN_DIR/helm"

if [[ -x "$HELM" ]]; then
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null || { echo "install_helm.sh: 'go' is required to build helm" >&2; exit 1; }
mkdir -p "$BIN_DIR"
# Two builds racing (e.g. parallel test workers) must not leave a half-written binary: build into a
# private directory and rename into place, which is atomic on one filesystem.
TMP_BIN="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$TMP_BIN"' EXIT
echo "install_helm.sh: building helm $HELM_VERSION (one-off, cached in $BIN_DIR)" >&2
# CGO off: a static binary, no C toolchain needed. The flags match e2e/controlplane/build.sh's
# helm build, so whichever runs second finds most packages in Go's build cache.
CGO_ENABLED=0 GOBIN="$TMP_BIN" GOFLAGS="-trimpath" \
  go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
mv -f "$TMP_BIN/helm" "$HELM"
echo "$HELM"
