package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"
)

// MaxProviderFileSize bounds what is read from a node: an
// EncryptionConfiguration is a few kilobytes.
const MaxProviderFileSize = 1 << 20

// ProviderFile is the encryption provider file on a node, as read. Data
// holds key material: ProviderFile prints, logs and marshals without it.
type ProviderFile struct {
	Present bool
	Data    []byte // the file's bytes; key material
	SHA256  string // hex sha256 of Data; "" when absent
	// ModTime is when the file was last written, by the node's clock (the
	// clock Docker's StartedAt uses too); zero when unknown.
	ModTime time.Time
}

func newProviderFile(data []byte) ProviderFile {
	sum := sha256.Sum256(data)
	return ProviderFile{Present: true, Data: data, SHA256: hex.EncodeToString(sum[:])}
}

func (f ProviderFile) String() string {
	if !f.Present {
		return "absent"
	}
	return fmt.Sprintf("present, %d bytes, sha256 %s", len(f.Data), f.SHA256)
}

// GoString keeps the bytes out of %#v.
func (f ProviderFile) GoString() string { return "controlplane.ProviderFile{" + f.String() + "}" }

// LogValue logs presence, size and hash only.
func (f ProviderFile) LogValue() slog.Value {
	if !f.Present {
		return slog.GroupValue(slog.Bool("present", false))
	}
	return slog.GroupValue(slog.Bool("present", true), slog.Int("bytes", len(f.Data)), slog.String("sha256", f.SHA256))
}

// MarshalJSON keeps the bytes out of JSON status and logs.
func (f ProviderFile) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Present bool   `json:"present"`
		Bytes   int    `json:"bytes,omitempty"`
		SHA256  string `json:"sha256,omitempty"`
	}{f.Present, len(f.Data), f.SHA256})
}

// Exit codes of the file scripts that are answers, not failures.
const (
	exitAbsent = 40 // the file does not exist
	exitNoDir  = 41 // the file's directory does not exist
)

// ReadProviderFile reads the provider file on the node, and when it was
// last written: the first line of the script's output is the file's mtime
// in seconds since the epoch (with nanoseconds where GNU date gives them),
// the rest is the file.
func (n *Node) ReadProviderFile(ctx context.Context) (ProviderFile, error) {
	const op = "read provider file"
	r, err := n.run(ctx, fmt.Sprintf(`f=%s
if [ ! -e "$f" ] && [ ! -L "$f" ]; then exit %d; fi
date -r "$f" +%%s.%%N 2>/dev/null || stat -L -c %%Y -- "$f" || echo 0
exec cat -- "$f"`, shellQuote(n.file), exitAbsent), nil, MaxProviderFileSize+64)
	if err != nil {
		return ProviderFile{}, n.sshErr(op+" "+n.file, err)
	}
	switch {
	case r.code == exitAbsent:
		return ProviderFile{}, nil
	case r.code != 0:
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	case r.overflow:
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, fmt.Errorf("larger than %d bytes: not an EncryptionConfiguration", MaxProviderFileSize))
	}
	stamp, data, ok := bytes.Cut(r.stdout, []byte("\n"))
	if !ok {
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, errors.New("no modification time in the answer"))
	}
	if len(data) > MaxProviderFileSize {
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, fmt.Errorf("larger than %d bytes: not an EncryptionConfiguration", MaxProviderFileSize))
	}
	f := newProviderFile(data)
	f.ModTime = parseEpoch(string(stamp))
	return f, nil
}

// parseEpoch reads "SECONDS[.NANOSECONDS]"; the zero time when it cannot.
func parseEpoch(s string) time.Time {
	secs, frac, _ := strings.Cut(strings.TrimSpace(s), ".")
	sec, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || sec <= 0 {
		return time.Time{}
	}
	var nsec int64
	if frac != "" {
		frac = (frac + "000000000")[:9]
		if nsec, err = strconv.ParseInt(frac, 10, 64); err != nil {
			nsec = 0
		}
	}
	return time.Unix(sec, nsec).UTC()
}

// WriteProviderFile replaces the provider file on the node atomically: it
// writes a temporary file in the same directory with mode 0600, fsyncs it,
// renames it over the file and fsyncs the directory, then reads the file
// back and compares its sha256 with data's. A crash leaves the old file or
// the new one, never a mix.
func (n *Node) WriteProviderFile(ctx context.Context, data []byte) error {
	op := "write provider file " + n.file
	if len(data) == 0 || len(data) > MaxProviderFileSize {
		return nodeErr(n.name, op, nil, fmt.Errorf("refusing to write %d bytes: a provider file has 1 to %d", len(data), MaxProviderFileSize))
	}
	dir, base := path.Split(n.file)
	// mktemp creates the file 0600; umask covers chmod-less systems. A
	// `sync FILE` that cannot fsync one file falls back to syncing all.
	r, err := n.run(ctx, fmt.Sprintf(`set -eu
umask 077
f=%s
d=%s
[ -d "$d" ] || { echo "directory $d does not exist on the node" >&2; exit %d; }
tmp=$(mktemp "$d/.%s.atrest.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod 0600 "$tmp"
sync -- "$tmp" 2>/dev/null || sync
mv -f -- "$tmp" "$f"
trap - EXIT
sync -- "$d" 2>/dev/null || sync`, shellQuote(n.file), shellQuote(path.Clean(dir)), exitNoDir, base), &midStream{data: data, fail: func() { n.failpoint(FailpointWriteMidStream) }}, 4096)
	if err != nil {
		return n.sshErr(op, err)
	}
	if r.code != 0 {
		return nodeErr(n.name, op, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	}
	got, err := n.ReadProviderFile(ctx)
	if err != nil {
		return nodeErr(n.name, op, nil, fmt.Errorf("read back: %w", err))
	}
	want := newProviderFile(data)
	if !got.Present || got.SHA256 != want.SHA256 {
		return nodeErr(n.name, op, nil, fmt.Errorf("read back %s, wrote sha256 %s", got, want.SHA256))
	}
	n.log.Info("wrote provider file", "path", n.file, "file", want)
	return nil
}

// RemoveProviderFile removes the provider file from the node; a missing
// file is fine.
func (n *Node) RemoveProviderFile(ctx context.Context) error {
	op := "remove provider file " + n.file
	r, err := n.run(ctx, fmt.Sprintf(`set -eu
f=%s
d=%s
rm -f -- "$f"
sync -- "$d" 2>/dev/null || sync`, shellQuote(n.file), shellQuote(path.Dir(n.file))), nil, 4096)
	if err != nil {
		return n.sshErr(op, err)
	}
	if r.code != 0 {
		return nodeErr(n.name, op, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	}
	n.log.Info("removed provider file", "path", n.file)
	return nil
}
