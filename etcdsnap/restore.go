package etcdsnap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/atrest-io/atrest/cluster"
)

// KeySource fetches key material by name (implemented by keystore.Store).
type KeySource interface {
	Key(ctx context.Context, name string) (cluster.Key, error)
}

// RestoreConfig returns the EncryptionConfiguration that lets a
// kube-apiserver read every object in the snapshot m describes that its
// providers can read: m's config (its resource lists, in their order, with
// every key fetched from keys and checked against its fingerprint, and its
// KMS providers, whose plugins must be running), or, for a manifest
// without one, every key m references as readers (one provider entry per
// provider in order of first appearance, the first key first) then
// identity, for m's resources. The config is validated as kube-apiserver
// would before it is returned. The bytes hold key material: write them
// with WriteRestoreConfig, never to a log.
func RestoreConfig(ctx context.Context, m Manifest, keys KeySource) ([]byte, error) {
	fetched := map[string]cluster.Key{}
	var order []cluster.Key
	for _, ref := range m.Keys {
		if !cluster.IsKeyed(cluster.Provider(ref.Provider)) {
			return nil, fmt.Errorf("restore config for snapshot %s: key %s has provider %q: atrest can only write aescbc, aesgcm and secretbox keys into a config; copy that provider's entry from the custom config in force when the snapshot was taken (Git revision %s), its plugin must still hold the key",
				m.Name, ref.Name, ref.Provider, orUnknown(m.GitRevision))
		}
		if keys == nil {
			return nil, fmt.Errorf("restore config for snapshot %s: no keystore to fetch key %s from", m.Name, ref.Name)
		}
		k, err := keys.Key(ctx, ref.Name)
		if err != nil {
			return nil, fmt.Errorf("restore config for snapshot %s: fetch key %s: %w", m.Name, ref.Name, err)
		}
		if string(k.Provider) != ref.Provider {
			return nil, fmt.Errorf("restore config for snapshot %s: key %s in the keystore is a %s key, the snapshot was taken with a %s key of that name", m.Name, ref.Name, k.Provider, ref.Provider)
		}
		if fp := k.Fingerprint(); fp != ref.Fingerprint {
			return nil, fmt.Errorf("restore config for snapshot %s: key %s in the keystore has fingerprint %s, the snapshot was taken with fingerprint %s: that is another key under the same name, and it cannot read this snapshot", m.Name, ref.Name, fp, ref.Fingerprint)
		}
		fetched[k.Name] = k
		order = append(order, k)
	}
	lists := m.Config
	if len(lists) == 0 {
		lists = legacyLists(m.resources(), order)
	}
	data, err := renderRestoreConfig(lists, fetched)
	if err != nil {
		return nil, fmt.Errorf("restore config for snapshot %s: %w", m.Name, err)
	}
	gates := ""
	if m.needsKMSv1() {
		gates = "KMSv1=true"
	}
	if _, err := cluster.ParseEncryptionConfig("restore config for snapshot "+m.Name, "", data, gates); err != nil {
		return nil, fmt.Errorf("restore config for snapshot %s is not valid: %w", m.Name, err)
	}
	return data, nil
}

// BelongsTo refuses a snapshot of another cluster: its keys are in that
// cluster's keyring, and its restore belongs to that cluster.
func (m Manifest) BelongsTo(clusterName string) error {
	if m.Cluster != "" && m.Cluster != clusterName {
		return fmt.Errorf("snapshot %s belongs to cluster %q, not %q (cluster.name): use that cluster's settings", m.Name, m.Cluster, clusterName)
	}
	return nil
}

// kmsProviders is every KMS provider of m's config, each once.
func (m Manifest) kmsProviders() []ProviderRef {
	var out []ProviderRef
	for _, l := range m.Config {
		for _, p := range l.Providers {
			if p.Kind == cluster.KindKMS && !slices.ContainsFunc(out, p.equal) {
				out = append(out, p)
			}
		}
	}
	return out
}

