package cluster

import "testing"

func TestStoragePrefix(t *testing.T) {
	tests := map[string]string{
		"k8s:enc:aescbc:v1:k-abcde:\x01\x02":      "aescbc:v1:k-abcde",
		"k8s:enc:aesgcm:v1:key1:ciphertext":       "aesgcm:v1:key1",
		"k8s:enc:secretbox:v1:k-zz9zz:\xff":       "secretbox:v1:k-zz9zz",
		"k8s:enc:kms:v1:aws-encryption-provider:": "kms:v1:aws-encryption-provider",
		"k8s:enc:kms:v2:vault:\x0a\x20":           "kms:v2:vault",
		"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret": PrefixIdentity,
		`{"kind":"Secret"}`:                       PrefixIdentity,
		"k8s:enc:aescbc:v1":                       PrefixUnknown,
		"k8s:enc::v1:x:":                          PrefixUnknown,
		"garbage":                                 PrefixUnknown,
		"":                                        PrefixUnknown,
	}
	for in, want := range tests {
		if got := StoragePrefix([]byte(in)); got != want {
			t.Errorf("StoragePrefix(%q) = %q, want %q", in, got, want)
		}
	}
}
