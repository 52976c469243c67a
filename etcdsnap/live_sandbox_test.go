//go:build sandbox

package etcdsnap_test

import (
	"fmt"
	"maps"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/internal/leaktest"
)

// TestLiveCensus: a live census of real etcd agrees with a full census
// after puts, rewrites under other keys and deletes, KMS v2 key_ids
// included; reading it reads nothing from etcd; what it reads follows the
// writes; a cross-check finds nothing wrong.
func TestLiveCensus(t *testing.T) {
	w := leaktest.New(t)
	ctx := testCtx(t, 3*time.Minute)
	c := dial(t, etcdConfig(w.Logger()))
	raw, err := sb.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	const registry = "/livetest"
	key := func(i int) string { return fmt.Sprintf("%s/secrets/ns/s-%03d", registry, i) }
	kmsValue := func(keyID string) string {
		b, err := proto.Marshal(&kmstypes.EncryptedObject{EncryptedData: make([]byte, 100), KeyID: keyID, EncryptedDEKSource: []byte("vault:v1:x")})
		if err != nil {
			t.Fatal(err)
		}
		return "k8s:enc:kms:v2:atrest-vault-transit:" + string(b)
	}
	for i := range 60 {
		v := "k8s\x00plain"
		if i%2 == 0 {
			v = "k8s:enc:aescbc:v1:k-one:" + string(make([]byte, 200))
		}
		if _, err := raw.Put(ctx, key(i), v); err != nil {
			t.Fatal(err)
		}
	}
	live := c.NewLiveCensus(registry)
	defer live.Close()
	same := func(what string) {
		t.Helper()
		var got, want etcdsnap.Census
		var gotIDs, wantIDs etcdsnap.KeyIDs
		deadline := time.Now().Add(10 * time.Second)
		for {
			if got, gotIDs, err = live.Census(ctx, []string{"secrets"}); err != nil {
				t.Fatal(err)
			}
			if want, wantIDs, err = c.CensusKeyIDs(ctx, registry, []string{"secrets"}, 7); err != nil {
				t.Fatal(err)
			}
			if maps.Equal(got["secrets"], want["secrets"]) && reflect.DeepEqual(gotIDs, wantIDs) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: live census %v %v, full census %v %v", what, got, gotIDs, want, wantIDs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	same("at the start")

	// Idle: reading it reads nothing from etcd.
	_, before := c.ReadBytes()
	for range 20 {
		if _, _, err := live.Census(ctx, []string{"secrets"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, after := c.ReadBytes(); after != before {
		t.Errorf("20 reads of an idle live census read %d bytes from etcd", after-before)
	}

	// Rewritten under another key, under KMS v2 with two key_ids, deleted,
	// added: what it reads is the events.
	for i := range 10 {
		if _, err := raw.Put(ctx, key(i), "k8s:enc:aescbc:v1:k-two:"+string(make([]byte, 200))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 10; i < 20; i++ {
		if _, err := raw.Put(ctx, key(i), kmsValue(fmt.Sprintf("transit/k:v%d", 1+i%2))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 20; i < 25; i++ {
		if _, err := raw.Delete(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 100; i < 105; i++ {
		if _, err := raw.Put(ctx, key(i), "{\"kind\":\"Secret\"}"); err != nil {
			t.Fatal(err)
		}
	}
	same("after the writes")
	got, ids, err := live.Census(ctx, []string{"secrets"})
	if err != nil {
		t.Fatal(err)
	}
	if got["secrets"]["aescbc:v1:k-two"] != 10 || ids["secrets"]["kms:v2:atrest-vault-transit"]["transit/k:v2"] != 5 {
		t.Errorf("after the writes: %v %v", got, ids)
	}
	if n, err := live.CrossCheck(ctx); err != nil || n != 0 {
		t.Errorf("cross-check: %d wrong, %v", n, err)
	}
	st := live.Stats()
	if st.Fulls != 1 || st.Events != 30 || st.Mismatches != 0 {
		t.Errorf("stats %+v: want 1 full census, 30 events, no mismatch", st)
	}
}
