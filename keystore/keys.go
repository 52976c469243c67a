package keystore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// keyDoc is one key's material as stored at keys/<name>. Name and provider
// are repeated so the document stands on its own for an operator restoring
// by hand; the fingerprint detects a document altered outside atrest.
type keyDoc struct {
	Name        string           `json:"name"`
	Provider    cluster.Provider `json:"provider"`
	Secret      string           `json:"secret"` // base64, as in an EncryptionConfiguration
	Fingerprint string           `json:"fingerprint"`
	Created     time.Time        `json:"created"`
}

func keyRel(name string) string { return "keys/" + name }

// PutKey stores k's material at keys/<name>, only if nothing is there yet:
// a key is never overwritten (an existing one is ErrExists).
func (s *Store) PutKey(ctx context.Context, k cluster.Key) error {
	op := "write key " + k.Name
	if err := checkKey(k); err != nil {
		return &OpError{Op: op, Path: s.path("data", keyRel(k.Name)), Err: err}
	}
	doc := keyDoc{
		Name:        k.Name,
		Provider:    k.Provider,
		Secret:      base64.StdEncoding.EncodeToString(k.Secret),
		Fingerprint: k.Fingerprint(),
		Created:     time.Now().UTC(),
	}
	_, err := s.kvCreate(ctx, op, keyRel(k.Name), keyMaxVersions, doc)
	if errors.Is(err, ErrConflict) {
		return &OpError{Op: op, Path: s.path("data", keyRel(k.Name)), Err: fmt.Errorf("%w: a key named %s is already stored; keys are never overwritten", ErrExists, k.Name)}
	}
	if err != nil {
		return err
	}
	s.log.Info("key stored", "key", k)
	return nil
}

