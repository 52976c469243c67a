package cluster

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestChainsRoundTrip(t *testing.T) {
	cfg, err := Load("testdata/custom-kms.yml")
	if err != nil {
		t.Fatal(err)
	}
	kms := cfg.Desired.Custom.Chains()
	if got := kms["secrets"].String(); got != "[kms:v2:aws-encryption-provider, identity]" {
		t.Fatalf("custom chain = %s", got)
	}
	if w := kms["secrets"].Writer(); w != "kms:v2:aws-encryption-provider" {
		t.Fatalf("writer = %s", w)
	}
	if e := kms["secrets"][0]; e.KMS.Endpoint != "unix:///var/run/kmsplugin/socket.sock" || e.KMS.Timeout != 3*time.Second {
		t.Fatalf("kms entry = %+v", e.KMS)
	}

	// A transition phase mixes custom providers with managed keys kept as
	// readers, across two resources with different chains.
	old := mustKey(t, AESCBC)
	box := mustKey(t, Secretbox, old.Name)
	keys := map[string]Key{old.Name: old, box.Name: box}
	lookup := func(n string) (Key, error) { return keys[n], nil }
	mixed := Chains{
		"secrets":    append(Chain{kms["secrets"][0], EntryOf(old), EntryOf(box)}, Identity),
		"configmaps": {EntryOf(box), Identity},
		"events":     nil, // plain: left out of the file
	}
	data, err := RenderChains(mixed, lookup)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := RenderChains(mixed, lookup)
	if !bytes.Equal(data, again) {
		t.Fatal("RenderChains is not deterministic")
	}
	parsed, err := ParseEncryptionConfig("mixed", "", data, "")
	if err != nil {
		t.Fatalf("rendered mixed config does not validate: %v\n", err)
	}
	got := parsed.Chains()
	delete(mixed, "events")
	if !got.Equal(mixed) {
		t.Fatalf("round trip:\n got %v\nwant %v", got, mixed)
	}
	if names := got.KeyNames(); len(names) != 2 {
		t.Fatalf("KeyNames = %v", names)
	}
	if _, err := RenderChains(Chains{"secrets": {KeyEntry(AESCBC, box.Name, "")}}, lookup); err == nil {
		t.Fatal("a secretbox key rendered as aescbc")
	}
	// A key is its material: a plan made for other material under a name
	// never renders.
	other := Key{Name: old.Name, Provider: AESCBC, Secret: bytes.Repeat([]byte{7}, 32)}
	if _, err := RenderChains(Chains{"secrets": {EntryOf(other)}}, lookup); err == nil || !strings.Contains(err.Error(), "other material") {
		t.Fatalf("other material under a known name rendered: %v", err)
	}
	if !(Chain{EntryOf(old)}).Equal(Chain{EntryOf(old)}) || (Chain{EntryOf(old)}).Equal(Chain{EntryOf(other)}) {
		t.Fatal("chain equality must compare the material's fingerprint")
	}
	if _, err := RenderChains(Chains{"secrets": nil}, lookup); err == nil {
		t.Fatal("an empty config rendered")
	}
}

func TestChainHas(t *testing.T) {
	var plain Chain
	if !plain.Has(PrefixIdentity) || plain.Has("aescbc:v1:k") || plain.Writer() != PrefixIdentity {
		t.Fatal("an empty chain reads and writes plain only")
	}
	c := Chain{KeyEntry(AESCBC, "k", ""), Identity}
	if !c.Has("aescbc:v1:k") || !c.Has(PrefixIdentity) || c.Has("aescbc:v1:other") {
		t.Fatal("Has")
	}
}
