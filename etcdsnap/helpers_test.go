package etcdsnap

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"
)

// boltLike returns pages of 4 KiB that start like a bolt database, followed
// by their sha256 as etcd appends it: the shape of a snapshot stream.
func boltLike(t testing.TB, pages int) []byte {
	t.Helper()
	db := make([]byte, pages*4096)
	if _, err := rand.Read(db); err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(db[boltMagicOff:], boltMagic)
	sum := sha256.Sum256(db)
	return append(db, sum[:]...)
}

func testManifest(name string) Manifest {
	return Manifest{
		Format: ManifestFormat, Name: name, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Reason: "manual", KeyringVersion: 3, Resources: []string{"secrets"},
		Keys: []KeyRef{{Name: "k-abcde", Provider: "aescbc", Fingerprint: "sha256:0123456789abcdef0123456789abcdef"}},
	}
}
