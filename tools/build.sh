#!/usr/bin/env bash
# Build a pinned tool binary once per version into a cache outside the repo.
#
#   tools/build.sh kube-apiserver|kube-apiserver-v1.32|kubectl|vault|helm|etcdutl|all
#
# Prints the binary path(s) on stdout; logs go to stderr. Versions come from
# each tool's module under tools/ (via `go list -m`), so bumping a tool is a
# go.mod change and the new version lands in a new cache directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bindir=${ATREST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atrest}/bin

# Each tool is its own module; a go.work above the repo must not merge them.
export GOWORK=off CGO_ENABLED=0

log() { echo "build.sh: $*" >&2; }

# Removed on any exit, so an interrupted build leaves no partial file behind.
tmp=
trap 'rm -f "${tmp:-}"' EXIT

# modinfo NAME MODULE FORMAT: `go list -m -f FORMAT MODULE` in tools/NAME.
modinfo() { (cd "$here/$1" && go list -m -f "$3" "$2"); }

# build_in MODULE NAME VERSION PKG LDFLAGS: go build PKG (from tools/MODULE)
# into the cache as NAME unless already there; print the path.
build_in() {
  local module=$1 name=$2 version=$3 pkg=$4 ldflags=$5
  local dir=$bindir/$name-$version
  local out=$dir/$name
  if [[ -x $out ]]; then
    log "$name $version: cached"
  else
    mkdir -p "$dir"
    # Same directory as $out so the mv below is an atomic rename.
    tmp=$dir/.$name.tmp.$$
    log "$name $version: building (cold build takes minutes)"
    local start=$SECONDS
    (cd "$here/$module" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
    mv -f "$tmp" "$out"
    tmp=
    log "$name $version: built in $((SECONDS - start))s"
  fi
  echo "$out"
}

# k8s MODULE NAME PKG: build PKG from tools/MODULE's module (kube-apiserver,
# kubectl), stamped as the release of k8s.io/kubernetes it pins.
k8s() {
  local module=$1 name=$2 pkg=$3 v date
  v=$(modinfo "$module" k8s.io/kubernetes '{{.Version}}')
  # The tag's commit time, not now: keeps the binary reproducible.
  date=$(modinfo "$module" k8s.io/kubernetes '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}')
  local major=${v#v}; major=${major%%.*}
  local minor=${v#v*.}; minor=${minor%%.*}
  # What hack/lib/version.sh stamps, minus gitCommit (the module zip has none;
  # empty beats the "$Format:%H$" placeholder). --version prints gitVersion.
  local ld="-s -w" p k
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for k in gitVersion=$v gitMajor=$major gitMinor=$minor gitTreeState=clean \
      buildDate=$date gitCommit=; do
      ld+=" -X $p.$k"
    done
  done
  # The cache directory names what was built: a release command is
  # $name-$v, the sandbox's kube-apiserver (./sandboxapiserver, the
  # release's command with the reload poll as a knob) is $name-$v-sandbox2.
  local tag=$v
  [[ $pkg == ./sandboxapiserver ]] && tag=$v-sandbox2
  build_in "$module" "$name" "$tag" "$pkg" "$ld"
}

vault() {
  local v date
  v=$(modinfo vault github.com/hashicorp/vault '{{.Version}}')
  date=$(modinfo vault github.com/hashicorp/vault '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}')
  # The version number itself is compiled in (version/VERSION); no "ui" tag,
  # since the web UI assets are not in the module zip.
  build_in vault vault "$v" github.com/hashicorp/vault \
    "-s -w -X github.com/hashicorp/vault/version.BuildDate=$date"
}

helm() {
  local v k8s major minor
  v=$(modinfo helm helm.sh/helm/v3 '{{.Version}}')
  # What Helm's Makefile stamps: its version (`helm version` prints it, and
  # charts' helm version constraints compare against it), and the Kubernetes
  # version of its client libraries (client-go v0.X is Kubernetes v1.X),
  # which lint and template assume as the cluster's .Capabilities.KubeVersion
  # when no cluster is asked. No gitCommit: the module zip has none.
  k8s=$(modinfo helm k8s.io/client-go '{{.Version}}')
  major=1 minor=${k8s#v0.}; minor=${minor%%.*}
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean" pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  build_in helm helm "$v" helm.sh/helm/v3/cmd/helm "$ld"
}

# etcdutl, for etcdsnap's measurement only (not in all: no test needs it).
etcdutl() {
  local v
  v=$(modinfo etcdutl go.etcd.io/etcd/etcdutl/v3 '{{.Version}}')
  build_in etcdutl etcdutl "$v" go.etcd.io/etcd/etcdutl/v3 "-s -w"
}

case ${1:-} in
  # The sandbox's kube-apiserver at the current release, and at v1.32, RKE1's
  # last Kubernetes line.
  kube-apiserver) k8s kube-apiserver kube-apiserver ./sandboxapiserver ;;
  kube-apiserver-v1.32) k8s kube-apiserver-v1.32 kube-apiserver ./sandboxapiserver ;;
  kubectl) k8s kube-apiserver kubectl k8s.io/kubernetes/cmd/kubectl ;;
  vault) vault ;;
  helm) helm ;;
  etcdutl) etcdutl ;;
  # Sequential on purpose: each build already uses every core.
  all) "$0" kube-apiserver; "$0" kube-apiserver-v1.32; "$0" kubectl; vault; helm ;;
  *) echo "usage: $0 kube-apiserver|kube-apiserver-v1.32|kubectl|vault|helm|etcdutl|all" >&2; exit 2 ;;
esac
