// Package examples holds atrest's example files: a managed cluster.yml and
// its atrest.yaml, RKE's custom aescbc and AWS KMS configurations, runtime
// settings for running outside the cluster, the Vault policy and the Vault
// Kubernetes-auth setup. It has no code; its tests prove each example is
// what atrest accepts, and (in the sandbox tier) that the Vault policy is
// enough for atrest and no more.
package examples
