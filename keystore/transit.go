package keystore

import (
	"context"
	"encoding/base64"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Transit is one key of Vault's Transit secrets engine: the key-encryption
// key of KMS v2, which never leaves Vault. kube-apiserver encrypts each
// object with a data key it makes itself, and asks the KMS plugin to wrap
// that data key with this Transit key; a rotation adds a version, and
// every version stays able to decrypt until min_decryption_version is
// raised past it.
type Transit struct {
	s     *Session
	mount string
	key   string
}

// TransitKeyType is the type of the Transit keys atrest creates.
const TransitKeyType = "aes256-gcm96"

// Transit returns mount's key name on s. Nothing is checked until it is
// used.
func (s *Session) Transit(mount, key string) *Transit {
	return &Transit{s: s, mount: strings.Trim(mount, "/"), key: key}
}

// Mount is the Transit engine's mount path.
func (t *Transit) Mount() string { return t.mount }

// Key is the Transit key's name.
func (t *Transit) Key() string { return t.key }

// TransitState is what Vault says of a Transit key: no material.
type TransitState struct {
	// Exists is false when there is no such key.
	Exists bool
	Type   string
	// Latest is the version new encryptions use; MinDecryption the oldest
	// version Vault still decrypts with.
	Latest        int
	MinDecryption int
	// Created is when each version was made.
	Created map[int]time.Time
	// Exportable or PlaintextBackup: the key can leave Vault.
	Exportable, PlaintextBackup bool
	// DeletionAllowed: the key can be deleted with every version.
	DeletionAllowed bool
}

// Versions are the versions Vault still decrypts with, oldest first.
func (st TransitState) Versions() []int {
	var out []int
	for v := range st.Created {
		if v >= st.MinDecryption {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// State reads the key's versions; State.Exists is false when there is no
// such key.
func (t *Transit) State(ctx context.Context) (TransitState, error) {
	p := path.Join(t.mount, "keys", t.key)
	sec, err := t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().ReadWithContext(ctx, p)
	})
	if err != nil {
		return TransitState{}, &OpError{Op: "read Transit key", Path: p, Err: classify(err, capRead, t.s.client.Address())}
	}
	if sec == nil || sec.Data == nil {
		return TransitState{}, nil
	}
	return parseTransitState(sec.Data)
}

func parseTransitState(d map[string]any) (TransitState, error) {
	st := TransitState{Exists: true, Created: map[int]time.Time{}}
	st.Type, _ = d["type"].(string)
	st.Exportable, _ = d["exportable"].(bool)
	st.PlaintextBackup, _ = d["allow_plaintext_backup"].(bool)
	st.DeletionAllowed, _ = d["deletion_allowed"].(bool)
	var ok bool
	if st.Latest, ok = jsonInt(d["latest_version"]); !ok {
		return st, fmt.Errorf("%w: Transit key: latest_version %v is not a number", ErrInvalid, d["latest_version"])
	}
	if st.MinDecryption, ok = jsonInt(d["min_decryption_version"]); !ok {
		return st, fmt.Errorf("%w: Transit key: min_decryption_version %v is not a number", ErrInvalid, d["min_decryption_version"])
	}
	keys, _ := d["keys"].(map[string]any)
	for v, created := range keys {
		n, err := strconv.Atoi(v)
		if err != nil {
			return st, fmt.Errorf("%w: Transit key: version %q is not a number", ErrInvalid, v)
		}
		// Symmetric keys give the creation time in Unix seconds.
		if sec, ok := jsonInt(created); ok {
			st.Created[n] = time.Unix(int64(sec), 0).UTC()
		} else {
			st.Created[n] = time.Time{}
		}
	}
	return st, nil
}

// Create makes the key if there is none: aes256-gcm96, never exportable,
// no plaintext backup, deletion not allowed. A key already there is left
// as it is and returned.
func (t *Transit) Create(ctx context.Context) (TransitState, error) {
	st, err := t.State(ctx)
	if err != nil || st.Exists {
		return st, err
	}
	p := path.Join(t.mount, "keys", t.key)
	_, err = t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().WriteWithContext(ctx, p, map[string]any{"type": TransitKeyType, "exportable": false, "allow_plaintext_backup": false})
	})
	if err != nil {
		return st, &OpError{Op: "create Transit key", Path: p, Err: classify(err, capWrite, t.s.client.Address())}
	}
	t.s.log.Info("created the Transit key", "mount", t.mount, "key", t.key)
	return t.State(ctx)
}

