#!/usr/bin/env bash
# Installs the Debian packages the sandbox runs, when they are missing:
# etcd (etcd-server, etcd-client), sshd (openssh-server), Docker (docker.io),
# git, unshare, jq and the CA certificates. Services are not started: the sandbox starts its own.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]] || need+=(docker.io)
command -v git >/dev/null || need+=(git)
command -v unshare >/dev/null || need+=(util-linux)
# keystore's test runs the jq command atrest adopt prints for the rkestate.
command -v jq >/dev/null || need+=(jq)
# The image (make image, and the charts' test of it) trusts Debian's CAs.
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || need+=(ca-certificates)
((${#need[@]})) || exit 0

echo "install-deps: apt-get install ${need[*]}" >&2
# A system sshd or dockerd started by the packages' scripts would hold the
# ports and sockets the sandbox's own want: forbid service starts meanwhile.
policy=/usr/sbin/policy-rc.d
created=
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created=1
fi
trap '[[ -n $created ]] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
