#!/usr/bin/env bash
# Build (once) the binaries the e2e suite runs, from the Go modules pinned beside this script:
#   go.mod       etcd, kube-apiserver, kube-controller-manager, kubectl (version-matched client)
#   helm/go.mod  helm
#
# They are cached under ${OCTAVO_E2E_CACHE:-~/.cache/octavo-e2e}/<versions>/bin, so only the
# first run compiles (tens of minutes on 2 cores); later runs print the cached path at once.
# Only missing binaries are built. Prints the bin directory as the last line of stdout; build
# output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

# Versions are read back from the go.mod files so they are written in exactly one place.
module_version() {  # module_version <go.mod> <module path>
  sed -nE "s#^[[:space:]]*(require )?$2 (v[0-9.]+).*#\2#p" "$1" | head -1
}
k8s_version="$(module_version "$here/go.mod" k8s.io/kubernetes)"
etcd_version="$(module_version "$here/go.mod" go.etcd.io/etcd/server/v3)"
helm_version="$(module_version "$here/helm/go.mod" helm.sh/helm/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$helm_version" ]] \
  || { echo "cannot read versions from $here/go.mod and $here/helm/go.mod" >&2; exit 1; }

cache_root="${OCTAVO_E2E_CACHE:-$HOME/.cache/octavo-e2e}"
key="kubernetes-${k8s_version}_etcd-${etcd_version}_helm-${helm_version}"
bin_dir="$cache_root/$key/bin"

# name|module dir|package
targets=(
  "etcd|$here|go.etcd.io/etcd/server/v3"
  "kube-apiserver|$here|k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager|$here|k8s.io/kubernetes/cmd/kube-controller-manager"
  "kubectl|$here|k8s.io/kubernetes/cmd/kubectl"
  "helm|$here/helm|helm.sh/helm/v3/cmd/helm"
)

missing() {  # prints the targets whose binary is not cached yet
  local t
  for t in "${targets[@]}"; do [[ -x "$bin_dir/${t%%|*}" ]] || echo "$t"; done
}

if [[ -z "$(missing)" ]]; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"
# One build at a time per version set: a second caller waits, then finds the binaries cached.
exec 9>"$cache_root/$key/.lock"
flock 9

k8s_ldflags() {
  local major minor pkg=k8s.io/component-base/version
  major="${k8s_version#v}"; major="${major%%.*}"
  minor="${k8s_version#v*.}"; minor="${minor%%.*}"
  echo "-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor" \
       "-X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}
helm_ldflags() {
  echo "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
       "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"
}

# -mod=mod lets go resolve the module graph and write go.sum on the first run; the pins in go.mod
# (require + replace) decide every version, so the result is reproducible.
export GOFLAGS="${GOFLAGS:--mod=mod}" CGO_ENABLED=0
start=$(date +%s)
echo "building into $bin_dir with $("$GO" version) (first run only)" >&2
for module_dir in "$here" "$here/helm"; do
  names=(); pkgs=()
  while IFS='|' read -r name dir pkg; do
    [[ -n "$name" && "$dir" == "$module_dir" ]] || continue
    names+=("$name"); pkgs+=("$pkg")
  done <<< "$(missing)"
  (( ${#names[@]} )) || continue
  if [[ "$module_dir" == "$here" ]]; then ldflags="$(k8s_ldflags)"; else ldflags="$(helm_ldflags)"; fi
  staging="$(mktemp -d "$cache_root/$key/build.XXXXXX")"
  echo "go build ${pkgs[*]}" >&2
  (cd "$module_dir" && "$GO" build -trimpath -ldflags "$ldflags" -o "$staging/" "${pkgs[@]}")
  # etcd's main package is its server module's root, go.etcd.io/etcd/server/v3: go names the
  # binary after the path without its major-version suffix.
  if [[ -e "$staging/server" ]]; then mv "$staging/server" "$staging/etcd"; fi
  for name in "${names[@]}"; do
    [[ -x "$staging/$name" ]] || { echo "go build produced no $name" >&2; exit 1; }
    mv "$staging/$name" "$bin_dir/$name"
  done
  rm -rf "$staging"
done
echo "built $key in $(( $(date +%s) - start ))s" >&2
echo "$bin_dir"