// Key reads a key's material: version 1 of keys/<name>, the only version
// atrest writes. A missing key is ErrNotFound.
func (s *Store) Key(ctx context.Context, name string) (cluster.Key, error) {
	op := "read key " + name
	p := s.path("data", keyRel(name))
	if err := checkKeyName(name); err != nil {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w key name: %v", ErrInvalid, err)}
	}
	e, err := s.kvRead(ctx, op, keyRel(name), 1)
	if err != nil {
		return cluster.Key{}, err
	}
	if e.version == 0 {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: no key named %s is stored", ErrNotFound, name)}
	}
	var doc keyDoc
	if err := s.decode(op, keyRel(name), e, &doc); err != nil {
		return cluster.Key{}, err
	}
	secret, err := base64.StdEncoding.DecodeString(doc.Secret)
	if err != nil {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the secret is not base64 (altered outside atrest?)", ErrInvalid)}
	}
	k := cluster.Key{Name: doc.Name, Provider: doc.Provider, Secret: secret}
	if doc.Name != name {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the document names key %q (altered outside atrest?)", ErrInvalid, doc.Name)}
	}
	if err := checkKey(k); err != nil {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w (altered outside atrest?)", err)}
	}
	if k.Fingerprint() != doc.Fingerprint {
		return cluster.Key{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the material does not match its fingerprint %s (altered outside atrest?)", ErrInvalid, doc.Fingerprint)}
	}
	return k, nil
}

// preservedRel is where PreserveKey keeps material found under a name
// that Vault already holds with other material: the fingerprint in the
// path gives it an identity of its own.
func preservedRel(k cluster.Key) string {
	return "preserved/" + k.Name + "/" + strings.TrimPrefix(k.Fingerprint(), "sha256:")
}

// preservedDoc is a preserved key: its material and where it was found.
type preservedDoc struct {
	keyDoc
	Source string `json:"source"` // "node cp-1's provider file"
}

// PreserveKey keeps k's material in Vault at preserved/<name>/<fingerprint>
// when it was found (source says where) under a name that Vault already
// holds with other material: etcd may hold values written with it, and
// the file it was found in may be its only copy. It is create-only and
// idempotent: the same material preserved again is not an error. The
// keyring does not list preserved keys; an operator resolves the conflict.
func (s *Store) PreserveKey(ctx context.Context, k cluster.Key, source string) (string, error) {
	rel := preservedRel(k)
	op := "preserve key " + k.Name
	if err := checkKey(k); err != nil {
		return "", &OpError{Op: op, Path: s.path("data", rel), Err: err}
	}
	doc := preservedDoc{keyDoc: keyDoc{
		Name: k.Name, Provider: k.Provider, Secret: base64.StdEncoding.EncodeToString(k.Secret),
		Fingerprint: k.Fingerprint(), Created: time.Now().UTC(),
	}, Source: source}
	_, err := s.kvCreate(ctx, op, rel, keyMaxVersions, doc)
	if errors.Is(err, ErrConflict) {
		// Already preserved: the path names the material.
		return s.path("data", rel), nil
	}
	if err != nil {
		return "", err
	}
	s.log.Warn("key material preserved: Vault holds other material under its name", "key", k, "source", source, "path", s.path("data", rel))
	return s.path("data", rel), nil
}

// NewKey generates a key for provider p (cluster.NewKey: 32 bytes from
// crypto/rand, an RKE-style name unique among the keyring's keys and every
// stored key), stores it with PutKey and returns it. The keyring does not
// list it yet: UpdateKeyring does that, after it is safely stored.
func (s *Store) NewKey(ctx context.Context, p cluster.Provider) (cluster.Key, error) {
	for range 3 {
		kr, err := s.Keyring(ctx)
		if err != nil {
			return cluster.Key{}, err
		}
		taken := kr.Names()
		stored, err := s.kvList(ctx, "list keys", "keys")
		if err != nil {
			return cluster.Key{}, err
		}
		taken = append(taken, stored...)
		refs, _, err := s.readRefs(ctx, "read snapshot references")
		if err != nil {
			return cluster.Key{}, err
		}
		taken = append(taken, slices.Collect(maps.Keys(refs.Destroying))...)
		k, err := cluster.NewKey(p, taken)
		if err != nil {
			return cluster.Key{}, err
		}
		// Another writer may take the same name between the list and the
		// write; PutKey's check-and-set catches that, and a new name is drawn.
		err = s.PutKey(ctx, k)
		if errors.Is(err, ErrExists) {
			continue
		}
		if err != nil {
			return cluster.Key{}, err
		}
		return k, nil
	}
	return cluster.Key{}, &OpError{Op: "generate key", Path: s.path("data", "keys"), Err: fmt.Errorf("%w: three fresh names were taken by other writers", ErrConflict)}
}

// DestroyKey deletes a key's material, every version and its metadata. It
// refuses (ErrReferenced) while a retained snapshot references the key or
// the keyring lists it as primary or reader. A key already gone is not an
// error. Hold the transition lock when calling it. The keyring is not
// changed: drop a retired entry with UpdateKeyring afterwards.
//
// The destruction is announced in the snapshot references first (with
// check-and-set), so that AddSnapshotRef cannot slip a reference to the
// key in between the check and the delete; an announcement left by a crash
// is finished by the next DestroyKey of the same key.
func (s *Store) DestroyKey(ctx context.Context, name string) error {
	op := "destroy key " + name
	p := s.path("metadata", keyRel(name))
	if err := checkKeyName(name); err != nil {
		return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w key name: %v", ErrInvalid, err)}
	}
	kr, err := s.Keyring(ctx)
	if err != nil {
		return err
	}
	if k, ok := kr.Find(name); ok && k.Role != RoleRetired {
		return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the keyring (version %d) lists it as %s: retire it first", ErrReferenced, kr.Version, k.Role)}
	}
	err = s.updateRefs(ctx, op, func(r *refsDoc) (bool, error) {
		if snaps := r.referencing(name); len(snaps) > 0 {
			return false, fmt.Errorf("%w by retained snapshots %v: release them (ReleaseSnapshotRef) when they are pruned", ErrReferenced, snaps)
		}
		if r.Destroying == nil {
			r.Destroying = map[string]time.Time{}
		}
		if _, ok := r.Destroying[name]; ok {
			return false, nil
		}
		r.Destroying[name] = time.Now().UTC()
		return true, nil
	})
	if err != nil {
		return err
	}
	unannounce := func(r *refsDoc) (bool, error) {
		if _, ok := r.Destroying[name]; !ok {
			return false, nil
		}
		delete(r.Destroying, name)
		return true, nil
	}
	if err := s.kvDestroy(ctx, op, keyRel(name)); err != nil {
		if errors.Is(err, ErrPermissionDenied) {
			// Refused, so nothing was deleted (the daemon's policy, say):
			// withdraw the announcement, and the key may be referenced again.
			if uerr := s.updateRefs(ctx, op, unannounce); uerr != nil {
				s.log.Warn("withdraw the announced destruction", "key_name", name, "err", uerr)
			}
		}
		return err
	}
	s.log.Info("key destroyed", "key_name", name)
	return s.updateRefs(ctx, op, unannounce)
}

// checkKey checks a key's name, provider and size.
func checkKey(k cluster.Key) error {
	if err := checkKeyName(k.Name); err != nil {
		return fmt.Errorf("%w key name: %v", ErrInvalid, err)
	}
	sizes := cluster.KeySizes(k.Provider)
	if sizes == nil {
		return fmt.Errorf("%w: key %s: provider %q is not one of %v", ErrInvalid, k.Name, k.Provider, cluster.KeyedProviders)
	}
	if !slices.Contains(sizes, len(k.Secret)) {
		return fmt.Errorf("%w: key %s: %s takes %v-byte keys, not %d bytes", ErrInvalid, k.Name, k.Provider, sizes, len(k.Secret))
	}
	return nil
}
