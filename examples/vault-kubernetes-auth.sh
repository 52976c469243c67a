#!/usr/bin/env bash
# Sets Vault up for atrest running in Kubernetes (charts/atrest): atrest's
# policy, and a Kubernetes auth role that gives it to the chart's service
# account and to nothing else. Run it as a Vault operator, with the vault CLI
# and the usual VAULT_ADDR, VAULT_TOKEN (and VAULT_CACERT) set. Idempotent.
#
#   ATREST_NAMESPACE=atrest ATREST_SERVICE_ACCOUNT=atrest \
#     examples/vault-kubernetes-auth.sh
#
# Settings (environment, with their defaults):
#   ATREST_NAMESPACE         atrest          namespace of the Helm release
#   ATREST_SERVICE_ACCOUNT   atrest          its service account (the release's
#                                            full name, or serviceAccount.name)
#   ATREST_VAULT_AUTH_MOUNT  kubernetes      path of the Kubernetes auth method
#                                            (chart value vault.kubernetes.mount)
#   ATREST_VAULT_ROLE        atrest          the role (vault.kubernetes.role)
#   ATREST_VAULT_POLICY      atrest          the policy's name
#   ATREST_VAULT_POLICY_FILE vault-policy.hcl beside this script
#   ATREST_TOKEN_AUDIENCE    vault           the audience the role requires of a
#                                            token: the chart's default
#                                            vault.kubernetes.audience. The pod's
#                                            own API token (audience: the
#                                            kube-apiserver) is refused.
#   ATREST_TOKEN_TTL         1h              TTL of the tokens the role hands
#   ATREST_TOKEN_MAX_TTL     24h             out; atrest renews, then logs in again
#
# When KUBERNETES_HOST is set, the auth method is also enabled (if it is not)
# and pointed at that kube-apiserver:
#   KUBERNETES_HOST          https://10.0.0.11:6443
#   KUBERNETES_CA_CERT_FILE  the CA that verifies it (RKE: kube-ca.pem)
#   TOKEN_REVIEWER_JWT_FILE  a token of a service account bound to
#                            system:auth-delegator, with which Vault checks
#                            atrest's token. Leave it out when Vault runs in
#                            this cluster (it then uses its own).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
namespace=${ATREST_NAMESPACE:-atrest}
service_account=${ATREST_SERVICE_ACCOUNT:-atrest}
mount=${ATREST_VAULT_AUTH_MOUNT:-kubernetes}
role=${ATREST_VAULT_ROLE:-atrest}
policy=${ATREST_VAULT_POLICY:-atrest}
policy_file=${ATREST_VAULT_POLICY_FILE:-$here/vault-policy.hcl}
audience=${ATREST_TOKEN_AUDIENCE:-vault}
ttl=${ATREST_TOKEN_TTL:-1h}
max_ttl=${ATREST_TOKEN_MAX_TTL:-24h}

: "${VAULT_ADDR:?set VAULT_ADDR (and VAULT_TOKEN) to reach Vault as an operator}"

if [[ -n ${KUBERNETES_HOST:-} ]]; then
  : "${KUBERNETES_CA_CERT_FILE:?set KUBERNETES_CA_CERT_FILE: the CA that verifies $KUBERNETES_HOST}"
  auths=$(vault auth list -format=json)
  if [[ $auths != *"\"${mount}/\""* ]]; then
    vault auth enable -path="$mount" kubernetes
  fi
  config=(kubernetes_host="$KUBERNETES_HOST" kubernetes_ca_cert=@"$KUBERNETES_CA_CERT_FILE")
  if [[ -n ${TOKEN_REVIEWER_JWT_FILE:-} ]]; then
    # Vault runs outside this cluster: it cannot use a token of its own.
    config+=(token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT_FILE" disable_local_ca_jwt=true)
  fi
  vault write "auth/$mount/config" "${config[@]}"
fi

vault policy write "$policy" "$policy_file"

# Exactly one service account in one namespace may log in with this role,
# only with a token issued for Vault's audience (the chart projects one),
# and its tokens carry atrest's policy only (not Vault's "default").
: "${audience:?ATREST_TOKEN_AUDIENCE must not be empty: the role would accept the API token of the pod}"
args=(
  bound_service_account_names="$service_account"
  bound_service_account_namespaces="$namespace"
  audience="$audience"
  token_policies="$policy"
  token_no_default_policy=true
  token_ttl="$ttl"
  token_max_ttl="$max_ttl"
)
vault write "auth/$mount/role/$role" "${args[@]}"

echo "Vault role $role at auth/$mount logs in $namespace/$service_account (tokens for audience $audience) with policy $policy." >&2
