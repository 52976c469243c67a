package keystore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"

	"github.com/atrest-io/atrest/cluster"
)

// Source is a file Adopt reads keys from: RKE's cluster.rkestate, or a
// provider file (EncryptionConfiguration) read from a controlplane node.
type Source struct {
	Name string // where it came from, for messages: "cluster.rkestate", "node1:/etc/kubernetes/ssl/encryption.yaml"
	Data []byte
}

// Adoption is what Adopt imported. It holds no key material: print it.
type Adoption struct {
	Cluster string
	Path    string // where the keys now are: <mount>/<prefix>/<cluster>
	// Keys are the adopted keys, primary first. The primary is the key the
	// first source's config writes with (none if identity or KMS writes).
	Keys []KeyInfo
	// Skipped are providers whose keys cannot be imported (KMS).
	Skipped []string
	// Warnings are disagreements between sources worth a look.
	Warnings []string
	// AlreadyAdopted: the keyring already held exactly these keys; nothing
	// was written.
	AlreadyAdopted bool
	KeyringVersion int
	// DeployedHash is the ConfigHash of the deployed config (the canonical
	// render, cluster.EncryptionConfig.Render), when all deployed sources
	// agree; the keyring records it.
	DeployedHash string
	// RKEStateRemoval says what to remove from cluster.rkestate (and RKE's
	// other copies) now that Vault holds the keys.
	RKEStateRemoval string
}

