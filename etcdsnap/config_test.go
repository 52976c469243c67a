package etcdsnap

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

func TestBuildConfig(t *testing.T) {
	k1 := cluster.KeyEntry(cluster.AESCBC, "k-one01", "sha256:11111111111111111111111111111111")
	k2 := cluster.KeyEntry(cluster.AESCBC, "k-two02", "sha256:22222222222222222222222222222222")
	old := cluster.KeyEntry(cluster.Secretbox, "k-old03", "sha256:33333333333333333333333333333333")
	kms := cluster.ProviderEntry{Kind: cluster.KindKMS, KMS: &cluster.KMS{APIVersion: "v2", Name: "vault", Endpoint: "unix:///run/kms.sock", Timeout: 3 * time.Second}}
	keyring := func(prefix string) (cluster.ProviderEntry, bool) {
		for _, e := range []cluster.ProviderEntry{k1, k2, old} {
			if e.Prefix() == prefix {
				return e, true
			}
		}
		return cluster.ProviderEntry{}, false
	}
	show := func(lists []ResourceList) []string {
		var out []string
		for _, l := range lists {
			var ps []string
			for _, p := range l.Providers {
				ps = append(ps, p.Prefix())
			}
			out = append(out, strings.Join(l.Resources, ",")+": "+strings.Join(ps, ", "))
		}
		return out
	}
	tests := []struct {
		name           string
		nodes          []cluster.Chains
		census         Census
		want           []string
		wantUnreadable []Unreadable
	}{
		{"nothing encrypted", []cluster.Chains{{}, {}}, Census{"secrets": {"identity": 5}}, nil, nil},
		{"one key everywhere",
			[]cluster.Chains{{"secrets": {k1, cluster.Identity}}, {"secrets": {k1, cluster.Identity}}},
			Census{"secrets": {"aescbc:v1:k-one01": 4}},
			[]string{"secrets: aescbc:v1:k-one01, identity"}, nil},
		// Mid-rotation the nodes differ: the first node's order, then
		// what the others add.
		{"nodes differ",
			[]cluster.Chains{{"secrets": {k2, k1}}, {"secrets": {k1, k2}}, {"secrets": {k1}}},
			Census{"secrets": {"aescbc:v1:k-one01": 4, "aescbc:v1:k-two02": 1}},
			[]string{"secrets: aescbc:v1:k-two02, aescbc:v1:k-one01, identity"}, nil},
		// After an etcd restore, objects under a key no node runs.
		{"census-only key",
			[]cluster.Chains{{"secrets": {k2}}},
			Census{"secrets": {"aescbc:v1:k-two02": 3, "secretbox:v1:k-old03": 2, "identity": 1}},
			[]string{"secrets: aescbc:v1:k-two02, secretbox:v1:k-old03, identity"}, nil},
		{"census-only resource",
			[]cluster.Chains{{"secrets": {k1}}},
			Census{"secrets": {"aescbc:v1:k-one01": 3}, "configmaps": {"secretbox:v1:k-old03": 2, "identity": 9}},
			[]string{"secrets: aescbc:v1:k-one01, identity", "configmaps: secretbox:v1:k-old03, identity"}, nil},
		// Lists stay apart where their providers differ, and KMS
		// providers are kept with their settings.
		{"mixed lists",
			[]cluster.Chains{{"secrets": {k1}, "configmaps": {kms, cluster.Identity}, "events": {kms, cluster.Identity}}},
			Census{"secrets": {"aescbc:v1:k-one01": 3}, "configmaps": {"kms:v2:vault": 2}},
			[]string{"secrets: aescbc:v1:k-one01, identity", "configmaps,events: kms:v2:vault, identity"}, nil},
		{"unreadable",
			[]cluster.Chains{{"secrets": {k1}}},
			Census{"secrets": {"aescbc:v1:k-one01": 3, "aescbc:v1:k-lost9": 2, "kms:v2:other": 1, "unknown": 0}},
			[]string{"secrets: aescbc:v1:k-one01, identity"},
			[]Unreadable{{"secrets", "aescbc:v1:k-lost9", 2}, {"secrets", "kms:v2:other", 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lists, unreadable := BuildConfig(tt.nodes, tt.census, keyring)
			if got := show(lists); !slices.Equal(got, tt.want) {
				t.Errorf("config %q, want %q", got, tt.want)
			}
			if !slices.Equal(unreadable, tt.wantUnreadable) {
				t.Errorf("unreadable %v, want %v", unreadable, tt.wantUnreadable)
			}
			// What Save records must pass the manifest's own checks.
			m := testManifest("snap")
			m.Config, m.Keys, m.Resources = lists, ConfigKeys(lists), ConfigResources(lists)
			if len(m.Resources) == 0 {
				m.Resources = []string{"secrets"}
			}
			if err := m.checkRequest(); err != nil {
				t.Errorf("the built config does not check: %v", err)
			}
		})
	}
	lists, _ := BuildConfig([]cluster.Chains{{"configmaps": {kms}}}, nil, keyring)
	if k := lists[0].Providers[0].KMS; k == nil || k.Endpoint != "unix:///run/kms.sock" || k.Timeout != "3s" || k.APIVersion != "v2" {
		t.Errorf("KMS provider recorded as %+v", k)
	}
}

func TestCheckConfig(t *testing.T) {
	good := testManifest("snap")
	key := ProviderRef{Kind: "aescbc", Name: good.Keys[0].Name, Fingerprint: good.Keys[0].Fingerprint}
	id := ProviderRef{Kind: "identity"}
	tests := []struct {
		name string
		cfg  []ResourceList
		want string // "" for valid
	}{
		{"valid", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{key, id}}}, ""},
		{"resource twice", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{id}}, {Resources: []string{"secrets"}, Providers: []ProviderRef{id}}}, "in two lists"},
		{"wildcard", []ResourceList{{Resources: []string{"*.*"}, Providers: []ProviderRef{id}}}, "no wildcard"},
		{"key not in keys", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{{Kind: "aescbc", Name: "k-other", Fingerprint: key.Fingerprint}}}}, "not among the manifest's keys"},
		{"other fingerprint", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{{Kind: "aescbc", Name: key.Name, Fingerprint: "sha256:ffffffffffffffffffffffffffffffff"}}}}, "not among the manifest's keys"},
		{"kms without endpoint", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{{Kind: "kms", Name: "v", KMS: &KMSRef{APIVersion: "v2"}}}}}, "needs name, apiVersion and endpoint"},
		{"kms bad timeout", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{{Kind: "kms", Name: "v", KMS: &KMSRef{APIVersion: "v2", Endpoint: "unix:///x", Timeout: "soon"}}}}}, "not a duration"},
		{"unknown kind", []ResourceList{{Resources: []string{"secrets"}, Providers: []ProviderRef{{Kind: "rot13"}}}}, "want aescbc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Config = tt.cfg
			err := m.checkRequest()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestBelongsTo(t *testing.T) {
	m := testManifest("snap")
	if err := m.BelongsTo("prod"); err != nil {
		t.Errorf("a manifest without a cluster (older atrest): %v", err)
	}
	m.Cluster = "prod"
	if err := m.BelongsTo("prod"); err != nil {
		t.Error(err)
	}
	if err := m.BelongsTo("staging"); err == nil || !strings.Contains(err.Error(), `"prod"`) {
		t.Errorf("another cluster's snapshot: %v", err)
	}
}
