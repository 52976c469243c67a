# The Vault policy of atrest for one cluster: exactly the paths and
# capabilities atrest uses, and nothing else. Written for the defaults
# (settings vault.kvMount "secret", vault.prefix "atrest") and cluster.name
# "prod-eu-1" (settings.yaml, and the cluster_name of cluster.yml beside
# this file); replace them to match yours.
#
#   vault policy write atrest vault-policy.hcl
#
# Under secret/atrest/prod-eu-1 atrest keeps:
#   keys/<name>      one key's material, written once, never overwritten
#   keyring          which key does what, and the journal of a transition
#   lock             the lock that admits one transition at a time
#   snapshots        which retained etcd snapshots need which keys
#   revision         the Git revision in force: a new one must descend
#                    from it, so a force push cannot roll atrest back
#   daemons/<name>   what each `atrest run` is doing, for `atrest status`
#   preserved/<name>/<fingerprint>
#                    material found on a node under a key name Vault holds
#                    with other material: kept, never overwritten
#
# Every document is created with its metadata first (version limit and
# check-and-set required), so the data write that follows is an update to
# Vault: no data path needs "create". Nothing is ever read from metadata.
#
# Several clusters: one policy each (one token can then reach one cluster's
# keys), or, for one Vault identity shared by the atrest of every cluster
# (each with its own cluster.name), "secret/data/atrest/+/..." in place of
# "prod-eu-1" ("+" matches one path segment).

# The documents: read, and written only by check-and-set.
path "secret/data/atrest/prod-eu-1/keyring" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/lock" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/snapshots" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/revision" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/keys/*" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/daemons/*" {
  capabilities = ["read", "update"]
}
path "secret/data/atrest/prod-eu-1/preserved/*" {
  capabilities = ["read", "update"]
}

# Their metadata: set once when a document is created (again if that was
# interrupted). Listing finds keys and daemons; a daemon's document is
# deleted once that daemon is gone for good. Key material is never deleted
# or destroyed with this policy: no "delete" on keys/*, and nothing at all
# on secret/delete/, secret/destroy/ or secret/undelete/. Retired keys are
# destroyed by an operator, once no kept snapshot needs them, with
# `atrest keys destroy-retired` and vault-policy-destroy.hcl.
path "secret/metadata/atrest/prod-eu-1/keyring" {
  capabilities = ["create", "update"]
}
path "secret/metadata/atrest/prod-eu-1/lock" {
  capabilities = ["create", "update"]
}
path "secret/metadata/atrest/prod-eu-1/snapshots" {
  capabilities = ["create", "update"]
}
path "secret/metadata/atrest/prod-eu-1/revision" {
  capabilities = ["create", "update"]
}
path "secret/metadata/atrest/prod-eu-1/keys/*" {
  capabilities = ["create", "update", "list"]
}
path "secret/metadata/atrest/prod-eu-1/daemons/*" {
  capabilities = ["create", "update", "delete", "list"]
}
path "secret/metadata/atrest/prod-eu-1/preserved/*" {
  capabilities = ["create", "update"]
}

# atrest's own token: its TTL at start (token auth), and renewal until its
# max TTL, after which atrest logs in again. Vault's "default" policy grants
# these too; they are here so that a role may leave "default" out
# (token_no_default_policy).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# The vault-transit provider (provider: vault-transit in atrest.yaml, with
# settings kms.image): only when you use it. Its Transit key (settings
# kms.transitMount "transit", kms.transitKey "atrest-<cluster.name>") wraps
# kube-apiserver's data keys and never leaves Vault: atrest creates it
# (never exportable), reads its versions, rotates it, and raises its
# min_decryption_version once no object and no kept snapshot needs the
# older versions. It encrypts a probe and decrypts data keys for the
# snapshot drill (which decrypts every object of a kept snapshot offline).
# No "delete", and nothing on trim: versions are never destroyed by atrest.
path "transit/keys/atrest-prod-eu-1" {
  capabilities = ["read", "create", "update"]
}
path "transit/keys/atrest-prod-eu-1/rotate" {
  capabilities = ["update"]
}
path "transit/keys/atrest-prod-eu-1/config" {
  capabilities = ["update"]
}
path "transit/encrypt/atrest-prod-eu-1" {
  capabilities = ["update"]
}
path "transit/decrypt/atrest-prod-eu-1" {
  capabilities = ["update"]
}

# The plugins' credentials: the AppRole role the plugins log in with
# (settings kms.approleMount "approle", kms.approleRole
# "atrest-kms-<cluster.name>"), which the operator creates with the policy
# of vault-policy-kms-plugin.hcl (examples/README.md). atrest reads its role
# id, issues a secret id for each node's plugin (delivered over SSH, 0600)
# and destroys the ones it replaced. It cannot change the role or its
# policy.
path "auth/approle/role/atrest-kms-prod-eu-1/role-id" {
  capabilities = ["read"]
}
path "auth/approle/role/atrest-kms-prod-eu-1/secret-id" {
  capabilities = ["update"]
}
path "auth/approle/role/atrest-kms-prod-eu-1/secret-id-accessor/destroy" {
  capabilities = ["update"]
}
