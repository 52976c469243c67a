// Package rke writes the files `rke up` reads, as RKE reads them: the
// cluster.yml that makes it deploy exactly the provider file atrest runs,
// the state file that makes it see no change to encryption, and the state
// stripped of every key afterwards. It also renders the provider files
// RKE itself deploys, so that tests can play a plain `rke up` faithfully.
//
// The renderings follow rancher/rke (v1.7, cluster/encryption.go,
// cluster/file-deployer.go and templates/encryption_provider.go); RKE
// cannot run where atrest is tested, since it pulls images.
package rke

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"

	"github.com/atrest-io/atrest/cluster"
)

// ProviderFilePath is where RKE deploys the provider file on every
// controlplane node.
const ProviderFilePath = "/etc/kubernetes/ssl/encryption.yaml"

// header is what RKE's CustomEncryptionProviderFile template puts before
// the custom config, which it encodes itself.
const header = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"

// CustomProviderFile is the provider file RKE makes of a custom_config
// (Cluster.readEncryptionCustomConfig): its template around the config
// encoded to JSON and then to YAML. It is what RKE keeps in the state's
// encryptionConfig and compares across runs. cfg is written without
// apiVersion and kind, as ClusterYML gives it to RKE: the template adds
// them, and twice would make kube-apiserver's strict decoding refuse it.
func CustomProviderFile(cfg *cluster.EncryptionConfig) (string, error) {
	body, err := customBody(cfg)
	if err != nil {
		return "", err
	}
	y, err := yaml.JSONToYAML(body)
	if err != nil {
		return "", fmt.Errorf("encode the custom config as RKE does: %w", err)
	}
	return header + string(y) + "\n", nil
}

// customBody is the config as JSON, without apiVersion and kind.
func customBody(cfg *cluster.EncryptionConfig) ([]byte, error) {
	var v1 apiserverv1.EncryptionConfiguration
	if err := yaml.Unmarshal(cfg.Render(), &v1); err != nil {
		return nil, fmt.Errorf("decode the rendered config: %w", err)
	}
	v1.APIVersion, v1.Kind = "", ""
	return json.Marshal(&v1)
}

// ManagedProviderFile is the provider file RKE makes of its own keys
// (templates.MultiKeyEncryptionProviderFile): aescbc with keys, newest
// first, then identity. A plain `rke up` with encryption enabled and no
// custom_config deploys it from cluster.rkestate, or from one key it
// generates when the state holds none.
func ManagedProviderFile(keys []cluster.Key) string {
	var b strings.Builder
	b.WriteString(header + "resources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:")
	for _, k := range keys {
		fmt.Fprintf(&b, "\n      - name: %s\n        secret: %s", k.Name, base64.StdEncoding.EncodeToString(k.Secret))
	}
	b.WriteString("\n  - identity: {}")
	return b.String()
}

// OnDisk is what RKE's file deployer leaves on a node for contents: it
// runs `echo -e "$FILE_DEPLOY" > $t && mv $t <file> && chmod 600 <file>`
// in a container, and echo adds a newline (the configs hold no
// backslash for -e to act on).
func OnDisk(contents string) []byte { return []byte(contents + "\n") }

// StateFilePath is where RKE reads and writes the state of the cluster
// whose cluster.yml is config (pki.GetStateFilePath): beside it, named
// after it, with the extension .rkestate.
func StateFilePath(config string) string {
	return strings.TrimSuffix(config, filepath.Ext(config)) + ".rkestate"
}

// KubeconfigPath is where `rke up` writes the admin kubeconfig of the
// cluster whose cluster.yml is config (pki.GetLocalKubeConfig).
func KubeconfigPath(config string) string {
	return filepath.Join(filepath.Dir(config), "kube_config_"+filepath.Base(config))
}

// GenerateKey is a key as RKE generates one (generateEncryptionKey): a
// name from norman's GenerateName("key"), and as material the 32
// uppercase hex digits of 16 random bytes, which aescbc takes as a
// 256-bit key.
func GenerateKey() (cluster.Key, error) {
	var buf [16]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return cluster.Key{}, err
	}
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	var suffix [5]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return cluster.Key{}, err
	}
	for i := range suffix {
		suffix[i] = alphabet[int(suffix[i])%len(alphabet)]
	}
	return cluster.Key{Name: "key-" + string(suffix[:]), Provider: cluster.AESCBC, Secret: []byte(fmt.Sprintf("%X", buf[:]))}, nil
}

// DeployedFrom is the provider file RKE deploys from a cluster.yml whose
// secrets_encryption_config has a custom_config, step for step as
// rancher/rke does it, independently of CustomProviderFile:
// ParseConfig's resolveCustomEncryptionConfig (the file decoded with
// ghodss/yaml, the custom_config mapping taken out), parseCustomConfig
// (its JSON into apiserverv1.EncryptionConfiguration) and
// readEncryptionCustomConfig (JSON, then YAML, into the template).
func DeployedFrom(clusterYML []byte) (string, error) {
	var r map[string]any
	if err := yaml.Unmarshal(clusterYML, &r); err != nil {
		return "", err
	}
	services, _ := r["services"].(map[string]any)
	kubeAPI, _ := services["kube-api"].(map[string]any)
	sec, _ := kubeAPI["secrets_encryption_config"].(map[string]any)
	custom, ok := sec["custom_config"].(map[string]any)
	if !ok {
		return "", fmt.Errorf("no services.kube-api.secrets_encryption_config.custom_config mapping")
	}
	data, err := json.Marshal(custom)
	if err != nil {
		return "", err
	}
	var decoded apiserverv1.EncryptionConfiguration
	if err := json.Unmarshal(data, &decoded); err != nil {
		return "", err
	}
	j, err := json.Marshal(&decoded)
	if err != nil {
		return "", err
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return "", err
	}
	return header + string(y) + "\n", nil
}