// String is the report `atrest adopt` prints.
func (a *Adoption) String() string {
	var b strings.Builder
	if a.AlreadyAdopted {
		fmt.Fprintf(&b, "The keyring of cluster %s at %s (version %d) already holds these %d keys; nothing was written.\n", a.Cluster, a.Path, a.KeyringVersion, len(a.Keys))
	} else {
		fmt.Fprintf(&b, "Adopted %d keys of cluster %s into Vault at %s (keyring version %d).\n", len(a.Keys), a.Cluster, a.Path, a.KeyringVersion)
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tPROVIDER\tROLE\tFINGERPRINT")
	for _, k := range a.Keys {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", k.Name, k.Provider, k.Role, k.Fingerprint)
	}
	_ = tw.Flush()
	for _, s := range a.Skipped {
		fmt.Fprintf(&b, "Not imported: %s\n", s)
	}
	for _, w := range a.Warnings {
		fmt.Fprintf(&b, "Warning: %s\n", w)
	}
	b.WriteString("\n")
	b.WriteString(a.RKEStateRemoval)
	return b.String()
}

// Adopt imports the keys of a cluster RKE already encrypts, so that atrest
// can take it over without re-encrypting first. Each source is a
// cluster.rkestate (its currentState.encryptionConfig, and
// desiredState.encryptionConfig when it differs) or a provider file from a
// controlplane node; keys from every source are imported, and the first
// source decides the primary. The keys are stored first and the keyring
// that lists them written last, so a run that stops half-way leaves only
// unlisted keys, and running it again finishes the job. Adopt fills an
// empty keyring only; run against a keyring that already holds exactly
// these keys it changes nothing.
func (s *Store) Adopt(ctx context.Context, sources ...Source) (*Adoption, error) {
	const op = "adopt keys"
	p := s.path("data", keyringRel)
	plan, err := planAdoption(sources)
	if err != nil {
		return nil, err
	}
	a := &Adoption{
		Cluster:         s.cfg.Cluster,
		Path:            s.cfg.KVMount + "/" + s.base,
		Skipped:         plan.skipped,
		Warnings:        plan.warnings,
		DeployedHash:    plan.deployedHash,
		RKEStateRemoval: plan.removal(),
	}
	for _, k := range plan.keys {
		role := RoleReader
		if k.Name == plan.primary {
			role = RolePrimary
		}
		a.Keys = append(a.Keys, InfoOf(k, role))
	}

	kr, err := s.Keyring(ctx)
	if err != nil {
		return nil, err
	}
	if kr.Journal != nil {
		return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: a %s transition is in flight (journal %s); nothing was imported", ErrExists, kr.Journal.Transition, kr.Journal.ID)}
	}
	if len(kr.Keys) > 0 {
		var missing []string
		for i, k := range a.Keys {
			have, ok := kr.Find(k.Name)
			if !ok || have.Fingerprint != k.Fingerprint || have.Provider != k.Provider {
				missing = append(missing, k.Name)
				continue
			}
			a.Keys[i] = have
		}
		if len(missing) > 0 {
			return nil, &OpError{Op: op, Path: p, Err: fmt.Errorf("%w: the keyring (version %d) already holds keys %s, and not keys %s as given: adoption only fills an empty keyring; nothing was imported",
				ErrExists, kr.Version, strings.Join(kr.Names(), ", "), strings.Join(missing, ", "))}
		}
		a.AlreadyAdopted, a.KeyringVersion = true, kr.Version
		return a, nil
	}

	// Check every key path before writing any: a different key under one
	// of the names stops the adoption with nothing written.
	var toWrite []cluster.Key
	for _, k := range plan.keys {
		stored, err := s.Key(ctx, k.Name)
		switch {
		case errors.Is(err, ErrNotFound):
			toWrite = append(toWrite, k)
		case err != nil:
			return nil, err
		case stored.Fingerprint() != k.Fingerprint() || stored.Provider != k.Provider:
			return nil, &OpError{Op: op, Path: s.path("data", keyRel(k.Name)), Err: fmt.Errorf("%w: a different key named %s (%s %s) is already stored, not the %s %s being adopted; nothing was imported",
				ErrExists, k.Name, stored.Provider, stored.Fingerprint(), k.Provider, k.Fingerprint())}
		}
	}
	for _, k := range toWrite {
		if err := s.PutKey(ctx, k); err != nil {
			return nil, err
		}
	}
	kr.Keys = a.Keys
	kr.DeployedHash = plan.deployedHash
	if err := s.UpdateKeyring(ctx, kr); err != nil {
		return nil, err
	}
	a.KeyringVersion = kr.Version
	s.log.Info("adopted keys", "keys", keyringSummary(kr), "sources", len(sources))
	return a, nil
}

// adoptPlan is what the sources hold, before anything is written.
type adoptPlan struct {
	keys         []cluster.Key // primary first, then in source order
	primary      string        // "" when identity or KMS writes
	skipped      []string
	warnings     []string
	deployedHash string
	// rkestates are the names of rkestate sources; customConfig names the
	// rkeConfig paths that hold a custom config with keys in it.
	rkestates    []string
	customConfig []string
}

// parsedConfig is one EncryptionConfiguration found in a source.
type parsedConfig struct {
	where    string // "cluster.rkestate: currentState.encryptionConfig"
	deployed bool   // on the nodes (a provider file, or RKE's currentState)
	cfg      *cluster.EncryptionConfig
}

// planAdoption reads the sources. It touches nothing outside.
func planAdoption(sources []Source) (*adoptPlan, error) {
	if len(sources) == 0 {
		return nil, fmt.Errorf("%w: adopt: no source given: give cluster.rkestate or the provider file of a controlplane node", ErrInvalid)
	}
	plan := &adoptPlan{}
	var configs []parsedConfig
	for _, src := range sources {
		cs, err := plan.readSource(src)
		if err != nil {
			return nil, err
		}
		configs = append(configs, cs...)
	}

	type origin struct {
		key   cluster.Key
		where string
	}
	byName := map[string]origin{}
	var deployedHashes []string
	for i, c := range configs {
		keys, writer, skipped, err := walkConfig(c.cfg)
		if err != nil {
			return nil, fmt.Errorf("adopt: %s: %w", c.where, err)
		}
		for _, sk := range skipped {
			plan.skipped = append(plan.skipped, fmt.Sprintf("%s in %s: its keys stay in the KMS plugin", sk, c.where))
		}
		if i == 0 {
			plan.primary = writer
		} else if writer != plan.primary {
			plan.warnings = append(plan.warnings, fmt.Sprintf("%s writes with %s, %s with %s: the cluster may be in the middle of a change; %s is taken as primary",
				configs[0].where, orIdentity(plan.primary), c.where, orIdentity(writer), orIdentity(plan.primary)))
		}
		for _, k := range keys {
			prev, seen := byName[k.Name]
			switch {
			case !seen:
				if err := checkKeyName(k.Name); err != nil {
					return nil, fmt.Errorf("%w: adopt: %s: key name %v: atrest keeps each key at a Vault path named after it; rename the key in the cluster first", ErrInvalid, c.where, err)
				}
				byName[k.Name] = origin{k, c.where}
				plan.keys = append(plan.keys, k)
			case prev.key.Provider != k.Provider:
				return nil, fmt.Errorf("%w: adopt: key name %s is %s in %s but %s in %s: atrest stores keys by name and cannot hold both; rename one in the cluster first",
					ErrInvalid, k.Name, prev.key.Provider, prev.where, k.Provider, c.where)
			case !bytes.Equal(prev.key.Secret, k.Secret):
				return nil, fmt.Errorf("%w: adopt: key %s differs between %s (%s) and %s (%s): the sources disagree on its material; adopt from the nodes' provider files, which are what kube-apiserver reads",
					ErrInvalid, k.Name, prev.where, prev.key.Fingerprint(), c.where, k.Fingerprint())
			}
		}
		if c.deployed {
			deployedHashes = append(deployedHashes, ConfigHash(c.cfg.Render()))
		}
	}
	if len(plan.keys) == 0 {
		return nil, fmt.Errorf("%w: adopt: the sources hold no aescbc, aesgcm or secretbox key to import", ErrInvalid)
	}
	if len(deployedHashes) > 0 {
		if slices.Equal(slices.Compact(slices.Clone(deployedHashes)), deployedHashes[:1]) {
			plan.deployedHash = deployedHashes[0]
		} else {
			plan.warnings = append(plan.warnings, "the deployed configs differ between sources: the keyring records no deployed config, and atrest will find out what the nodes run")
		}
	}
	if i := slices.IndexFunc(plan.keys, func(k cluster.Key) bool { return k.Name == plan.primary }); i > 0 {
		k := plan.keys[i]
		plan.keys = append([]cluster.Key{k}, slices.Delete(plan.keys, i, i+1)...)
	}
	return plan, nil
}

func orIdentity(name string) string {
	if name == "" {
		return "identity (or KMS)"
	}
	return name
}

// rkeState is the part of RKE's FullState that holds keys.
type rkeState struct {
	DesiredState *rkeSubState `json:"desiredState"`
	CurrentState *rkeSubState `json:"currentState"`
}

type rkeSubState struct {
	RKEConfig        json.RawMessage `json:"rkeConfig"`
	EncryptionConfig string          `json:"encryptionConfig"`
}

// readSource returns the configs in one source.
func (plan *adoptPlan) readSource(src Source) ([]parsedConfig, error) {
	if src.Name == "" {
		src.Name = "source"
	}
	data := bytes.TrimSpace(src.Data)
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: adopt: %s is empty", ErrInvalid, src.Name)
	}
	var st rkeState
	if data[0] == '{' && json.Unmarshal(data, &st) == nil && (st.CurrentState != nil || st.DesiredState != nil) {
		return plan.readRKEState(src.Name, &st)
	}
	cfg, err := cluster.ParseEncryptionConfig(src.Name, "", data, kmsAllowed)
	if err != nil {
		return nil, fmt.Errorf("adopt: %s is neither an RKE cluster.rkestate nor a valid EncryptionConfiguration:\n%w", src.Name, err)
	}
	return []parsedConfig{{where: src.Name, deployed: true, cfg: cfg}}, nil
}

