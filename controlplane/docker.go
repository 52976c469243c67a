package controlplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Docker Engine API versions this client speaks. It asks for the engine's
// own version, capped at maxAPIVersion; what it sends back to create is
// what inspect returned at the same version, so nothing is lost.
const (
	minAPIVersion = "1.24" // Docker 1.12, older than any RKE supports
	maxAPIVersion = "1.47" // Docker 27
)

// errNotFound is Docker's 404: no such container or image.
var errNotFound = errors.New("not found")

// docker is a small Docker Engine API client that reaches the node's
// engine through a Unix-socket forward of the node's SSH connection, as RKE
// does.
type docker struct {
	http    *http.Client
	version string // negotiated API version, "1.41"
	timeout time.Duration
}

func newDocker(sc *ssh.Client, socket string, timeout time.Duration) *docker {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return sc.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	return &docker{http: &http.Client{Transport: tr}, timeout: timeout}
}

func (d *docker) close() { d.http.CloseIdleConnections() }

// negotiate pings the engine and picks the API version.
func (d *docker) negotiate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET /_ping: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /_ping: %s", resp.Status)
	}
	v, err := pickAPIVersion(resp.Header.Get("Api-Version"))
	if err != nil {
		return err
	}
	d.version = v
	return nil
}

// pickAPIVersion chooses the API version to speak with an engine that
// reports server (empty for engines too old to say).
func pickAPIVersion(server string) (string, error) {
	if server == "" {
		return "", fmt.Errorf("engine does not report its API version: older than API %s, which atrest needs", minAPIVersion)
	}
	if compareVersions(server, minAPIVersion) < 0 {
		return "", fmt.Errorf("engine speaks API %s, older than the %s atrest needs: upgrade Docker", server, minAPIVersion)
	}
	if compareVersions(server, maxAPIVersion) > 0 {
		return maxAPIVersion, nil
	}
	return server, nil
}

// compareVersions compares dotted decimal versions ("1.41" < "1.100").
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// call makes one API request within the per-call timeout plus extra (for
// calls that wait, such as stop). A non-2xx answer is an error holding the
// engine's message; 404 wraps errNotFound.
func (d *docker) call(ctx context.Context, method, path string, query url.Values, body any, extra time.Duration, out any) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout+extra)
	defer cancel()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	u := "http://docker/v" + d.version + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return fmt.Errorf("docker %s %s: %w: %w", method, path, ErrDocker, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("docker %s %s: read answer: %w: %w", method, path, ErrDocker, err)
	}
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotModified {
		var msg struct {
			Message string `json:"message"`
		}
		text := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &msg) == nil && msg.Message != "" {
			text = msg.Message
		}
		err := fmt.Errorf("docker %s %s: %s: %s", method, path, resp.Status, text)
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %w", errNotFound, err)
		}
		return err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("docker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// container is the part of a container's inspect that atrest reads. Config
// and HostConfig are kept raw, so that a replacement is created with every
// field as it was, including those this client does not know.
type container struct {
	ID    string `json:"Id"`
	Name  string
	Image string // the image ID the container runs
	State struct {
		Status     string
		Running    bool
		Restarting bool
		ExitCode   int
		Error      string
		StartedAt  string
	}
	RestartCount int
	Mounts       []mount
	Config       json.RawMessage
	HostConfig   json.RawMessage

	config struct {
		Image      string
		Entrypoint strSlice
		Cmd        strSlice
		Tty        bool
	}
	hostConfig struct {
		NetworkMode string
	}
	networks map[string]json.RawMessage
}

// strSlice accepts Docker's "string or list of strings".
type strSlice []string

func (s *strSlice) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = nil
		return nil
	}
	var one string
	if json.Unmarshal(b, &one) == nil {
		*s = []string{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

func (d *docker) inspect(ctx context.Context, name string) (*container, error) {
	var raw json.RawMessage
	if err := d.call(ctx, http.MethodGet, "/containers/"+url.PathEscape(name)+"/json", nil, nil, 0, &raw); err != nil {
		return nil, err
	}
	return decodeContainer(raw)
}

// decodeContainer reads a container's inspect document, as the API or
// `docker inspect` gives it.
func decodeContainer(data []byte) (*container, error) {
	var raw struct {
		container
		NetworkSettings struct {
			Networks map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("docker inspect: %w", err)
	}
	c := raw.container
	c.networks = raw.NetworkSettings.Networks
	if err := json.Unmarshal(c.Config, &c.config); err != nil {
		return nil, fmt.Errorf("docker inspect %s: Config: %w", c.Name, err)
	}
	if err := json.Unmarshal(c.HostConfig, &c.hostConfig); err != nil {
		return nil, fmt.Errorf("docker inspect %s: HostConfig: %w", c.Name, err)
	}
	return &c, nil
}

// exists inspects name, reporting a missing container as (nil, nil).
func (d *docker) exists(ctx context.Context, name string) (*container, error) {
	c, err := d.inspect(ctx, name)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	return c, err
}

// imageID returns the ID of the image ref names, or "" when the engine
// does not have it.
func (d *docker) imageID(ctx context.Context, ref string) (string, error) {
	var img struct {
		ID string `json:"Id"`
	}
	err := d.call(ctx, http.MethodGet, "/images/"+ref+"/json", nil, nil, 0, &img)
	if errors.Is(err, errNotFound) {
		return "", nil
	}
	return img.ID, err
}

// createBody is the create request for a copy of old that runs image with
// cmd: old's Config and HostConfig as inspect gave them, and its
// user-defined network attachments.
func createBody(old *container, image string, cmd []string) (map[string]json.RawMessage, error) {
	body := map[string]json.RawMessage{}
	if err := json.Unmarshal(old.Config, &body); err != nil {
		return nil, fmt.Errorf("container config: %w", err)
	}
	var err error
	if body["Cmd"], err = json.Marshal(cmd); err != nil {
		return nil, err
	}
	if body["Image"], err = json.Marshal(image); err != nil {
		return nil, err
	}
	body["HostConfig"] = old.HostConfig
	mode := old.hostConfig.NetworkMode
	if strings.HasPrefix(mode, "container:") {
		// These come from the other container and conflict with joining it.
		for _, k := range []string{"Hostname", "Domainname", "ExposedPorts", "MacAddress"} {
			delete(body, k)
		}
	}
	if mode != "host" && mode != "none" && !strings.HasPrefix(mode, "container:") && len(old.networks) > 0 {
		// Keep static addresses and aliases on user-defined networks;
		// the default attachment comes from NetworkMode.
		endpoints := map[string]any{}
		for name, raw := range old.networks {
			var ep struct {
				IPAMConfig json.RawMessage
				Links      []string
				Aliases    []string
			}
			if err := json.Unmarshal(raw, &ep); err != nil {
				return nil, fmt.Errorf("network %s: %w", name, err)
			}
			endpoints[name] = ep
		}
		if body["NetworkingConfig"], err = json.Marshal(map[string]any{"EndpointsConfig": endpoints}); err != nil {
			return nil, err
		}
	}
	return body, nil
}

// namesLike returns the names (without the leading slash) of the
// containers, running or not, whose name contains part: one call.
func (d *docker) namesLike(ctx context.Context, part string) ([]string, error) {
	filters, err := json.Marshal(map[string]map[string]bool{"name": {part: true}})
	if err != nil {
		return nil, err
	}
	var list []struct{ Names []string }
	if err := d.call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(filters)}}, nil, 0, &list); err != nil {
		return nil, err
	}
	var out []string
	for _, c := range list {
		for _, name := range c.Names {
			out = append(out, strings.TrimPrefix(name, "/"))
		}
	}
	return out, nil
}

