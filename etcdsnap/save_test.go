package etcdsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/mem"
)

func TestStreamCheck(t *testing.T) {
	good := boltLike(t, 3)
	fileSum := sha256.Sum256(good)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name    string
		stream  []byte
		wantErr string
	}{
		{"whole", good, ""},
		{"truncated by one byte", good[:len(good)-1], "truncated"},
		{"truncated to whole pages", good[:len(good)-32], "truncated"},
		{"trailer missing and a page short", good[:4096*2], "truncated"},
		{"empty", nil, "truncated"},
		{"flipped data byte", flip(5000), "hashes to"},
		{"flipped trailer byte", flip(len(good) - 3), "hashes to"},
		{"not bolt", func() []byte {
			b := bytes.Clone(good[:len(good)-32])
			b[boltMagicOff] = 0
			s := sha256.Sum256(b)
			return append(b, s[:]...)
		}(), "not a bolt database"},
	}
	// Chunk sizes around the 32-byte window exercise every path of Write.
	chunks := []int{1, 7, 31, 32, 33, 4096, 1 << 20}
	for _, tt := range tests {
		for _, chunk := range chunks {
			c := newStreamCheck()
			for rest := tt.stream; len(rest) > 0; {
				n := min(chunk, len(rest))
				c.Write(rest[:n])
				rest = rest[n:]
			}
			sum, err := c.result()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("%s in chunks of %d: %v", tt.name, chunk, err)
				} else if sum != hex.EncodeToString(fileSum[:]) {
					t.Errorf("%s in chunks of %d: sha256 %s, want the file's %x", tt.name, chunk, sum, fileSum)
				}
				continue
			}
			if !errors.Is(err, ErrVerify) || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
				t.Errorf("%s in chunks of %d: error %v, want ErrVerify saying %q", tt.name, chunk, err, tt.wantErr)
			}
		}
	}
}

// A stream that does not verify is never published: no <name>.db, no part
// file, nothing in List.
func TestReceiveRefusesBadStream(t *testing.T) {
	ctx := context.Background()
	good := boltLike(t, 2)
	corrupt := bytes.Clone(good)
	corrupt[100] ^= 0xff
	tests := []struct {
		name string
		r    io.Reader
	}{
		{"corrupted", bytes.NewReader(corrupt)},
		{"truncated", bytes.NewReader(good[:len(good)-10])},
		{"broken mid-stream", io.MultiReader(bytes.NewReader(good[:5000]), iotest.ErrReader(errors.New("connection reset")))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			d, _ := NewLocalDir(dir)
			if _, _, err := receive(ctx, d, "snap", tt.r); err == nil {
				t.Fatal("receive accepted it")
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Errorf("left behind: %v", entries)
			}
		})
	}

	dir := t.TempDir()
	d, _ := NewLocalDir(dir)
	n, sum, err := receive(ctx, d, "snap", bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(good)
	if n != int64(len(good)) || sum != hex.EncodeToString(want[:]) {
		t.Errorf("receive = %d, %s", n, sum)
	}
	onDisk, _ := os.ReadFile(filepath.Join(dir, "snap.db"))
	if !bytes.Equal(onDisk, good) {
		t.Error("the file is not the stream, trailer included")
	}
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, _ := NewLocalDir(dir)
	good := boltLike(t, 4)
	n, sum, err := receive(ctx, d, "snap", bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	m := testManifest("snap")
	m.Size, m.SHA256 = n, sum
	if err := writeManifest(ctx, d, m); err != nil {
		t.Fatal(err)
	}
	if err := Verify(ctx, d, "snap"); err != nil {
		t.Fatalf("Verify of a good snapshot: %v", err)
	}
	db := filepath.Join(dir, "snap.db")
	tamper := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"flipped byte", func() []byte { b := bytes.Clone(good); b[9000] ^= 1; return b }(), "hashes to"},
		{"truncated", good[:len(good)-100], "truncated"},
		// Still 32 past a sector boundary: only the hash can tell.
		{"truncated by a sector", good[:len(good)-512], "hashes to"},
		{"replaced by another valid snapshot", boltLike(t, 4), "its manifest says"},
	}
	for _, tt := range tamper {
		if err := os.WriteFile(db, tt.data, 0o600); err != nil {
			t.Fatal(err)
		}
		err := Verify(ctx, d, "snap")
		if !errors.Is(err, ErrVerify) || !bytes.Contains([]byte(err.Error()), []byte(tt.wantErr)) {
			t.Errorf("%s: Verify = %v, want ErrVerify saying %q", tt.name, err, tt.wantErr)
		}
	}
	os.Remove(db)
	if err := Verify(ctx, d, "snap"); err == nil {
		t.Error("Verify without the file succeeded")
	}
	if err := Verify(ctx, d, "missing"); err == nil {
		t.Error("Verify of an unknown snapshot succeeded")
	}
}

// A member that stops sending mid-stream must not hang Save: the idle
// timer cancels the stream's context, with the reason as its cause.
func TestIdleReaderCancelsAStalledStream(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("first chunk"))
		<-ctx.Done() // then nothing, as a stuck member
		pw.CloseWithError(ctx.Err())
	}()
	ir := newIdleReader(pr, 50*time.Millisecond, cancel)
	defer ir.stop()
	buf := make([]byte, 64)
	if n, err := ir.Read(buf); err != nil || string(buf[:n]) != "first chunk" {
		t.Fatalf("first read: %q %v", buf[:n], err)
	}
	if _, err := ir.Read(buf); err == nil {
		t.Fatal("a stalled stream kept reading")
	}
	if cause := context.Cause(ctx); cause == nil || !strings.Contains(cause.Error(), "no snapshot data for 50ms") {
		t.Errorf("cause = %v", cause)
	}
}

// The snapshot codec decodes a message split over several buffers (as
// HTTP/2 frames deliver a 32 KiB blob) exactly as gRPC's own would.
func TestSnapshotCodec(t *testing.T) {
	blob := boltLike(t, 8)[:32<<10]
	in := &pb.SnapshotResponse{RemainingBytes: 12345, Blob: blob, Version: "3.6.0"}
	wire, err := protoCodec.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	flat := wire.Materialize()
	var split mem.BufferSlice
	for _, part := range [][]byte{flat[:100], flat[100 : 16<<10], flat[16<<10:]} {
		split = append(split, mem.SliceBuffer(part))
	}
	var out pb.SnapshotResponse
	codec := snapshotCodec{pool: snapshotPool, read: &readCounter{}}
	if err := codec.Unmarshal(split, &out); err != nil {
		t.Fatal(err)
	}
	if out.RemainingBytes != in.RemainingBytes || out.Version != in.Version || !bytes.Equal(out.Blob, blob) {
		t.Errorf("decoded %d/%q/%d bytes", out.RemainingBytes, out.Version, len(out.Blob))
	}
	// What it decodes is counted, as a snapshot's.
	if got := codec.read.snapshot.Load(); got != int64(len(flat)) || codec.read.other.Load() != 0 {
		t.Errorf("counted %d snapshot bytes and %d others, want %d and 0", got, codec.read.other.Load(), len(flat))
	}
	if err := codec.Unmarshal(split, "not a message"); err == nil {
		t.Error("decoded into a string")
	}
}