// Rotate adds a version to the key; new encryptions use it. It returns the
// key's state after.
func (t *Transit) Rotate(ctx context.Context) (TransitState, error) {
	p := path.Join(t.mount, "keys", t.key, "rotate")
	_, err := t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().WriteWithContext(ctx, p, nil)
	})
	if err != nil {
		return TransitState{}, &OpError{Op: "rotate Transit key", Path: p, Err: classify(err, capWrite, t.s.client.Address())}
	}
	st, err := t.State(ctx)
	if err == nil {
		t.s.log.Info("rotated the Transit key", "mount", t.mount, "key", t.key, "version", st.Latest)
	}
	return st, err
}

// SetMinDecryption makes Vault refuse to decrypt with versions older than
// v. Versions are not deleted: lowering it again undoes it.
func (t *Transit) SetMinDecryption(ctx context.Context, v int) error {
	p := path.Join(t.mount, "keys", t.key, "config")
	_, err := t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().WriteWithContext(ctx, p, map[string]any{"min_decryption_version": v})
	})
	if err != nil {
		return &OpError{Op: "set the Transit key's min_decryption_version", Path: p, Err: classify(err, capWrite, t.s.client.Address())}
	}
	t.s.log.Info("raised the Transit key's min_decryption_version", "mount", t.mount, "key", t.key, "version", v)
	return nil
}

// Encrypt wraps plaintext with the key's latest version. It returns
// Vault's ciphertext ("vault:v3:...") and that version.
func (t *Transit) Encrypt(ctx context.Context, plaintext []byte) (string, int, error) {
	p := path.Join(t.mount, "encrypt", t.key)
	body := map[string]any{"plaintext": base64.StdEncoding.EncodeToString(plaintext)}
	sec, err := t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().WriteWithContext(ctx, p, body)
	})
	if err != nil {
		return "", 0, &OpError{Op: "encrypt with Transit", Path: p, Err: classify(err, capWrite, t.s.client.Address())}
	}
	var ct string
	if sec != nil && sec.Data != nil {
		ct, _ = sec.Data["ciphertext"].(string)
	}
	v, err := CiphertextVersion(ct)
	if err != nil {
		return "", 0, &OpError{Op: "encrypt with Transit", Path: p, Err: err}
	}
	return ct, v, nil
}

// Decrypt unwraps a ciphertext Encrypt returned, with the version it names.
func (t *Transit) Decrypt(ctx context.Context, ciphertext string) ([]byte, error) {
	p := path.Join(t.mount, "decrypt", t.key)
	if _, err := CiphertextVersion(ciphertext); err != nil {
		return nil, &OpError{Op: "decrypt with Transit", Path: p, Err: err}
	}
	sec, err := t.s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return t.s.client.Logical().WriteWithContext(ctx, p, map[string]any{"ciphertext": ciphertext})
	})
	if err != nil {
		return nil, &OpError{Op: "decrypt with Transit", Path: p, Err: classify(err, capWrite, t.s.client.Address())}
	}
	var b64 string
	if sec != nil && sec.Data != nil {
		b64, _ = sec.Data["plaintext"].(string)
	}
	out, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, &OpError{Op: "decrypt with Transit", Path: p, Err: fmt.Errorf("%w: Vault's plaintext is not base64", ErrInvalid)}
	}
	return out, nil
}

// CiphertextVersion is the key version a Transit ciphertext names:
// 3 for "vault:v3:...".
func CiphertextVersion(ct string) (int, error) {
	rest, ok := strings.CutPrefix(ct, "vault:v")
	if ok {
		num, _, found := strings.Cut(rest, ":")
		if v, err := strconv.Atoi(num); found && err == nil && v > 0 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: not a Transit ciphertext (vault:v<N>:...)", ErrInvalid)
}
