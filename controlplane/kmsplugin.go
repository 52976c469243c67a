package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// The KMS plugin on a node: a container named KMSPluginContainer that runs
// `atrest kms-plugin` from Options' plugin image, serving cluster.KMSSocket
// (under /etc/kubernetes, which kube-apiserver's container binds) and
// logging in to Vault with the credential atrest writes to
// KMSCredentialDir, outside /etc/kubernetes, so kube-apiserver's container
// never sees it.
const (
	KMSPluginContainer = "atrest-kms"
	kmsPluginPrev      = "atrest-kms-atrest-prev"
	KMSCredentialDir   = "/etc/atrest-kms"
	// KMSRoleIDFile and KMSSecretIDFile hold the AppRole credential.
	KMSRoleIDFile   = KMSCredentialDir + "/role-id"
	KMSSecretIDFile = KMSCredentialDir + "/secret-id"
	// KMSPluginBinary is where the plugin image holds atrest.
	KMSPluginBinary = "/usr/local/bin/atrest"
	// specLabel holds PluginSpec.Hash on the container.
	specLabel = "io.atrest.kms-plugin.spec"
	// pluginHealthTimeout bounds the wait for a started plugin to be
	// healthy (it logs in to Vault first).
	pluginHealthTimeout = 90 * time.Second
)

// PluginSpec is the plugin container atrest runs on every node: what makes
// two plugins the same, credential aside.
type PluginSpec struct {
	Image string
	// Args are kms-plugin's flags.
	Args []string
	// Binds are host:container[:ro] bind mounts besides the socket and
	// credential directories (a Vault CA file).
	Binds []string
}

// Hash identifies the spec; a container whose label differs is replaced.
func (s PluginSpec) Hash() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// PluginState is a node's KMS plugin as observed.
type PluginState struct {
	// Present: the container exists; Running: it runs.
	Present, Running bool
	Image            string // as the container was created with
	SpecHash         string // PluginSpec.Hash it was created from
	StartedAt        time.Time
	RestartCount     int
	// Healthy: Status through the socket answered ok, with KeyID.
	Healthy bool
	KeyID   string
	// Problem says why it is not healthy.
	Problem string
}

// Current reports whether the plugin runs spec and is healthy.
func (p PluginState) Current(spec PluginSpec) bool {
	return p.Running && p.Healthy && p.SpecHash == spec.Hash()
}

func (p PluginState) String() string {
	switch {
	case !p.Present:
		return "no plugin container"
	case !p.Running:
		return "plugin container not running: " + p.Problem
	case !p.Healthy:
		return "plugin not healthy: " + p.Problem
	}
	return "healthy, key_id " + p.KeyID
}

// ObservePlugin inspects the node's plugin container and asks the plugin
// for its status through its own socket (`atrest kms-plugin health`, run in
// the container): the socket kube-apiserver uses, as root, whatever user
// atrest logs in to the node as.
func (n *Node) ObservePlugin(ctx context.Context) (PluginState, error) {
	c, err := n.docker.exists(ctx, KMSPluginContainer)
	if err != nil {
		return PluginState{}, nodeErr(n.name, "inspect container "+KMSPluginContainer, ErrDocker, err)
	}
	if c == nil {
		return PluginState{Problem: "no " + KMSPluginContainer + " container"}, nil
	}
	var cfg struct {
		Image  string
		Labels map[string]string
	}
	_ = json.Unmarshal(c.Config, &cfg)
	st := PluginState{Present: true, Running: c.State.Running && !c.State.Restarting, Image: cfg.Image, SpecHash: cfg.Labels[specLabel],
		StartedAt: parseDockerTime(c.State.StartedAt), RestartCount: c.RestartCount}
	if !st.Running {
		st.Problem = fmt.Sprintf("container %s (exit %d%s)", c.State.Status, c.State.ExitCode, strings.TrimPrefix(": "+c.State.Error, ": "))
		return st, nil
	}
	out, code, err := n.docker.exec(ctx, c.ID, []string{KMSPluginBinary, "kms-plugin", "health", "--socket", cluster.KMSSocket})
	if err != nil {
		return st, nodeErr(n.name, "kms plugin health", ErrDocker, err)
	}
	st.KeyID, st.Healthy = parseHealth(out)
	if code != 0 || !st.Healthy {
		st.Healthy = false
		st.Problem = fmt.Sprintf("health check exit %d: %s", code, lastLines(strings.TrimSpace(out), 3))
	}
	return st, nil
}

