package controlplane

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runWriteScript runs the write script locally, as the node would, for a
// file in dir: it declares want's size and hash, and sends sent.
func runWriteScript(t *testing.T, file string, want, sent []byte, token uint64) (int, string) {
	t.Helper()
	dir, base := filepath.Split(file)
	sum := sha256.Sum256(want)
	script := fmt.Sprintf(writeScript, shellQuote(file), shellQuote(filepath.Clean(dir)), len(want), hex.EncodeToString(sum[:]), token, exitNoDir, base, base)
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdin = bytes.NewReader(sent)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// needSha256sum skips a script test on a machine without coreutils'
// sha256sum, which every node has; in CI it fails instead, since CI must
// run them all.
func needSha256sum(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("sha256sum"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sha256sum is not installed: the node scripts need coreutils")
		}
		t.Skip("no sha256sum here")
	}
}

func TestWriteScript(t *testing.T) {
	needSha256sum(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "encryption.yaml")
	old, full := []byte("old\n"), bytes.Repeat([]byte("new\n"), 1000)
	mustFile := func(want []byte) {
		t.Helper()
		if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("file holds %d bytes (%v), want %d", len(got), err, len(want))
		}
	}
	if code, msg := runWriteScript(t, file, old, old, 0); code != 0 {
		t.Fatalf("write: %d %s", code, msg)
	}
	mustFile(old)

	// Half the bytes, or other bytes of the same size: refused.
	for _, sent := range [][]byte{full[:len(full)/2], bytes.Repeat([]byte("NEW\n"), 1000)} {
		if code, msg := runWriteScript(t, file, full, sent, 0); code != exitIncomplete {
			t.Errorf("cut write: exit %d %s", code, msg)
		}
		mustFile(old)
	}

	// Another writer's leftover is removed by the write that commits.
	stale := filepath.Join(dir, ".encryption.yaml.atrest.stale1")
	if err := os.WriteFile(stale, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, msg := runWriteScript(t, file, full, full, 5); code != 0 {
		t.Fatalf("write: %d %s", code, msg)
	}
	mustFile(full)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover temporary file kept: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, fenceFile)); string(got) != "5\n" {
		t.Errorf("fence file holds %q", got)
	}

	// A smaller token than the node has seen is refused; 0 is not checked.
	if code, msg := runWriteScript(t, file, old, old, 4); code != exitFenced {
		t.Errorf("fenced write: exit %d %s", code, msg)
	}
	mustFile(full)
	if code, msg := runWriteScript(t, file, old, old, 0); code != 0 {
		t.Errorf("unfenced write: exit %d %s", code, msg)
	}
	if code, msg := runWriteScript(t, file, full, full, 12345678901); code != 0 {
		t.Errorf("greater token: exit %d %s", code, msg)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, fenceFile)); string(got) != "12345678901\n" {
		t.Errorf("fence file holds %q", got)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		switch e.Name() {
		case "encryption.yaml", fenceFile, lockFile:
		default:
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// runReadScript runs the read script locally, as the node would, for file,
// telling it the caller holds held (a sha256, or "none").
func runReadScript(t *testing.T, file, held string) (int, []byte) {
	t.Helper()
	cmd := exec.Command("sh", "-c", fmt.Sprintf(readScript, shellQuote(file), exitAbsent, held))
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out
}

// The node sends the file's bytes only when they are not those the caller
// holds: an unchanged file puts no key material on the wire (nor in a
// sudo I/O log).
func TestReadScriptSendsOnlyAChangedFile(t *testing.T) {
	needSha256sum(t)
	file := filepath.Join(t.TempDir(), "encryption.yaml")
	if code, _ := runReadScript(t, file, "none"); code != exitAbsent {
		t.Fatalf("absent file: exit %d", code)
	}
	content := []byte("kind: EncryptionConfiguration\nsecret: c2VjcmV0\n")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runReadScript(t, file, "none")
	first, err := parseRead(out, ProviderFile{})
	if code != 0 || err != nil || !first.fetched || !bytes.Equal(first.Data, content) || first.ModTime.IsZero() {
		t.Fatalf("first read: exit %d, %v, fetched %v, %q", code, err, first.fetched, first.Data)
	}
	code, out = runReadScript(t, file, first.SHA256)
	if bytes.Contains(out, []byte("c2VjcmV0")) {
		t.Errorf("an unchanged file was sent again:\n%s", out)
	}
	again, err := parseRead(out, first.ProviderFile)
	if code != 0 || err != nil || again.fetched || !bytes.Equal(again.Data, content) || again.SHA256 != first.SHA256 {
		t.Fatalf("second read: exit %d, %v, fetched %v", code, err, again.fetched)
	}
	changed := []byte("kind: EncryptionConfiguration\nsecret: b3RoZXI=\n")
	if err := os.WriteFile(file, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	_, out = runReadScript(t, file, first.SHA256)
	third, err := parseRead(out, first.ProviderFile)
	if err != nil || !third.fetched || !bytes.Equal(third.Data, changed) {
		t.Fatalf("after a change: %v, fetched %v, %q", err, third.fetched, third.Data)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, out = runReadScript(t, file, third.SHA256)
	empty, err := parseRead(out, third.ProviderFile)
	if err != nil || !empty.fetched || len(empty.Data) != 0 || !empty.Present {
		t.Fatalf("an empty file: %v, %+v", err, empty)
	}
}

func TestParseRead(t *testing.T) {
	for _, out := range []string{"", "1700000000\n", "1700000000\nnot-a-sum\nx", "1700000000\n" + strings.Repeat("A", 64) + "\n"} {
		if _, err := parseRead([]byte(out), ProviderFile{}); err == nil {
			t.Errorf("parseRead(%q) accepted it", out)
		}
	}
}
