package cluster

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// VaultTransit is the managed provider whose key never leaves Vault: KMS v2
// through atrest's own plugin (`atrest kms-plugin`), which wraps
// kube-apiserver's data keys with a Vault Transit key.
const VaultTransit Provider = "vault-transit"

// The KMS v2 provider atrest deploys for VaultTransit. Its socket is in a
// directory under /etc/kubernetes, which RKE binds into kube-apiserver's
// container, so no extra_binds are needed.
const (
	// TransitProviderName names the provider in the config, and so the
	// storage prefix of what it writes: k8s:enc:kms:v2:atrest-vault-transit:.
	TransitProviderName = "atrest-vault-transit"
	// KMSSocketDir is the plugin's socket directory on every node.
	KMSSocketDir = "/etc/kubernetes/atrest-kms"
	// KMSSocket is the plugin's socket.
	KMSSocket = KMSSocketDir + "/kms.sock"
	// TransitTimeout bounds each call kube-apiserver makes to the plugin.
	TransitTimeout = 5 * time.Second
)

// TransitEntry is the chain entry of the managed VaultTransit provider.
func TransitEntry() ProviderEntry {
	return ProviderEntry{Kind: KindKMS, KMS: &KMS{APIVersion: "v2", Name: TransitProviderName, Endpoint: "unix://" + KMSSocket, Timeout: TransitTimeout}}
}

// TransitPrefix is the storage prefix of values the managed VaultTransit
// provider writes ("kms:v2:atrest-vault-transit").
var TransitPrefix = TransitEntry().Prefix()

// IsTransit reports whether e is the managed VaultTransit provider, by its
// name and API version: the name is what the stored values carry.
func (e ProviderEntry) IsTransit() bool {
	return e.Kind == KindKMS && e.KMS != nil && e.KMS.APIVersion == "v2" && e.KMS.Name == TransitProviderName
}

// TransitKeyID is the KMS v2 key_id of version v of a Transit key:
// "transit/atrest-prod:v3". kube-apiserver stores it in clear in every
// value's envelope, so the census can tell which version wraps what.
func TransitKeyID(mount, key string, v int) string {
	return strings.Trim(mount, "/") + "/" + key + ":v" + strconv.Itoa(v)
}

// ParseTransitKeyID splits a key_id TransitKeyID made; ok is false for any
// other key_id.
func ParseTransitKeyID(id string) (mount, key string, v int, ok bool) {
	i := strings.LastIndex(id, ":v")
	if i < 0 {
		return "", "", 0, false
	}
	n, err := strconv.Atoi(id[i+2:])
	if err != nil || n <= 0 || strconv.Itoa(n) != id[i+2:] {
		return "", "", 0, false
	}
	j := strings.LastIndex(id[:i], "/")
	if j <= 0 || j == i-1 {
		return "", "", 0, false
	}
	return id[:j], id[j+1 : i], n, true
}

// KMSv2KeyID reads the key_id from a value a KMS v2 provider stored
// ("k8s:enc:kms:v2:NAME:" and the EncryptedObject protobuf), without
// copying or decrypting anything; ok is false for any other value. The
// key_id is field 2 of the envelope, a string kube-apiserver keeps under
// 1 kB.
func KMSv2KeyID(value []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(value, []byte("k8s:enc:kms:v2:"))
	if !ok {
		return "", false
	}
	i := bytes.IndexByte(rest[:min(len(rest), 512)], ':')
	if i <= 0 {
		return "", false
	}
	b := rest[i+1:]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		if num == 2 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || len(v) > 1024 {
				return "", false
			}
			return string(v), true
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
	}
	return "", false
}

// KeyIDLabel is how the census names a KMS v2 key_id under a storage
// prefix: "kms:v2:NAME key_id".
func KeyIDLabel(prefix, keyID string) string { return fmt.Sprintf("%s %s", prefix, keyID) }

// PluginCredential is what the KMS plugin on one node logs in to Vault
// with: an AppRole's role id and a secret id issued for that node alone,
// so that one node's credential is revoked without the others'.
type PluginCredential struct {
	RoleID   string
	SecretID Secret // redacted in every output
	// Accessor names the secret id without being it: what revokes it.
	Accessor string
}