// parseHealth reads `kms-plugin health`'s line: "... healthz ok, key_id ID, ...".
func parseHealth(out string) (keyID string, ok bool) {
	for _, f := range strings.Split(out, ",") {
		f = strings.TrimSpace(f)
		if v, found := strings.CutPrefix(f, "key_id "); found {
			keyID = v
		}
		if strings.HasSuffix(f, "healthz ok") {
			ok = true
		}
	}
	return keyID, ok && keyID != ""
}

// DeployPlugin makes the node run spec, healthy: with cred, the credential
// files are written first (0600, in a 0700 directory) and the plugin is
// started again to log in with them; without, a plugin that already runs
// spec and is healthy is left alone. A plugin replaced is renamed aside
// first and put back when the new one does not become healthy, so a
// failed upgrade leaves the node as it was.
func (n *Node) DeployPlugin(ctx context.Context, spec PluginSpec, cred *cluster.PluginCredential) error {
	const op = "deploy the KMS plugin"
	if err := n.recoverPlugin(ctx); err != nil {
		return nodeErr(n.name, op, nil, fmt.Errorf("clean up after an interrupted run: %w", err))
	}
	if cred != nil {
		if err := n.writeCredential(ctx, *cred); err != nil {
			return err
		}
	}
	st, err := n.ObservePlugin(ctx)
	if err != nil {
		return err
	}
	if cred == nil && st.Current(spec) {
		return nil
	}
	// The socket goes where kube-apiserver's container sees
	// cluster.KMSSocketDir: /etc/kubernetes/atrest-kms on the node, or
	// under RKE's prefix_path.
	api, err := n.container(ctx)
	if err != nil {
		return err
	}
	sockDir := hostPath(api.Mounts, cluster.KMSSocketDir)
	if sockDir == "" {
		return nodeErr(n.name, op, nil, fmt.Errorf("the %s container mounts nothing that holds %s, so kube-apiserver could not reach the plugin's socket: bind-mount /etc/kubernetes into it, as RKE does", containerName, cluster.KMSSocketDir))
	}
	if err := n.ensureDirs(ctx, sockDir); err != nil {
		return err
	}
	old, err := n.docker.exists(ctx, KMSPluginContainer)
	if err != nil {
		return nodeErr(n.name, op, ErrDocker, err)
	}
	if old != nil {
		if err := n.docker.rename(ctx, old.ID, kmsPluginPrev); err != nil {
			return nodeErr(n.name, op, ErrDocker, err)
		}
		if old.State.Running {
			if err := n.docker.stop(ctx, old.ID); err != nil {
				return n.putPluginBack(ctx, old.ID, "", nodeErr(n.name, op, ErrDocker, err))
			}
		}
	}
	id, err := n.docker.create(ctx, KMSPluginContainer, pluginBody(spec, sockDir))
	if err != nil {
		return n.putPluginBack(ctx, idOf(old), "", nodeErr(n.name, op, ErrDocker, fmt.Errorf("create from image %s (is it on the node?): %w", spec.Image, err)))
	}
	if err := n.docker.start(ctx, id); err != nil {
		return n.putPluginBack(ctx, idOf(old), id, nodeErr(n.name, op, ErrDocker, err))
	}
	if err := n.waitPluginHealthy(ctx); err != nil {
		logs, _ := n.docker.logsTail(context.WithoutCancel(ctx), id, 20, false)
		return n.putPluginBack(ctx, idOf(old), id, nodeErr(n.name, op, nil, fmt.Errorf("%w\n--- %s container log ---\n%s", err, KMSPluginContainer, logs)))
	}
	// Healthy to itself is not yet in use: the node is done when its
	// kube-apiserver says so, or the next plan finds it not ready.
	if err := n.WaitKMSReady(ctx); err != nil {
		return n.putPluginBack(ctx, idOf(old), id, err)
	}
	if old != nil {
		if err := n.docker.remove(ctx, old.ID); err != nil {
			n.log.Warn("remove the previous KMS plugin container", "err", err)
		}
	}
	n.log.Info("KMS plugin deployed", "image", spec.Image, "spec", spec.Hash())
	return nil
}

func idOf(c *container) string {
	if c == nil {
		return ""
	}
	return c.ID
}

