package cluster

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

func TestTransitKeyID(t *testing.T) {
	for _, tc := range []struct {
		mount, key string
		v          int
		id         string
	}{
		{"transit", "atrest-prod", 3, "transit/atrest-prod:v3"},
		{"/teams/x/transit/", "k.1", 12, "teams/x/transit/k.1:v12"},
	} {
		id := TransitKeyID(tc.mount, tc.key, tc.v)
		if id != tc.id {
			t.Errorf("TransitKeyID(%q, %q, %d) = %q, want %q", tc.mount, tc.key, tc.v, id, tc.id)
		}
		mount, key, v, ok := ParseTransitKeyID(id)
		if !ok || mount != strings.Trim(tc.mount, "/") || key != tc.key || v != tc.v {
			t.Errorf("ParseTransitKeyID(%q) = %q %q %d %v", id, mount, key, v, ok)
		}
	}
	for _, bad := range []string{"", "transit/k", "transit/k:v", "transit/k:v0", "transit/k:v01", "k:v3", "/k:v3", "transit/:v3", "transit/k:v-1", "arn:aws:kms:eu-west-1:1:key/x"} {
		if _, _, _, ok := ParseTransitKeyID(bad); ok {
			t.Errorf("ParseTransitKeyID(%q) is ok, want refused", bad)
		}
	}
}

// TestKMSv2KeyID reads the key_id from envelopes kube-apiserver's own
// protobuf type makes, whatever the fields around it, without the data.
func TestKMSv2KeyID(t *testing.T) {
	envelope := func(o *kmstypes.EncryptedObject) []byte {
		b, err := proto.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte("k8s:enc:kms:v2:"+TransitProviderName+":"), b...)
	}
	big := make([]byte, 1<<20)
	for _, tc := range []struct {
		name  string
		value []byte
		id    string
		ok    bool
	}{
		{"seed envelope", envelope(&kmstypes.EncryptedObject{EncryptedData: []byte("data"), KeyID: "transit/k:v2", EncryptedDEKSource: []byte("vault:v2:x"),
			EncryptedDEKSourceType: kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED}), "transit/k:v2", true},
		{"a 1 MiB value", envelope(&kmstypes.EncryptedObject{EncryptedData: big, KeyID: "transit/k:v7", EncryptedDEKSource: []byte("x"),
			Annotations: map[string][]byte{"a.example.com": []byte("b")}}), "transit/k:v7", true},
		{"no key_id", envelope(&kmstypes.EncryptedObject{EncryptedData: []byte("data")}), "", false},
		{"aescbc", []byte("k8s:enc:aescbc:v1:k1:\x01\x02"), "", false},
		{"kms v1", []byte("k8s:enc:kms:v1:vault:\x12\x05x"), "", false},
		{"plain", []byte("k8s\x00\x0a\x02v1"), "", false},
		{"cut short", envelope(&kmstypes.EncryptedObject{EncryptedData: []byte("data"), KeyID: "transit/k:v2"})[:30], "", false},
	} {
		id, ok := KMSv2KeyID(tc.value)
		if id != tc.id || ok != tc.ok {
			t.Errorf("%s: KMSv2KeyID = %q %v, want %q %v", tc.name, id, ok, tc.id, tc.ok)
		}
	}
}

func TestTransitEntry(t *testing.T) {
	e := TransitEntry()
	if !e.IsTransit() || e.Prefix() != "kms:v2:"+TransitProviderName || e.Keyed() || TransitPrefix != e.Prefix() {
		t.Errorf("TransitEntry: %+v, prefix %s", e, e.Prefix())
	}
	other := ProviderEntry{Kind: KindKMS, KMS: &KMS{APIVersion: "v2", Name: "vault", Endpoint: "unix:///x.sock"}}
	if other.IsTransit() {
		t.Error("another KMS v2 provider is taken for atrest's")
	}
	// atrest renders it as a config kube-apiserver's own rules accept.
	file, err := RenderChains(Chains{"secrets": {TransitEntry(), Identity}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseEncryptionConfig("rendered", "", file, "")
	if err != nil {
		t.Fatalf("the rendered transit config: %v\n%s", err, file)
	}
	if got := cfg.Chains()["secrets"]; len(got) != 2 || !got[0].IsTransit() {
		t.Errorf("parsed back: %v", got)
	}
}
