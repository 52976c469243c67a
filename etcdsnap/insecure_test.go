package etcdsnap

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A plaintext endpoint is refused before anything is dialled unless
// InsecureAllowHTTP allows it; then Dial warns, naming the setting.
func TestDialPlaintext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, Config{Endpoints: []string{"http://127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), `etcd endpoint "http://127.0.0.1:1" is plaintext`) || !strings.Contains(err.Error(), "etcd.insecureAllowHTTP") {
		t.Fatalf("plaintext endpoint: %v", err)
	}
	var logs bytes.Buffer
	_, err = Dial(ctx, Config{Endpoints: []string{"http://127.0.0.1:1"}, InsecureAllowHTTP: true, DialTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err == nil {
		t.Fatal("nothing listens on port 1, yet Dial succeeded")
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"INSECURE: etcd is reached in plaintext") || !strings.Contains(logs.String(), "setting=etcd.insecureAllowHTTP") {
		t.Errorf("no warning naming etcd.insecureAllowHTTP:\n%s", logs.String())
	}
}
