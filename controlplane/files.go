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
	"regexp"
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

// readScript prints the provider file's modification time (seconds since
// the epoch, with nanoseconds where GNU date gives them) and its sha256,
// one to a line, then its bytes, unless their sha256 is the one given: the
// one the caller holds already. A file that has not changed sends no key
// material, so a host that logs sudo's I/O does not record every key on
// every observation.
const readScript = `f=%s
if [ ! -e "$f" ] && [ ! -L "$f" ]; then exit %d; fi
date -r "$f" +%%s.%%N 2>/dev/null || stat -L -c %%Y -- "$f" || echo 0
sum=$(sha256sum < "$f") || exit 1
sum=${sum%%%% *}
echo "$sum"
[ "$sum" = %s ] && exit 0
exec cat -- "$f"`

// ReadProviderFile reads the provider file on the node, and when it was
// last written. The node sends the file's sha256 first, and its bytes only
// when they are not those of the last read (readScript).
func (n *Node) ReadProviderFile(ctx context.Context) (ProviderFile, error) {
	const op = "read provider file"
	n.fileMu.Lock()
	defer n.fileMu.Unlock()
	held := "none"
	if n.lastFile.Present {
		held = n.lastFile.SHA256
	}
	r, err := n.run(ctx, fmt.Sprintf(readScript, shellQuote(n.file), exitAbsent, held), nil, MaxProviderFileSize+128)
	if err != nil {
		return ProviderFile{}, n.sshErr(op+" "+n.file, err)
	}
	switch {
	case r.code == exitAbsent:
		n.lastFile = ProviderFile{}
		return ProviderFile{}, nil
	case r.code != 0:
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	case r.overflow:
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, fmt.Errorf("larger than %d bytes: not an EncryptionConfiguration", MaxProviderFileSize))
	}
	f, err := parseRead(r.stdout, n.lastFile)
	if err != nil {
		return ProviderFile{}, nodeErr(n.name, op+" "+n.file, nil, err)
	}
	n.lastFile = f.ProviderFile
	n.fileReads++
	if f.fetched {
		n.fileFetches++
	}
	return f.ProviderFile, nil
}

// readFile is a ProviderFile read, and whether its bytes came this time.
type readFile struct {
	ProviderFile
	fetched bool
}

