package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	kmsservice "k8s.io/kms/pkg/service"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/keystore"
)

// Plugins drives the KMS plugin on the nodes (controlplane.Cluster).
type Plugins interface {
	ObservePlugins(ctx context.Context) (map[string]controlplane.PluginState, error)
	RollPlugin(ctx context.Context, spec controlplane.PluginSpec, only []string, cred func(node string) (*cluster.PluginCredential, error)) error
	RemovePlugins(ctx context.Context) error
	AwaitKeyID(ctx context.Context, want, keyID string, timeout time.Duration) error
}

// TransitKey is the Transit key in Vault (keystore.Transit).
type TransitKey interface {
	Mount() string
	Key() string
	State(ctx context.Context) (keystore.TransitState, error)
	Create(ctx context.Context) (keystore.TransitState, error)
	Rotate(ctx context.Context) (keystore.TransitState, error)
	SetMinDecryption(ctx context.Context, v int) error
}

// PluginCredentials issues and revokes the plugins' Vault credentials
// (keystore.PluginRole).
type PluginCredentials interface {
	Issue(ctx context.Context, clusterName, node string) (cluster.PluginCredential, error)
	Revoke(ctx context.Context, accessor string) error
}

// KMS is what the vault-transit provider needs of the world.
type KMS struct {
	Plugins     Plugins
	Transit     TransitKey
	Credentials PluginCredentials
	// Spec is the plugin container every node runs.
	Spec controlplane.PluginSpec
	// Service is the plugin's service run by atrest itself, with its own
	// Vault login: the drill decrypts a snapshot's objects through it.
	Service kmsservice.Service
	// AwaitTimeout bounds the wait for every node to write with a new
	// key_id (kube-apiserver polls its plugin's status once a minute).
	AwaitTimeout time.Duration
}

// NoKMS says why a Reconciler without KMS cannot run the vault-transit
// provider.
const NoKMS = "no KMS plugin image is set (settings kms.image: an image holding atrest at " + controlplane.KMSPluginBinary + ")"

// observeTransit reads the Transit key, and the plugins when the
// provider is in use (or a plugin may be left to remove).
func (r *Reconciler) observeTransit(ctx context.Context, d Desired, live *Live, kr *keystore.Keyring) error {
	if r.KMS == nil {
		live.Transit.Problem = NoKMS
		return nil
	}
	live.Transit.Configured = true
	st, err := r.KMS.Transit.State(ctx)
	if err != nil {
		live.Transit.Problem = fmt.Sprintf("read Transit key %s/%s: %v", r.KMS.Transit.Mount(), r.KMS.Transit.Key(), err)
	} else if st.Exists {
		live.Transit.Exists, live.Transit.Latest, live.Transit.MinDecryption = true, st.Latest, st.MinDecryption
		live.Transit.KeyID = cluster.TransitKeyID(r.KMS.Transit.Mount(), r.KMS.Transit.Key(), st.Latest)
		if st.Exportable || st.PlaintextBackup {
			live.Transit.Problem = fmt.Sprintf("Transit key %s/%s can leave Vault (exportable or allow_plaintext_backup): atrest uses only a key that cannot; use another kms.transitKey", r.KMS.Transit.Mount(), r.KMS.Transit.Key())
		}
	}
	in := Input{Desired: d, Live: *live}
	if !transitInUse(in) && (kr == nil || kr.Transit == nil || len(kr.Transit.Credentials) == 0) {
		return nil
	}
	states, err := r.KMS.Plugins.ObservePlugins(ctx)
	if err != nil {
		return fmt.Errorf("observe the KMS plugins: %w", err)
	}
	for i := range live.Nodes {
		st, ok := states[live.Nodes[i].Name]
		if !ok {
			continue
		}
		live.Nodes[i].Plugin = &PluginLive{Current: st.Current(r.KMS.Spec), Present: st.Present, Healthy: st.Healthy, KeyID: st.KeyID, Problem: st.Problem}
	}
	return nil
}