func (m Manifest) needsKMSv1() bool {
	return slices.ContainsFunc(m.kmsProviders(), func(p ProviderRef) bool { return p.KMS.APIVersion == "v1" })
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// legacyLists is the config of a manifest without one: keys grouped per
// provider in order of first appearance, then identity, for resources.
func legacyLists(resources []string, keys []cluster.Key) []ResourceList {
	var providers []cluster.Provider
	for _, k := range keys {
		if !slices.Contains(providers, k.Provider) {
			providers = append(providers, k.Provider)
		}
	}
	l := ResourceList{Resources: slices.Clone(resources)}
	for _, p := range providers {
		for _, k := range keys {
			if k.Provider == p {
				l.Providers = append(l.Providers, refOfEntry(cluster.EntryOf(k)))
			}
		}
	}
	l.Providers = append(l.Providers, ProviderRef{Kind: cluster.KindIdentity})
	return []ResourceList{l}
}

// renderRestoreConfig renders lists, with the material of their keys from
// keys, as the deploy renders a config (cluster.RenderChains): every
// resource keeps its list's providers, in order, and so its writer.
func renderRestoreConfig(lists []ResourceList, keys map[string]cluster.Key) ([]byte, error) {
	chains := cluster.Chains{}
	for _, l := range lists {
		chain := make(cluster.Chain, len(l.Providers))
		for i, p := range l.Providers {
			chain[i] = p.entry()
		}
		for _, r := range l.Resources {
			chains[r] = chain
		}
	}
	return cluster.RenderChains(chains, func(name string) (cluster.Key, error) {
		k, ok := keys[name]
		if !ok {
			return cluster.Key{}, fmt.Errorf("key %s of the config is not among the snapshot's keys", name)
		}
		return k, nil
	})
}

// WriteRestoreConfig writes a restore config to path with mode 0600. It
// refuses to replace an existing file unless overwrite is set; then the new
// file replaces the old one whole (written beside it, then renamed).
func WriteRestoreConfig(path string, data []byte, overwrite bool) error {
	if path == "" {
		return errors.New("write restore config: no path: name the file to write (it will hold keys, mode 0600)")
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("write restore config %s: directory %s does not exist", path, dir)
	}
	if st, err := os.Lstat(path); err == nil {
		if !overwrite {
			return fmt.Errorf("write restore config %s: the file exists: remove it or ask to overwrite it", path)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("write restore config %s: exists and is not a regular file", path)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write restore config %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write restore config %s: %w", path, err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write restore config %s: %w", path, err)
	}
	// CreateTemp makes the file 0600 already; say so in case that changes.
	if err := tmp.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if overwrite {
		err = os.Rename(tmp.Name(), path)
	} else {
		// A link never replaces a file that appeared meanwhile.
		err = publish(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write restore config %s: %w", path, err)
	}
	return syncDir(dir)
}

// RKE's places for a restore.
const (
	rkeProviderFile = "/etc/kubernetes/ssl/encryption.yaml"
	rkeSnapshotDir  = "/opt/rke/etcd-snapshots"
)

var instructionsTmpl = template.Must(template.New("restore").Parse(`Restoring etcd snapshot {{.M.Name}}
  taken {{.M.Time.Format "2006-01-02 15:04:05 MST"}} ({{.M.Reason}}) from {{.M.Endpoint}}, etcd {{.M.EtcdVersion}}, revision >= {{.M.EtcdRevision}}
  Git revision {{or .M.GitRevision "unknown"}}, keyring version {{.M.KeyringVersion}}
  file {{.DB}} ({{.M.Size}} bytes, sha256 {{.M.SHA256}})
  readable with {{.KeyList}}

The EncryptionConfiguration in {{.Config}} (mode 0600; it holds those keys:
never commit it, delete it when the restore is done) {{.Reads}}
Every kube-apiserver must run with it from the moment it starts on the
restored data:
  install -m 0600 {{.Config}} {{.ProviderFile}}     (on every controlplane node)
  kube-apiserver ... --encryption-provider-config={{.ProviderFile}}
{{- if .M.EtcdPrefix}}
The snapshot's objects are stored under --etcd-prefix={{.M.EtcdPrefix}}: every
kube-apiserver must run with that prefix too.
{{- end}}

0. Check the snapshot first:
  atrest snapshot verify {{.M.Name}}
  sha256sum {{.DB}}        # {{.M.SHA256}}

A. RKE (rke etcd snapshot-restore)
  RKE deploys the provider file from cluster.yml, so give it this one as a
  custom config in a local copy of cluster.yml (not the one in Git):
    services:
      kube-api:
        secrets_encryption_config:
          enabled: true
          custom_config:   # the content of {{.Config}}, indented here
  Copy the snapshot to every etcd node, then restore:
    install -m 0600 {{.DB}} {{.RKEDir}}/{{.M.Name}}      (on every etcd node)
    rke etcd snapshot-restore --config cluster.yml --name {{.M.Name}}
  When the cluster is back, point atrest at it again: it converges the
  nodes to the config in Git (rewriting objects and retiring keys as needed).

B. etcd by hand, etcd 3.5 and later (etcdutl), on every etcd member:
    etcdutl snapshot restore {{.DB}} \
      --name MEMBER --data-dir /var/lib/etcd-restored \
      --initial-cluster MEMBER=https://MEMBER_IP:2380[,...] \
      --initial-cluster-token etcd-cluster-restored \
      --initial-advertise-peer-urls https://MEMBER_IP:2380
  then start etcd on /var/lib/etcd-restored, and start kube-apiserver with
  --encryption-provider-config={{.ProviderFile}} holding {{.Config}}.

C. etcd 3.4 (no etcdutl): the same with etcdctl:
    ETCDCTL_API=3 etcdctl snapshot restore {{.DB}} \
      --name MEMBER --data-dir /var/lib/etcd-restored \
      --initial-cluster MEMBER=https://MEMBER_IP:2380[,...] \
      --initial-cluster-token etcd-cluster-restored \
      --initial-advertise-peer-urls https://MEMBER_IP:2380
`))

// readsClaim says what the restore config reads: every object only when
// none needs a KMS plugin or a key atrest does not hold.
func readsClaim(m Manifest) string {
	kms := m.kmsProviders()
	if len(m.Unreadable) == 0 && len(kms) == 0 {
		return "lets kube-apiserver read every object in this snapshot."
	}
	var b strings.Builder
	if len(m.Unreadable) == 0 {
		b.WriteString("lets kube-apiserver read every object in this snapshot, but")
	} else {
		b.WriteString("CANNOT read these objects, stored under a provider\nno config atrest saw holds (a key no keystore has, an unknown KMS plugin): a\nlist of their resource fails until the key is found or they are deleted:")
		for _, u := range m.Unreadable {
			fmt.Fprintf(&b, "\n  %d %s under %s", u.Count, u.Resource, u.Prefix)
		}
		b.WriteString("\nIt reads every other object")
		if len(kms) == 0 {
			b.WriteString(".")
			return b.String()
		}
		b.WriteString(", but")
	}
	b.WriteString(" the objects of its KMS providers only\nwhile their plugins run: on every controlplane node, before kube-apiserver\nstarts, each must be running at its endpoint with the key it held when the\nsnapshot was taken (the file holds no key of theirs):")
	for _, p := range kms {
		fmt.Fprintf(&b, "\n  %s", p)
		if p.KMS.APIVersion == "v1" {
			b.WriteString(" (KMS v1: kube-apiserver needs --feature-gates=KMSv1=true)")
		}
		if t := m.Transit; t != nil && len(t.Versions) > 0 && p.Name == cluster.TransitProviderName {
			fmt.Fprintf(&b, ": atrest's plugin (`atrest kms-plugin`, container %s), logged in to Vault\n    with decrypt on Transit key %s/%s, which must still decrypt version(s) %s\n    (its min_decryption_version at most %d: `vault read %s/keys/%s`)",
				"atrest-kms", t.Mount, t.Key, joinInts(t.Versions), slices.Min(t.Versions), t.Mount, t.Key)
		}
	}
	return b.String()
}

func joinInts(vs []int) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = strconv.Itoa(v)
	}
	return strings.Join(parts, ", ")
}

