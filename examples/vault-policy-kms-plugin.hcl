# The Vault policy of atrest's KMS plugin (`atrest kms-plugin`, the
# container atrest-kms on every controlplane node) for one cluster: encrypt
# and decrypt with its one Transit key, nothing else. No read of the key,
# no rotate, no export: a node that is compromised can unwrap data keys
# while its credential lives (atrest revokes it when it replaces it), but
# never take the key itself.
#
#   vault policy write atrest-kms-prod-eu-1 vault-policy-kms-plugin.hcl
#   vault write auth/approle/role/atrest-kms-prod-eu-1 \
#     token_policies=atrest-kms-prod-eu-1 token_ttl=1h token_max_ttl=24h \
#     secret_id_ttl=0 secret_id_num_uses=0
#
# The plugin learns the key's latest version from the ciphertext of a
# probe it encrypts: it needs no read on transit/keys.
path "transit/encrypt/atrest-prod-eu-1" {
  capabilities = ["update"]
}
path "transit/decrypt/atrest-prod-eu-1" {
  capabilities = ["update"]
}
