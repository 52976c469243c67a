package cluster

import (
	"bytes"
	"strings"
)

// Storage prefixes of values kube-apiserver writes to etcd, as census keys.
const (
	// PrefixIdentity: a plain value (protobuf "k8s\x00..." or JSON "{...}").
	PrefixIdentity = "identity"
	// PrefixUnknown: a value that is neither plain nor a known envelope.
	PrefixUnknown = "unknown"
)

var encPrefix = []byte("k8s:enc:")

// StoragePrefix names how a value stored in etcd was written:
// "aescbc:v1:k-abcde", "aesgcm:v1:NAME", "secretbox:v1:NAME",
// "kms:v1:NAME", "kms:v2:NAME", PrefixIdentity or PrefixUnknown. It reads
// only the prefix, never the ciphertext.
func StoragePrefix(value []byte) string {
	if rest, ok := bytes.CutPrefix(value, encPrefix); ok {
		// provider:version:name: — the name ends at the next colon.
		head := rest[:min(len(rest), 512)]
		parts := strings.SplitN(string(head), ":", 4)
		if len(parts) == 4 && parts[0] != "" && parts[1] != "" && parts[2] != "" {
			return parts[0] + ":" + parts[1] + ":" + parts[2]
		}
		return PrefixUnknown
	}
	if bytes.HasPrefix(value, []byte("k8s\x00")) || bytes.HasPrefix(bytes.TrimLeft(value, " \t\r\n"), []byte("{")) {
		return PrefixIdentity
	}
	return PrefixUnknown
}