// createTransitKey creates the Transit key (or finds it) and records it;
// a rotation request is served by it, as a generated key serves one.
func (r *Reconciler) createTransitKey(ctx context.Context, d Desired) error {
	st, err := r.KMS.Transit.Create(ctx)
	if err != nil {
		return err
	}
	if st.Exportable || st.PlaintextBackup {
		return fmt.Errorf("Transit key %s/%s exists and can leave Vault (exportable or allow_plaintext_backup): atrest uses only a key that cannot", r.KMS.Transit.Mount(), r.KMS.Transit.Key()) //lint:ignore ST1005 "Transit" is a proper noun
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	r.transitRecord(kr)
	kr.RecordRotation(time.Now().UTC(), d.RotateRequest)
	return r.Keys.UpdateKeyring(ctx, kr)
}

// transitRecord is kr's record of the Transit key, made when missing.
func (r *Reconciler) transitRecord(kr *keystore.Keyring) *keystore.TransitRecord {
	if kr.Transit == nil || kr.Transit.Mount != r.KMS.Transit.Mount() || kr.Transit.Key != r.KMS.Transit.Key() {
		creds := map[string][]string{}
		if kr.Transit != nil {
			creds = kr.Transit.Credentials // issued for the plugins, whatever key they serve
		}
		kr.Transit = &keystore.TransitRecord{Mount: r.KMS.Transit.Mount(), Key: r.KMS.Transit.Key(), Created: time.Now().UTC(), Credentials: creds}
	}
	return kr.Transit
}

// rotateTransit adds a Transit version for d's request. The rotation is
// journaled in the keyring first (from which version, for which request),
// so that run again after a crash it rotates only if Vault has not, and
// always records the request served.
func (r *Reconciler) rotateTransit(ctx context.Context, d Desired) error {
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	rec := r.transitRecord(kr)
	if rec.Rotating == nil || rec.Rotating.Request != d.RotateRequest {
		st, err := r.KMS.Transit.State(ctx)
		if err != nil {
			return err
		}
		rec.Rotating = &keystore.TransitRotation{Request: d.RotateRequest, From: st.Latest, Started: time.Now().UTC()}
		if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
			return err
		}
	}
	st, err := r.KMS.Transit.State(ctx)
	if err != nil {
		return err
	}
	if st.Latest <= rec.Rotating.From {
		if st, err = r.KMS.Transit.Rotate(ctx); err != nil {
			return err
		}
	}
	r.logger().Info("rotated the Transit key", "from", rec.Rotating.From, "to", st.Latest, "request", d.RotateRequest)
	rec.Rotating = nil
	kr.RecordRotation(time.Now().UTC(), d.RotateRequest)
	return r.Keys.UpdateKeyring(ctx, kr)
}

// deployPlugin starts the plugin on step's nodes, one at a time, each with
// a fresh credential: its accessor is in the keyring before the secret id
// reaches the node, and the ones before it are revoked once the plugin is
// healthy with it, so no credential is ever lost track of.
func (r *Reconciler) deployPlugin(ctx context.Context, step Step) error {
	issue := func(node string) (*cluster.PluginCredential, error) {
		cred, err := r.KMS.Credentials.Issue(ctx, r.Cluster, node)
		if err != nil {
			return nil, err
		}
		kr, err := r.Keys.Keyring(ctx)
		if err != nil {
			return nil, errors.Join(err, r.KMS.Credentials.Revoke(ctx, cred.Accessor))
		}
		rec := r.transitRecord(kr)
		if rec.Credentials == nil {
			rec.Credentials = map[string][]string{}
		}
		rec.Credentials[node] = append(rec.Credentials[node], cred.Accessor)
		if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
			return nil, errors.Join(err, r.KMS.Credentials.Revoke(ctx, cred.Accessor))
		}
		return &cred, nil
	}
	err := r.KMS.Plugins.RollPlugin(ctx, r.KMS.Spec, step.Nodes, issue)
	// Whatever failed, each node's older credentials go: the newest is
	// the one its plugin runs with, or the one it failed with.
	if rerr := r.revokeOld(ctx, step.Nodes, false); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