func (d *docker) create(ctx context.Context, name string, body map[string]json.RawMessage) (string, error) {
	var out struct {
		ID       string `json:"Id"`
		Warnings []string
	}
	err := d.call(ctx, http.MethodPost, "/containers/create", url.Values{"name": {name}}, body, 0, &out)
	return out.ID, err
}

// stopGrace is how long kube-apiserver gets to shut down before SIGKILL.
const stopGrace = 15 * time.Second

// The destructive calls below first ask the context's Fence: a holder
// that lost the lock must not touch a container the new holder may be
// working on.

func (d *docker) start(ctx context.Context, id string) error {
	if err := checkFence(ctx, "start container "+short(id)); err != nil {
		return err
	}
	return d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/start", nil, nil, 0, nil)
}

func (d *docker) stop(ctx context.Context, id string) error {
	if err := checkFence(ctx, "stop container "+short(id)); err != nil {
		return err
	}
	q := url.Values{"t": {strconv.Itoa(int(stopGrace.Seconds()))}}
	return d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/stop", q, nil, stopGrace, nil)
}

func (d *docker) restart(ctx context.Context, id string) error {
	if err := checkFence(ctx, "restart container "+short(id)); err != nil {
		return err
	}
	q := url.Values{"t": {strconv.Itoa(int(stopGrace.Seconds()))}}
	return d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/restart", q, nil, stopGrace, nil)
}

func (d *docker) rename(ctx context.Context, id, name string) error {
	if err := checkFence(ctx, "rename container "+short(id)+" to "+name); err != nil {
		return err
	}
	return d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/rename", url.Values{"name": {name}}, nil, 0, nil)
}

func (d *docker) remove(ctx context.Context, id string) error {
	if err := checkFence(ctx, "remove container "+short(id)); err != nil {
		return err
	}
	return d.call(ctx, http.MethodDelete, "/containers/"+url.PathEscape(id), url.Values{"force": {"1"}}, nil, stopGrace, nil)
}

// logsTail returns the last lines of the container's output, stdout and
// stderr interleaved as they were written.
func (d *docker) logsTail(ctx context.Context, id string, lines int, tty bool) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	q := url.Values{"stdout": {"1"}, "stderr": {"1"}, "tail": {strconv.Itoa(lines)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v"+d.version+"/containers/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("docker logs: %w", err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, 1<<20)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(body, 4096))
		return "", fmt.Errorf("docker logs: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	if tty {
		// A TTY container's output is one raw stream.
		out, err := io.ReadAll(body)
		return string(out), err
	}
	var out bytes.Buffer
	err = demux(&out, body)
	return out.String(), err
}

// demux copies the payload of Docker's multiplexed stream (an 8-byte
// header per frame: stream type, three zero bytes, big-endian payload size)
// from r to w, stdout and stderr alike.
func demux(w io.Writer, r io.Reader) error {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("docker log stream: frame header: %w", err)
		}
		if hdr[0] > 3 || hdr[1] != 0 || hdr[2] != 0 || hdr[3] != 0 {
			return fmt.Errorf("docker log stream: bad frame header % x", hdr)
		}
		size := int64(binary.BigEndian.Uint32(hdr[4:]))
		if n, err := io.CopyN(w, r, size); err != nil {
			return fmt.Errorf("docker log stream: frame of %d bytes cut at %d: %w", size, n, err)
		}
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
