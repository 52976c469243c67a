package cluster

import (
	"slices"
	"strings"
	"testing"
)

// configWith is a provider file whose resource lists are given as YAML flow
// lists, each with the aescbc key k1 and identity.
func configWith(lists ...string) string {
	s := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
	for _, l := range lists {
		s += "  - resources: " + l + "\n    providers:\n      - aescbc:\n          keys:\n            - name: k1\n              secret: " + key32 + "\n      - identity: {}\n"
	}
	return s
}

// kube-apiserver accepts wildcards and a resource in several lists; atrest
// cannot census or rewrite the first, and models one list per resource, so
// every config it reads (cluster.yml, a node's file) refuses both.
func TestParseEncryptionConfigRefusesWhatAtrestCannotModel(t *testing.T) {
	const wildcard = "is a wildcard, and atrest cannot census or rewrite a wildcard: list the resources (for example secrets, configmaps) instead"
	const merge = "kube-apiserver gives it the providers of every list, in order; atrest models one list per resource: merge them into one list"
	tests := []struct {
		name  string
		lists []string
		want  []string // error lines, in order
	}{
		{"every resource", []string{"['*.*']"}, []string{`node1: resources[0].resources[0]: "*.*" ` + wildcard}},
		{"the core group", []string{"['*.']"}, []string{`node1: resources[0].resources[0]: "*." ` + wildcard}},
		{"a group", []string{"[secrets, '*.apps']"}, []string{`node1: resources[0].resources[1]: "*.apps" ` + wildcard}},
		{"a wildcard that masks a later resource", []string{"['*.']", "[secrets]"}, []string{`node1: resources[0].resources[0]: "*." ` + wildcard}},
		// kube-apiserver's own error stays, beside atrest's.
		{"bare star", []string{"['*']"}, []string{
			"node1: resources[0].resources[0]: use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources",
			`node1: resources[0].resources[0]: "*" ` + wildcard}},
		{"a resource across groups", []string{"['deployments.*']"}, []string{
			"node1: resources[0].resources[0]: encrypting the same resource across groups is not supported",
			`node1: resources[0].resources[0]: "deployments.*" ` + wildcard}},
		{"a resource in two lists", []string{"[secrets, configmaps]", "[configmaps]"}, []string{
			`node1: resources[1].resources[0]: resource "configmaps" is also listed at resources[0].resources[1]; ` + merge}},
		{"in three lists", []string{"[secrets]", "[configmaps]", "[deployments.apps, secrets]", "['secrets.']"}, []string{
			`node1: resources[2].resources[1]: resource "secrets" is also listed at resources[0].resources[0]; ` + merge,
			`node1: resources[3].resources[0]: resource "secrets." is also listed at resources[0].resources[0]; ` + merge}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseEncryptionConfig("node1", "", []byte(configWith(tt.lists...)), "")
			if err == nil {
				t.Fatalf("accepted: %v", cfg.Providers())
			}
			got := strings.Split(err.Error(), "\n")
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", err, strings.Join(tt.want, "\n"))
			}
			assertNoSecrets(t, err.Error())
		})
	}

	// Distinct resources in several lists are one chain each.
	cfg, err := ParseEncryptionConfig("node1", "", []byte(configWith("[secrets]", "[configmaps, deployments.apps]")), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Chains().Resources(); !slices.Equal(got, []string{"configmaps", "deployments.apps", "secrets"}) {
		t.Errorf("resources = %v", got)
	}
}
