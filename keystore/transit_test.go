package keystore

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestCiphertextVersion(t *testing.T) {
	for ct, want := range map[string]int{"vault:v1:abc": 1, "vault:v12:x:y": 12} {
		if v, err := CiphertextVersion(ct); err != nil || v != want {
			t.Errorf("CiphertextVersion(%q) = %d %v, want %d", ct, v, err, want)
		}
	}
	for _, bad := range []string{"", "vault:v0:x", "vault:vx:y", "vault:v3", "v3:x", "vault:v-1:x"} {
		if _, err := CiphertextVersion(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("CiphertextVersion(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

func TestParseTransitState(t *testing.T) {
	st, err := parseTransitState(map[string]any{
		"type": "aes256-gcm96", "latest_version": json.Number("3"), "min_decryption_version": json.Number("2"),
		"exportable": false, "allow_plaintext_backup": false, "deletion_allowed": false,
		"keys": map[string]any{"1": json.Number("1700000000"), "2": json.Number("1700000100"), "3": json.Number("1700000200")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exists || st.Latest != 3 || st.MinDecryption != 2 || st.Exportable || st.Type != TransitKeyType {
		t.Errorf("state %+v", st)
	}
	if got := st.Versions(); !slices.Equal(got, []int{2, 3}) {
		t.Errorf("versions Vault decrypts with: %v, want [2 3]", got)
	}
	if !st.Created[3].Equal(time.Unix(1700000200, 0)) {
		t.Errorf("version 3 created %v", st.Created[3])
	}
	if _, err := parseTransitState(map[string]any{"latest_version": "x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a state without numbers: %v", err)
	}
}
