#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from source, because
# setup-envtest downloads release binaries from the internet and this project must
# build with nothing but the Go module proxy.
#
# The binaries are cached outside the repository so that every clone reuses them:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/hookline/envtest/k8s-<version>-etcd-<version>/
# Prints that directory on stdout (suitable for KUBEBUILDER_ASSETS).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
# Staging modules are published as v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/hookline/envtest"
dest="${cache_root}/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
mkdir -p "$dest"

log() { echo "build-envtest: $*" >&2; }

build_kube_apiserver() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "kube-apiserver ${K8S_VERSION} (about 10 minutes on 2 cores, once)"
  # The kubernetes go.mod replaces every staging module with a local path, which a
  # dependent module cannot use; replace each with its published release instead.
  local gomod
  gomod=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  {
    echo "module hookline.dev/envtest-build"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 '"${STAGING_VERSION}"'#p' "$gomod"
    echo ")"
  } >"$work/go.mod"
  (cd "$work" &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@${K8S_VERSION}" >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$dest/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$dest/kube-apiserver.tmp" "$dest/kube-apiserver"
}

build_etcd() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "etcd ${ETCD_VERSION} (about 1 minute, once)"
  printf 'module hookline.dev/etcd-build\n\ngo 1.26\n' >"$work/go.mod"
  (cd "$work" &&
    go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$dest/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$dest/etcd.tmp" "$dest/etcd"
}

[ -x "$dest/etcd" ] || build_etcd
[ -x "$dest/kube-apiserver" ] || build_kube_apiserver
echo "$dest"
