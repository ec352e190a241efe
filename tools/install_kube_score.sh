#!/usr/bin/env bash
# Build a pinned kube-score (manifest checks: resources, probes, NetworkPolicies, security
# context...) from the Go module proxy and cache it. Prints the path of the binary on stdout;
# everything else goes to stderr.
#
#   tools/install_kube_score.sh            # -> ~/.cache/octavo-tools/kube-score-v1.20.0/kube-score
set -euo pipefail

KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"
CACHE_DIR="${OCTAVO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/octavo-tools}"
BIN_DIR="$CACHE_DIR/kube-score-$KUBE_SCORE_VERSION"
KUBE_SCORE="$BIN_DIR/kube-score"

if [[ -x "$KUBE_SCORE" ]]; then
  echo "$KUBE_SCORE"
  exit 0
fi

GO="$(command -v go || echo /usr/local/go/bin/go)"
[[ -x "$GO" ]] || { echo "install_kube_score.sh: 'go' is required to build kube-score" >&2; exit 1; }
mkdir -p "$BIN_DIR"
# Build into a private directory and rename into place: a racing build never leaves half a file.
TMP_BIN="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$TMP_BIN"' EXIT
echo "install_kube_score.sh: building kube-score $KUBE_SCORE_VERSION (one-off, cached in $BIN_DIR)" >&2
CGO_ENABLED=0 GOBIN="$TMP_BIN" GOFLAGS="-trimpath" \
  "$GO" install -ldflags "-s -w" "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" >&2
mv -f "$TMP_BIN/kube-score" "$KUBE_SCORE"
echo "$KUBE_SCORE"
