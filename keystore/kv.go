package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	vault "github.com/hashicorp/vault/api"
)

// How many versions Vault keeps of each kind of document. KV v2 uses the
// larger of the mount's max_versions and the path's, so these are floors
// that a stricter mount default (say max_versions=1) cannot undercut.
const (
	// Key material is written once (check-and-set 0) and read back at
	// version 1 only. If anyone ever writes a second version by hand, version
	// 1 must survive it: keep far more versions than such mistakes produce.
	keyMaxVersions = 100
	// The keyring changes at every journal step. Its history is only for
	// operators looking back at recent transitions (`vault kv get
	// -version=N`); nothing depends on old versions, because key material
	// lives at its own paths.
	keyringMaxVersions = 50
	// Snapshot references change once per snapshot saved or pruned.
	refsMaxVersions = 50
	// The lock is rewritten at every renewal; its history is noise.
	lockMaxVersions = 2
)

// entry is one read KV v2 document.
type entry struct {
	version int             // the version read; 0 when there is none
	data    json.RawMessage // nil when there is none
}

// kvRead reads the current version of rel (version 0) or the given one.
// A path that does not exist reads as an entry with version 0. A version
// that was deleted or destroyed is an error naming the way back, because
// treating it as absent would start the document afresh.
func (s *Store) kvRead(ctx context.Context, op, rel string, version int) (entry, error) {
	p := s.path("data", rel)
	var params map[string][]string
	if version > 0 {
		params = map[string][]string{"version": {strconv.Itoa(version)}}
	}
	sec, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().ReadWithDataWithContext(ctx, p, params)
	})
	if err != nil {
		return entry{}, &OpError{Op: op, Path: p, Err: classify(err, capRead, s.client.Address())}
	}
	if sec == nil || sec.Data == nil {
		return entry{}, nil
	}
	meta, _ := sec.Data["metadata"].(map[string]any)
	v, _ := jsonInt(meta["version"])
	data, _ := sec.Data["data"].(map[string]any)
	if data == nil {
		if meta == nil {
			return entry{}, nil
		}
		how := "deleted"
		fix := fmt.Sprintf("undelete it with `vault kv undelete -mount=%s -versions=%d %s/%s`", s.cfg.KVMount, v, s.base, rel)
		if d, _ := meta["destroyed"].(bool); d {
			how, fix = "destroyed", "it cannot be recovered from Vault"
		}
		return entry{}, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: version %d was %s outside atrest: %s", ErrInvalid, v, how, fix)}
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return entry{}, &OpError{Op: op, Path: p, Err: err}
	}
	return entry{version: v, data: raw}, nil
}

// kvWrite writes doc as the next version of rel, only if the current
// version is cas (0: only if there is none). A mismatch is ErrConflict and
// writes nothing. It returns the new version.
func (s *Store) kvWrite(ctx context.Context, op, rel string, cas int, doc any) (int, error) {
	p := s.path("data", rel)
	raw, err := json.Marshal(doc)
	if err != nil {
		return 0, &OpError{Op: op, Path: p, Err: err}
	}
	var data map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		return 0, &OpError{Op: op, Path: p, Err: err}
	}
	body := map[string]any{"options": map[string]any{"cas": cas}, "data": data}
	// A check-and-set write refused with 403 did not happen, so retrying
	// it after a fresh login (see call) cannot write twice.
	sec, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().WriteWithContext(ctx, p, body)
	})
	if err != nil {
		return 0, &OpError{Op: op, Path: p, Err: classify(err, capWrite, s.client.Address())}
	}
	if sec == nil || sec.Data == nil {
		return 0, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: Vault answered the write without a version: is %q a KV version 2 mount?", ErrInvalid, s.cfg.KVMount)}
	}
	v, ok := jsonInt(sec.Data["version"])
	if !ok {
		return 0, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: Vault answered the write without a version: is %q a KV version 2 mount?", ErrInvalid, s.cfg.KVMount)}
	}
	// delete_version_after on the mount would soft-delete this version
	// later: fatal for key material and for the keyring.
	if dt, _ := sec.Data["deletion_time"].(string); dt != "" {
		return v, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: Vault will delete this version at %s because the mount %q (or the path) sets delete_version_after: "+
			"atrest's documents must not expire; set it to 0 with `vault write %s/config delete_version_after=0s`", ErrInvalid, dt, s.cfg.KVMount, s.cfg.KVMount)}
	}
	return v, nil
}

