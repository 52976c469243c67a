package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// observeScript reads, in one command on the node (one SSH round trip),
// what an observation needs of the node itself: the provider file's
// modification time and sha256, its bytes only when their sha256 is not
// the one the caller holds (as readScript), and `docker inspect` of the
// kube-apiserver container. Each part is framed by its length, so that
// nothing in a file can be read as the next part. A node without the
// docker command says so, and the container is inspected through the API.
const observeScript = `f=%s
held=%s
echo "atrest-observe 1"
if [ ! -e "$f" ] && [ ! -L "$f" ]; then
	echo "file absent"
else
	echo "file present"
	date -r "$f" +%%s.%%N 2>/dev/null || stat -L -c %%Y -- "$f" || echo 0
	sum=$(sha256sum < "$f") || exit 1
	sum=${sum%%%% *}
	echo "$sum"
	if [ "$sum" = "$held" ]; then
		echo "bytes -"
	else
		echo "bytes $(wc -c < "$f")"
		cat -- "$f"
	fi
fi
if command -v docker >/dev/null 2>&1 && out=$(docker inspect --type container %s 2>/dev/null); then
	printf 'inspect %%s\n' "$(printf %%s "$out" | wc -c)"
	printf %%s "$out"
else
	echo "inspect -"
fi`

// observed is what observeScript found.
type observed struct {
	file    readFile
	inspect []byte // the container's `docker inspect` JSON array; nil: inspect through the API
}

// parseObserved reads observeScript's answer, given the file the caller
// held.
func parseObserved(out []byte, held ProviderFile) (observed, error) {
	var o observed
	line := func() (string, error) {
		l, rest, ok := bytes.Cut(out, []byte("\n"))
		if !ok {
			return "", errors.New("answer cut short")
		}
		out = rest
		return string(l), nil
	}
	take := func(n int) ([]byte, error) {
		if n < 0 || n > len(out) {
			return nil, fmt.Errorf("a part of %d bytes, %d left in the answer", n, len(out))
		}
		b := out[:n]
		out = out[n:]
		return b, nil
	}
	if l, err := line(); err != nil || l != "atrest-observe 1" {
		return o, fmt.Errorf("not an observation: %q", l)
	}
	l, err := line()
	if err != nil {
		return o, err
	}
	switch l {
	case "file absent":
	case "file present":
		stamp, err := line()
		if err != nil {
			return o, err
		}
		sum, err := line()
		if err != nil || !sha256RE.MatchString(sum) {
			return o, errors.New("no sha256 in the answer")
		}
		size, err := line()
		if err != nil {
			return o, err
		}
		if size == "bytes -" {
			if !held.Present || held.SHA256 != sum {
				return o, errors.New("the node sent no bytes for a file the caller does not hold")
			}
			o.file.ProviderFile = held
		} else {
			n, err := strconv.Atoi(string(bytes.TrimPrefix([]byte(size), []byte("bytes "))))
			if err != nil || n > MaxProviderFileSize {
				return o, fmt.Errorf("file size %q: not an EncryptionConfiguration", size)
			}
			data, err := take(n)
			if err != nil {
				return o, err
			}
			// The bytes' own hash counts: the file may have changed
			// between the hash and the copy.
			o.file.ProviderFile, o.file.fetched = newProviderFile(bytes.Clone(data)), true
		}
		o.file.ModTime = parseEpoch(stamp)
	default:
		return o, fmt.Errorf("unexpected %q", l)
	}
	l, err = line()
	if err != nil {
		return o, err
	}
	if l == "inspect -" {
		return o, nil
	}
	n, err := strconv.Atoi(string(bytes.TrimPrefix([]byte(l), []byte("inspect "))))
	if err != nil {
		return o, fmt.Errorf("unexpected %q", l)
	}
	if o.inspect, err = take(n); err != nil {
		return o, err
	}
	return o, nil
}

// observe reads the provider file and the kube-apiserver container in one
// command on the node: what Observe needs besides the API's answers.
func (n *Node) observe(ctx context.Context) (ProviderFile, APIServer, error) {
	const op = "observe"
	n.fileMu.Lock()
	held := "none"
	if n.lastFile.Present {
		held = n.lastFile.SHA256
	}
	r, err := n.run(ctx, fmt.Sprintf(observeScript, shellQuote(n.file), shellQuote(held), containerName), nil, MaxProviderFileSize+2<<20)
	if err != nil {
		n.fileMu.Unlock()
		return ProviderFile{}, APIServer{}, n.sshErr(op, err)
	}
	if r.code != 0 || r.overflow {
		n.fileMu.Unlock()
		return ProviderFile{}, APIServer{}, nodeErr(n.name, op, nil, fmt.Errorf("exit status %d, %d bytes: %s", r.code, len(r.stdout), r.stderr))
	}
	o, err := parseObserved(r.stdout, n.lastFile)
	if err != nil {
		n.fileMu.Unlock()
		return ProviderFile{}, APIServer{}, nodeErr(n.name, op, nil, err)
	}
	n.lastFile = o.file.ProviderFile
	n.fileReads++
	if o.file.fetched {
		n.fileFetches++
	}
	n.observations++
	n.fileMu.Unlock()
	if o.inspect == nil {
		a, err := n.Inspect(ctx)
		return o.file.ProviderFile, a, err
	}
	c, err := decodeContainerList(o.inspect)
	if err != nil {
		return o.file.ProviderFile, APIServer{}, nodeErr(n.name, op, ErrDocker, err)
	}
	return o.file.ProviderFile, describe(c, n.file), nil
}

// decodeContainerList reads `docker inspect`'s answer for one container:
// a JSON list of one inspect document.
func decodeContainerList(data []byte) (*container, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(data, &list); err != nil || len(list) != 1 {
		return nil, fmt.Errorf("docker inspect %s: not one container: %v", containerName, err)
	}
	return decodeContainer(list[0])
}