// revokeOld revokes every credential of nodes but the newest (all of them
// with all).
func (r *Reconciler) revokeOld(ctx context.Context, nodes []string, all bool) error {
	kr, err := r.Keys.Keyring(ctx)
	if err != nil || kr.Transit == nil {
		return err
	}
	var errs []error
	for _, node := range nodes {
		ids := kr.Transit.Credentials[node]
		keep := 1
		if all {
			keep = 0
		}
		var left []string
		for i, id := range ids {
			if i >= len(ids)-keep {
				left = append(left, id)
				continue
			}
			if err := r.KMS.Credentials.Revoke(ctx, id); err != nil {
				errs = append(errs, err)
				left = append(left, id)
			}
		}
		if len(left) == 0 {
			delete(kr.Transit.Credentials, node)
		} else {
			kr.Transit.Credentials[node] = left
		}
	}
	if err := r.Keys.UpdateKeyring(ctx, kr); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removePlugin removes the plugins and revokes every credential issued.
func (r *Reconciler) removePlugin(ctx context.Context) error {
	if err := r.KMS.Plugins.RemovePlugins(ctx); err != nil {
		return err
	}
	kr, err := r.Keys.Keyring(ctx)
	if err != nil || kr.Transit == nil {
		return err
	}
	nodes := make([]string, 0, len(kr.Transit.Credentials))
	for n := range kr.Transit.Credentials {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	return r.revokeOld(ctx, nodes, true)
}

// awaitKeyID proves every node writes with the key_id a rewrite is for.
func (r *Reconciler) awaitKeyID(ctx context.Context, keyID string) error {
	if keyID == PendingVersion {
		return errors.New("rewrite: the Transit key's new version is not known yet")
	}
	if r.KMS == nil {
		return errors.New("rewrite: " + NoKMS)
	}
	timeout := r.KMS.AwaitTimeout
	if timeout <= 0 {
		timeout = 4 * time.Minute
	}
	return r.KMS.Plugins.AwaitKeyID(ctx, cluster.TransitPrefix, keyID, timeout)
}

// trimTransit raises the Transit key's min_decryption_version to the
// oldest version anything needs: the objects stored now, and every
// snapshot this cluster keeps (its manifest lists the versions it needs).
// Versions are never deleted (Vault's trim), only no longer used to
// decrypt, which lowering it again undoes.
func (r *Reconciler) trimTransit(ctx context.Context, live Live) error {
	if r.KMS == nil || r.Snapshots == nil {
		return nil
	}
	st, err := r.KMS.Transit.State(ctx)
	if err != nil || !st.Exists {
		return err
	}
	need := st.Latest
	for _, v := range TransitVersions(live.KeyIDs, r.KMS.Transit.Mount(), r.KMS.Transit.Key()) {
		need = min(need, v)
	}
	manifests, err := etcdsnap.List(ctx, r.Snapshots)
	if err != nil {
		return err
	}
	for _, m := range manifests {
		if m.Cluster != "" && m.Cluster != r.Cluster {
			continue
		}
		if t := m.Transit; t != nil && t.Mount == r.KMS.Transit.Mount() && t.Key == r.KMS.Transit.Key() {
			for _, v := range t.Versions {
				need = min(need, v)
			}
		}
	}
	if need <= st.MinDecryption {
		return nil
	}
	r.logger().Info("no object and no kept snapshot needs the Transit key's older versions: Vault stops decrypting with them",
		"min_decryption_version", need, "was", st.MinDecryption)
	return r.KMS.Transit.SetMinDecryption(ctx, need)
}

// RotatePluginCredentials gives the KMS plugin on nodes (every node when
// none is named) a fresh Vault credential, under the transition lock: one
// node at a time, the new secret id written, the plugin started again and
// proven healthy with it, and the secret ids it replaces revoked. A node
// whose plugin does not come back healthy keeps its previous container,
// and both credentials stay recorded until the next deploy revokes the
// older one.
func (r *Reconciler) RotatePluginCredentials(ctx context.Context, holder string, nodes []string) error {
	if r.KMS == nil || r.KMS.Plugins == nil {
		return errors.New("rotate the KMS plugins' credentials: " + NoKMS)
	}
	lock, err := r.Locks.AcquireLock(ctx, holder, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("take the transition lock: %w", err)
	}
	defer func() {
		if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
			r.logger().Warn("release the transition lock", "err", err)
		}
	}()
	ctx = controlplane.WithFence(ctx, controlplane.Fence{Token: lock.Token(), Check: lock.Check})
	states, err := r.KMS.Plugins.ObservePlugins(ctx)
	if err != nil {
		return err
	}
	all := make([]string, 0, len(states))
	for n, st := range states {
		if st.Present {
			all = append(all, n)
		}
	}
	slices.Sort(all)
	if len(nodes) == 0 {
		nodes = all
	}
	for _, n := range nodes {
		if !slices.Contains(all, n) {
			return fmt.Errorf("rotate the KMS plugins' credentials: node %s runs no KMS plugin (nodes with one: %v)", n, all)
		}
	}
	if len(nodes) == 0 {
		return errors.New("rotate the KMS plugins' credentials: no node runs the KMS plugin")
	}
	return r.deployPlugin(ctx, Step{Kind: StepDeployPlugin, Nodes: nodes})
}