// kmsAllowed parses configs as a kube-apiserver that accepts KMS v1 does:
// the cluster already runs them, and adoption only needs their keys.
const kmsAllowed = "KMSv1=true"

func (plan *adoptPlan) readRKEState(name string, st *rkeState) ([]parsedConfig, error) {
	plan.rkestates = append(plan.rkestates, name)
	var out []parsedConfig
	var current string
	for _, part := range []struct {
		field    string
		sub      *rkeSubState
		deployed bool
	}{{"currentState", st.CurrentState, true}, {"desiredState", st.DesiredState, false}} {
		if part.sub == nil {
			continue
		}
		if hasCustomConfig(part.sub.RKEConfig) {
			plan.customConfig = append(plan.customConfig, part.field+".rkeConfig.services.kubeApi.secretsEncryptionConfig.customConfig")
		}
		text := part.sub.EncryptionConfig
		if strings.TrimSpace(text) == "" || text == current {
			continue
		}
		base := part.field + ".encryptionConfig"
		cfg, err := cluster.ParseEncryptionConfig(name, base, []byte(text), kmsAllowed)
		if err != nil {
			return nil, fmt.Errorf("adopt: %s: %s is not a valid EncryptionConfiguration:\n%w", name, base, err)
		}
		out = append(out, parsedConfig{where: name + ": " + base, deployed: part.deployed, cfg: cfg})
		if part.deployed {
			current = text
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: adopt: %s has no currentState.encryptionConfig or desiredState.encryptionConfig: RKE does not encrypt this cluster's secrets, so there is nothing to adopt", ErrInvalid, name)
	}
	return out, nil
}

// hasCustomConfig reports whether an RKE config carries a custom
// encryption config (services.kubeApi.secretsEncryptionConfig.customConfig).
func hasCustomConfig(raw json.RawMessage) bool {
	var c struct {
		Services struct {
			KubeAPI struct {
				SecretsEncryptionConfig struct {
					CustomConfig json.RawMessage `json:"customConfig"`
				} `json:"secretsEncryptionConfig"`
			} `json:"kubeApi"`
		} `json:"services"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &c) != nil {
		return false
	}
	cc := bytes.TrimSpace(c.Services.KubeAPI.SecretsEncryptionConfig.CustomConfig)
	return len(cc) > 0 && !bytes.Equal(cc, []byte("null"))
}

// walkConfig returns a validated config's inline keys in order, the name of
// the key that writes secrets ("" when identity or KMS does), and the KMS
// providers it holds.
func walkConfig(c *cluster.EncryptionConfig) (keys []cluster.Key, writer string, kms []string, err error) {
	var v1 apiserverv1.EncryptionConfiguration
	if err := yaml.Unmarshal(c.Render(), &v1); err != nil {
		return nil, "", nil, fmt.Errorf("decode validated config: %w", err)
	}
	writerSet := false
	for _, r := range v1.Resources {
		// ParseEncryptionConfig refuses wildcards ("*.", "*.*") and a
		// resource in two lists: one list names secrets, by name.
		coversSecrets := slices.Contains(r.Resources, "secrets")
		for i, p := range r.Providers {
			prov, list := cluster.V1ProviderKeys(p)
			if p.KMS != nil {
				kms = append(kms, "kms:"+p.KMS.APIVersion+":"+p.KMS.Name)
			}
			if coversSecrets && !writerSet && i == 0 {
				writerSet = true
				if len(list) > 0 {
					writer = list[0].Name
				}
			}
			for _, k := range list {
				secret, err := base64.StdEncoding.DecodeString(k.Secret)
				if err != nil {
					// ParseEncryptionConfig already checked this.
					return nil, "", nil, fmt.Errorf("key %s: secret is not base64", k.Name)
				}
				key := cluster.Key{Name: k.Name, Provider: prov, Secret: secret}
				if !slices.ContainsFunc(keys, func(o cluster.Key) bool { return o.Name == key.Name && o.Provider == key.Provider }) {
					keys = append(keys, key)
				}
			}
		}
	}
	return keys, writer, slices.Compact(kms), nil
}

// removal is the text telling the operator what to remove from RKE's state.
func (plan *adoptPlan) removal() string {
	names := make([]string, len(plan.keys))
	for i, k := range plan.keys {
		names[i] = k.Name
	}
	file := "cluster.rkestate"
	if len(plan.rkestates) > 0 {
		file = plan.rkestates[0]
	}
	q := shellQuote(file)
	var b strings.Builder
	fmt.Fprintf(&b, "Vault now holds keys %s. RKE keeps them in clear in its state; remove them there so that Vault holds the only copies:\n\n", strings.Join(names, ", "))
	fields := []string{"currentState.encryptionConfig", "desiredState.encryptionConfig"}
	fields = append(fields, plan.customConfig...)
	paths := make([]string, len(fields))
	for i, f := range fields {
		paths[i] = "." + f
	}
	// umask: the file still holds RKE's certificate keys; keep it 0600.
	fmt.Fprintf(&b, "1. In %s, delete %s:\n\n", file, andList(fields))
	fmt.Fprintf(&b, "     (umask 077 && jq 'del(%s)' %s > %s.new) && mv %s.new %s\n\n", strings.Join(paths, ", "), q, q, q, q)
	b.WriteString("2. RKE saves the same state in the cluster, in kube-system/full-cluster-state (a Secret in current RKE\n" +
		"   releases, a ConfigMap in older ones): delete the same fields there.\n\n")
	b.WriteString("3. Backups of " + filepath.Base(file) + " and the .zip archives of RKE etcd snapshots carry the keys too:\n" +
		"   protect them like Vault, or delete them once atrest's snapshots cover the same retention.\n\n")
	b.WriteString("From now on, run `atrest rke up` (and `atrest rke cert rotate`) instead of plain `rke up`: with\n" +
		"secrets_encryption_config enabled and a state that lacks these keys, RKE would generate a new key and\n" +
		"replace /etc/kubernetes/ssl/encryption.yaml with a config that cannot read the secrets encrypted with them.\n" +
		"atrest owns the provider file from now on.\n")
	return b.String()
}

func andList(items []string) string {
	if len(items) <= 1 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

// shellQuote quotes a file name for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