// RestoreInstructions tells an operator how to restore snapshot m with the
// restore config written at configPath: with RKE, with etcdutl (etcd 3.5+)
// and with etcdctl (etcd 3.4). It holds no key material.
func RestoreInstructions(m Manifest, configPath string) string {
	return restoreInstructions(m, configPath, dbObject(m.Name))
}

// RestoreInstructionsIn is RestoreInstructions naming the snapshot file by
// its path in a local store.
func RestoreInstructionsIn(d *LocalDir, m Manifest, configPath string) string {
	return restoreInstructions(m, configPath, d.Path(dbObject(m.Name)))
}

func restoreInstructions(m Manifest, configPath, db string) string {
	keyList := "identity only (no keys: every object is plain)"
	var ks []string
	for _, k := range m.Keys {
		ks = append(ks, fmt.Sprintf("%s (%s, %s)", k.Name, k.Provider, k.Fingerprint))
	}
	for _, p := range m.kmsProviders() {
		ks = append(ks, p.String())
	}
	if len(ks) > 0 {
		keyList = strings.Join(ks, ", ") + " and identity"
	}
	var b strings.Builder
	err := instructionsTmpl.Execute(&b, map[string]any{
		"M": m, "DB": db, "Config": configPath, "KeyList": keyList, "Reads": readsClaim(m),
		"ProviderFile": rkeProviderFile, "RKEDir": rkeSnapshotDir,
	})
	if err != nil {
		// The template is fixed and its data are plain values.
		panic(err)
	}
	return b.String()
}