// putPluginBack removes the new container and puts the previous one back
// under its name, running.
func (n *Node) putPluginBack(ctx context.Context, oldID, newID string, cause error) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if newID != "" {
		if err := n.docker.remove(ctx, newID); err != nil {
			errs = append(errs, err)
		}
	}
	if oldID != "" {
		if err := n.docker.rename(ctx, oldID, KMSPluginContainer); err != nil {
			errs = append(errs, err)
		} else if err := n.docker.start(ctx, oldID); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return &RollbackError{Node: n.name, Cause: cause, Rollback: errors.Join(errs...)}
	}
	return cause
}

// recoverPlugin finishes what an interrupted deploy left: a previous
// container set aside is removed when the new one is healthy, else put
// back.
func (n *Node) recoverPlugin(ctx context.Context) error {
	prev, err := n.docker.exists(ctx, kmsPluginPrev)
	if err != nil || prev == nil {
		return err
	}
	cur, err := n.docker.exists(ctx, KMSPluginContainer)
	if err != nil {
		return err
	}
	if cur != nil {
		if st, err := n.ObservePlugin(ctx); err == nil && st.Healthy {
			n.log.Info("an interrupted plugin deploy left the previous container: the new one is healthy, so it goes")
			return n.docker.remove(ctx, prev.ID)
		}
		if err := n.docker.remove(ctx, cur.ID); err != nil {
			return err
		}
	}
	n.log.Info("an interrupted plugin deploy left the previous container: putting it back")
	if err := n.docker.rename(ctx, prev.ID, KMSPluginContainer); err != nil {
		return err
	}
	return n.docker.start(ctx, prev.ID)
}