// kvSetMeta sets how many versions rel keeps and requires check-and-set on
// every write to it, so that a plain `vault kv put` cannot clobber it.
func (s *Store) kvSetMeta(ctx context.Context, op, rel string, maxVersions int) error {
	p := s.path("metadata", rel)
	body := map[string]any{"max_versions": maxVersions, "cas_required": true}
	_, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().WriteWithContext(ctx, p, body)
	})
	if err != nil {
		return &OpError{Op: op, Path: p, Err: classify(err, capWrite, s.client.Address())}
	}
	return nil
}

// kvCreate writes the first version of rel: its metadata first (so the
// version limit and cas_required are in force from the first version on),
// then the data with check-and-set 0. Stopping between the two leaves
// metadata without data, which reads as absent.
func (s *Store) kvCreate(ctx context.Context, op, rel string, maxVersions int, doc any) (int, error) {
	if err := s.kvSetMeta(ctx, op, rel, maxVersions); err != nil {
		return 0, err
	}
	return s.kvWrite(ctx, op, rel, 0, doc)
}

// kvPut writes doc at rel against version cas, creating it when cas is 0.
func (s *Store) kvPut(ctx context.Context, op, rel string, cas, maxVersions int, doc any) (int, error) {
	if cas == 0 {
		return s.kvCreate(ctx, op, rel, maxVersions, doc)
	}
	return s.kvWrite(ctx, op, rel, cas, doc)
}

// kvDestroy deletes every version of rel and its metadata.
func (s *Store) kvDestroy(ctx context.Context, op, rel string) error {
	p := s.path("metadata", rel)
	_, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().DeleteWithContext(ctx, p)
	})
	if err != nil {
		return &OpError{Op: op, Path: p, Err: classify(err, capDelete, s.client.Address())}
	}
	return nil
}

// kvList lists the documents under rel/.
func (s *Store) kvList(ctx context.Context, op, rel string) ([]string, error) {
	p := s.path("metadata", rel) + "/"
	sec, err := s.call(ctx, func(ctx context.Context) (*vault.Secret, error) {
		return s.client.Logical().ListWithContext(ctx, p)
	})
	if err != nil {
		return nil, &OpError{Op: op, Path: p, Err: classify(err, capList, s.client.Address())}
	}
	if sec == nil || sec.Data == nil {
		return nil, nil
	}
	keys, _ := sec.Data["keys"].([]any)
	var out []string
	for _, k := range keys {
		if name, ok := k.(string); ok {
			out = append(out, name)
		}
	}
	return out, nil
}

// readDoc reads the current version of the document at rel into v and
// returns that version; 0 when there is none, v then left as it is.
func (s *Store) readDoc(ctx context.Context, op, rel string, v any) (int, error) {
	e, err := s.kvRead(ctx, op, rel, 0)
	if err != nil {
		return 0, err
	}
	if e.version > 0 {
		if err := s.decode(op, rel, e, v); err != nil {
			return 0, err
		}
	}
	return e.version, nil
}

// docRetries bounds the read-modify-write retries of a document that
// concurrent, unrelated changes share (another snapshot recorded, a
// revision recorded by another process): a conflict there only means the
// change is redone on what is there now.
const docRetries = 5

// updateDoc applies change to the document read reads, and writes it at
// rel with check-and-set against the version read, redoing both on a
// conflict. change reports whether it changed anything; an error from it
// aborts with nothing written.
func updateDoc[T any](ctx context.Context, s *Store, op, rel string, maxVersions int, read func(context.Context, string) (*T, int, error), change func(*T) (bool, error)) error {
	p := s.path("data", rel)
	for range docRetries {
		doc, v, err := read(ctx, op)
		if err != nil {
			return err
		}
		changed, err := change(doc)
		if err != nil {
			return &OpError{Op: op, Path: p, Err: err}
		}
		if !changed {
			return nil
		}
		_, err = s.kvPut(ctx, op, rel, v, maxVersions, doc)
		if errors.Is(err, ErrConflict) {
			continue
		}
		return err
	}
	return &OpError{Op: op, Path: p, Err: fmt.Errorf("%w %d times in a row", ErrConflict, docRetries)}
}

// decode unmarshals a read document, naming the path on failure.
func (s *Store) decode(op, rel string, e entry, v any) error {
	if err := json.Unmarshal(e.data, v); err != nil {
		return &OpError{Op: op, Path: s.path("data", rel), Err: fmt.Errorf("%w: version %d is not a document atrest wrote: %v", ErrInvalid, e.version, err)}
	}
	return nil
}

// jsonInt reads a number the Vault client decoded as json.Number.
func jsonInt(v any) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	case float64:
		return int(n), true
	case int:
		return n, true
	}
	return 0, false
}