// parseRead reads readScript's answer, given what the caller held when it
// asked.
func parseRead(out []byte, held ProviderFile) (readFile, error) {
	stamp, rest, ok := bytes.Cut(out, []byte("\n"))
	if !ok {
		return readFile{}, errors.New("no modification time in the answer")
	}
	sum, data, ok := bytes.Cut(rest, []byte("\n"))
	if !ok || !sha256RE.Match(sum) {
		return readFile{}, errors.New("no sha256 in the answer")
	}
	var f readFile
	if held.Present && string(sum) == held.SHA256 {
		f.ProviderFile = held
	} else {
		if len(data) > MaxProviderFileSize {
			return readFile{}, fmt.Errorf("larger than %d bytes: not an EncryptionConfiguration", MaxProviderFileSize)
		}
		// The bytes' own hash counts: the file may have changed between
		// the hash and the copy.
		f.ProviderFile, f.fetched = newProviderFile(data), true
	}
	f.ModTime = parseEpoch(string(stamp))
	return f, nil
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

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

// Exit codes of the write and remove scripts that refuse.
const (
	exitIncomplete = 42 // the bytes received are not those sent
	exitSuperseded = 43 // a later write removed this one's temporary file
	exitFenced     = 44 // the node has seen a greater fence token
	exitBadFence   = 45 // the fence token file holds no number
)

// Files atrest keeps beside the provider file.
const (
	lockFile  = ".atrest-lock"  // flock(1)ed around every commit
	fenceFile = ".atrest-fence" // the greatest fence token seen
)

// lockAndFence is the shell that starts a commit in directory $d: it takes
// the directory's lock (held until the script exits; without flock(1) on
// the node there is no lock) and, for a token other than 0, refuses when
// the node has seen a greater token and records a greater one. The lock
// is not taken before, so a sender that stalls holds no lock.
const lockAndFence = `if command -v flock >/dev/null 2>&1; then
	exec 9>>"$d/` + lockFile + `"
	flock 9
fi
if [ "$token" -gt 0 ]; then
	fence="$d/` + fenceFile + `"
	held=0
	if [ -s "$fence" ]; then held=$(cat -- "$fence"); fi
	case $held in ''|*[!0-9]*) echo "fence token file $fence holds no number" >&2; exit 45;; esac
	if [ "$held" -gt "$token" ]; then
		echo "the node has seen fence token $held, greater than this run's $token: a newer atrest holds the lock" >&2
		exit 44
	fi
	if [ "$held" -lt "$token" ]; then
		printf '%%s\n' "$token" >"$fence.tmp"
		mv -f -- "$fence.tmp" "$fence"
	fi
fi
`

// writeScript writes stdin to $f through a temporary file in the same
// directory: only bytes whose count and sha256 are those sent are renamed
// over the file, under the directory's lock, and only if no later write
// has removed the temporary file since; every other writer's temporary
// file is removed then, so an older write still in flight cannot land
// after this one (or after a rollback).
const writeScript = `set -eu
umask 077
f=%s
d=%s
size=%d
sum=%s
token=%d
[ -d "$d" ] || { echo "directory $d does not exist on the node" >&2; exit %d; }
tmp=$(mktemp "$d/.%s.atrest.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
chmod 0600 "$tmp"
sync -- "$tmp" 2>/dev/null || sync
` + lockAndFence + `[ -e "$tmp" ] || { echo "a later write removed this one's temporary file: it is superseded" >&2; exit 43; }
got=$(wc -c <"$tmp")
got=$((got + 0))
if [ "$got" -ne "$size" ]; then
	echo "received $got of the $size bytes sent: the stream was cut short" >&2
	exit 42
fi
got=$(sha256sum <"$tmp")
got=${got%%%% *}
if [ "$got" != "$sum" ]; then
	echo "received bytes with sha256 $got, not those sent" >&2
	exit 42
fi
for o in "$d"/.%s.atrest.*; do
	if [ "$o" != "$tmp" ]; then rm -f -- "$o"; fi
done
mv -f -- "$tmp" "$f"
trap - EXIT
sync -- "$d" 2>/dev/null || sync`

// writeAtomic replaces file on the node with data, as writeScript says;
// op names the operation in errors.
func (n *Node) writeAtomic(ctx context.Context, op, file string, data []byte) error {
	if err := checkFence(ctx, "write "+file); err != nil {
		return nodeErr(n.name, op, nil, err)
	}
	token, err := fenceToken(ctx)
	if err != nil {
		return nodeErr(n.name, op, ErrFenced, err)
	}
	dir, base := path.Split(file)
	sum := sha256.Sum256(data)
	script := fmt.Sprintf(writeScript, shellQuote(file), shellQuote(path.Clean(dir)), len(data), hex.EncodeToString(sum[:]), token, exitNoDir, base, base)
	r, err := n.run(ctx, script, &midStream{data: data, fail: func() { n.failpoint(FailpointWriteMidStream) }}, 4096)
	if err != nil {
		return n.sshErr(op, fmt.Errorf("%w (the file is either the old one or the new one, whole)", err))
	}
	return n.scriptErr(op, r)
}

// scriptErr turns the exit status of a write or remove script into an
// error naming the node and the operation.
func (n *Node) scriptErr(op string, r *result) error {
	switch r.code {
	case 0:
		return nil
	case exitIncomplete:
		return nodeErr(n.name, op, nil, fmt.Errorf("%s; the file was left as it was", r.stderr))
	case exitSuperseded:
		return nodeErr(n.name, op, nil, fmt.Errorf("%s; the file was left as the later write made it", r.stderr))
	case exitFenced:
		n.log.Error("FENCED: a newer atrest holds the lock; stopping here and leaving the node to it", "op", op, "error", r.stderr)
		return nodeErr(n.name, op, ErrFenced, fmt.Errorf("%s; the file was left as it was", r.stderr))
	default:
		return nodeErr(n.name, op, nil, fmt.Errorf("exit status %d: %s", r.code, r.stderr))
	}
}

// WriteProviderFile replaces the provider file on the node atomically: it
// sends the bytes to a temporary file in the same directory with mode
// 0600, checks under the directory's lock that the node received exactly
// those bytes (count and sha256) and that the context's Fence allows it,
// renames the temporary file over the file and fsyncs the directory, then
// reads the file back and compares its sha256 with data's. A crash or a
// cut connection leaves the old file or the new one, never a mix, and a
// write overtaken by a later one never lands after it.
func (n *Node) WriteProviderFile(ctx context.Context, data []byte) error {
	op := "write provider file " + n.file
	if len(data) == 0 || len(data) > MaxProviderFileSize {
		return nodeErr(n.name, op, nil, fmt.Errorf("refusing to write %d bytes: a provider file has 1 to %d", len(data), MaxProviderFileSize))
	}
	if err := n.writeAtomic(ctx, op, n.file, data); err != nil {
		return err
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
	if err := n.removeFile(ctx, op, n.file); err != nil {
		return err
	}
	n.log.Info("removed provider file", "path", n.file)
	return nil
}

// removeFile removes file from the node, under the directory's lock and
// the context's Fence; a missing file is fine.
func (n *Node) removeFile(ctx context.Context, op, file string) error {
	if err := checkFence(ctx, "remove "+file); err != nil {
		return nodeErr(n.name, op, nil, err)
	}
	token, err := fenceToken(ctx)
	if err != nil {
		return nodeErr(n.name, op, ErrFenced, err)
	}
	r, err := n.run(ctx, fmt.Sprintf(`set -eu
f=%s
d=%s
token=%d
[ -d "$d" ] || exit 0
`+lockAndFence+`rm -f -- "$f"
sync -- "$d" 2>/dev/null || sync`, shellQuote(file), shellQuote(path.Dir(file)), token), nil, 4096)
	if err != nil {
		return n.sshErr(op, err)
	}
	return n.scriptErr(op, r)
}