func (n *Node) waitPluginHealthy(ctx context.Context) error {
	deadline := time.Now().Add(pluginHealthTimeout)
	var last PluginState
	for {
		st, err := n.ObservePlugin(ctx)
		if err == nil && st.Healthy {
			return nil
		}
		last = st
		if err != nil {
			last.Problem = err.Error()
		}
		if st.RestartCount >= 3 {
			return fmt.Errorf("the KMS plugin keeps exiting (restarted %d times): %s", st.RestartCount, last.Problem)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the KMS plugin was not healthy within %s: %s", pluginHealthTimeout, last.Problem)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// pluginBody is the create request of the plugin container: host network
// (it reaches Vault as the node does), restarted always, the socket
// directory and the credential directory (read-only) bound.
func pluginBody(spec PluginSpec, sockDir string) map[string]json.RawMessage {
	binds := append([]string{sockDir + ":" + cluster.KMSSocketDir, KMSCredentialDir + ":" + KMSCredentialDir + ":ro"}, spec.Binds...)
	raw := func(v any) json.RawMessage {
		b, _ := json.Marshal(v)
		return b
	}
	return map[string]json.RawMessage{
		"Image":      raw(spec.Image),
		"Entrypoint": raw([]string{KMSPluginBinary}),
		"Cmd":        raw(append([]string{"kms-plugin"}, spec.Args...)),
		"Labels":     raw(map[string]string{specLabel: spec.Hash(), "app.kubernetes.io/managed-by": "atrest"}),
		// Root: the socket's and the credential's directories are root's
		// (atrest's image runs as 65532 by default).
		"User": raw("0:0"),
		"HostConfig": raw(map[string]any{
			"NetworkMode":   "host",
			"RestartPolicy": map[string]any{"Name": "always"},
			"Binds":         binds,
			"LogConfig":     map[string]any{"Type": "json-file", "Config": map[string]string{"max-size": "10m", "max-file": "3"}},
		}),
	}
}

// ensureDirs makes the credential directory and the others given, 0700.
func (n *Node) ensureDirs(ctx context.Context, more ...string) error {
	dirs := ""
	for _, d := range append([]string{KMSCredentialDir}, more...) {
		dirs += " " + shellQuote(d)
	}
	r, err := n.run(ctx, fmt.Sprintf("set -eu\numask 077\nmkdir -p%s\nchmod 0700%s", dirs, dirs), nil, 4096)
	if err != nil {
		return n.sshErr("make the KMS plugin's directories", err)
	}
	return n.scriptErr("make the KMS plugin's directories", r)
}

// writeCredential writes the plugin's AppRole credential, each file
// atomically, 0600.
func (n *Node) writeCredential(ctx context.Context, cred cluster.PluginCredential) error {
	if err := n.ensureDirs(ctx); err != nil {
		return err
	}
	if err := n.writeAtomic(ctx, "write the KMS plugin's role id", KMSRoleIDFile, []byte(cred.RoleID+"\n")); err != nil {
		return err
	}
	if err := n.writeAtomic(ctx, "write the KMS plugin's secret id", KMSSecretIDFile, append(cred.SecretID.Bytes(), '\n')); err != nil {
		return err
	}
	n.log.Info("wrote the KMS plugin's Vault credential", "dir", KMSCredentialDir, "accessor", cred.Accessor)
	return nil
}

// RemovePlugin removes the plugin container and its credential files.
func (n *Node) RemovePlugin(ctx context.Context) error {
	const op = "remove the KMS plugin"
	for _, name := range []string{KMSPluginContainer, kmsPluginPrev} {
		c, err := n.docker.exists(ctx, name)
		if err != nil {
			return nodeErr(n.name, op, ErrDocker, err)
		}
		if c != nil {
			if err := n.docker.remove(ctx, c.ID); err != nil {
				return nodeErr(n.name, op, ErrDocker, err)
			}
		}
	}
	for _, f := range []string{KMSSecretIDFile, KMSRoleIDFile} {
		if err := n.removeFile(ctx, op, f); err != nil {
			return err
		}
	}
	n.log.Info("KMS plugin removed")
	return nil
}

// PluginLogs is the tail of the plugin container's log.
func (n *Node) PluginLogs(ctx context.Context, lines int) (string, error) {
	c, err := n.docker.exists(ctx, KMSPluginContainer)
	if err != nil || c == nil {
		return "", err
	}
	return n.docker.logsTail(ctx, c.ID, lines, false)
}

// ObservePlugins observes the plugin of every node, by node name.
func (c *Cluster) ObservePlugins(ctx context.Context) (map[string]PluginState, error) {
	out := map[string]PluginState{}
	var errs []error
	for _, n := range c.nodes {
		st, err := n.ObservePlugin(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[n.name] = st
	}
	return out, errors.Join(errs...)
}

// RollPlugin deploys spec to the nodes, one at a time in cluster.yml
// order, each proven healthy before the next; cred gives a node a new
// credential (nil: keep the one it has). Nodes not in only (when given)
// are left alone.
func (c *Cluster) RollPlugin(ctx context.Context, spec PluginSpec, only []string, cred func(node string) (*cluster.PluginCredential, error)) error {
	return c.rollout(ctx, "KMS plugin deploy (image "+spec.Image+")", func(ctx context.Context, n *Node) (bool, error) {
		if len(only) > 0 && !contains(only, n.name) {
			return false, nil
		}
		var cr *cluster.PluginCredential
		if cred != nil {
			var err error
			if cr, err = cred(n.name); err != nil {
				return false, err
			}
		}
		err := n.DeployPlugin(ctx, spec, cr)
		return err != nil, err
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// exec runs cmd in the container and returns its output (stdout and
// stderr) and exit code. The Docker engine answers a non-detached start
// with the raw stream until the process ends.
func (d *docker) exec(ctx context.Context, id string, cmd []string) (string, int, error) {
	var created struct {
		ID string `json:"Id"`
	}
	if err := d.call(ctx, http.MethodPost, "/containers/"+url.PathEscape(id)+"/exec", nil,
		map[string]any{"AttachStdout": true, "AttachStderr": true, "Cmd": cmd}, 0, &created); err != nil {
		return "", 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{"Detach": false, "Tty": false})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://docker/v"+d.version+"/exec/"+url.PathEscape(created.ID)+"/start", bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.http.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("docker exec start: %w: %w", ErrDocker, err)
	}
	out := &capped{max: 64 << 10}
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return "", 0, fmt.Errorf("docker exec start: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	err = demux(out, bufio.NewReader(resp.Body))
	resp.Body.Close()
	if err != nil {
		return out.String(), 0, fmt.Errorf("docker exec: %w", err)
	}
	var inspect struct {
		Running  bool
		ExitCode int
	}
	for range 50 {
		if err := d.call(ctx, http.MethodGet, "/exec/"+url.PathEscape(created.ID)+"/json", nil, nil, 0, &inspect); err != nil {
			return out.String(), 0, err
		}
		if !inspect.Running {
			return out.String(), inspect.ExitCode, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return out.String(), 0, errors.New("docker exec: the command's output ended, but it still runs")
}

// RemovePlugins removes the plugin from every node.
func (c *Cluster) RemovePlugins(ctx context.Context) error {
	var errs []error
	for _, n := range c.nodes {
		if err := n.RemovePlugin(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
