# The Vault policy of `atrest keys destroy-retired` for one cluster: an
# operator's, not the daemon's. It destroys the material of retired keys
# that no kept snapshot needs, and drops them from the keyring: exactly
# the paths and capabilities that command uses, and nothing else. It reads
# no key material. Written, as vault-policy.hcl, for vault.kvMount
# "secret", vault.prefix "atrest" and cluster.name "prod-eu-1".
#
#   vault policy write atrest-destroy vault-policy-destroy.hcl
#   vault token create -policy=atrest-destroy -no-default-policy -ttl=15m
#
# Give it to people, for the moment they destroy keys, not to atrest's
# service account: a key destroyed cannot be brought back, and with it
# every snapshot taken under it is unreadable.

# The keyring: which keys are retired; the retired entries are dropped once
# their material is gone (check-and-set).
path "secret/data/atrest/prod-eu-1/keyring" {
  capabilities = ["read", "update"]
}
# The transition lock: no transition may run while keys are destroyed.
# Its metadata when the lock was never taken before.
path "secret/data/atrest/prod-eu-1/lock" {
  capabilities = ["read", "update"]
}
path "secret/metadata/atrest/prod-eu-1/lock" {
  capabilities = ["create", "update"]
}
# The snapshot references: which kept snapshots need which keys, and the
# announcement of a destruction in progress, so that no snapshot can start
# to need a key while it is destroyed.
path "secret/data/atrest/prod-eu-1/snapshots" {
  capabilities = ["read", "update"]
}
path "secret/metadata/atrest/prod-eu-1/snapshots" {
  capabilities = ["create", "update"]
}
# A key's material, every version and its metadata: destroyed.
path "secret/metadata/atrest/prod-eu-1/keys/*" {
  capabilities = ["delete"]
}

# The token's own TTL and renewal (see vault-policy.hcl).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
