// Package keystoretest reads what atrest keeps in a sandbox's Vault, for tests.
package keystoretest

import (
	"context"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/keystore"
	"github.com/atrest-io/atrest/sandbox"
)

// Keys reads every key of a cluster's keyring from the sandbox's Vault (as
// the sandbox's settings lay it out: mount secret, prefix atrest), so that
// a test can check none of them shows in what the code under test said.
func Keys(ctx context.Context, sb *sandbox.Sandbox, clusterName string) ([]cluster.Key, error) {
	ks, err := keystore.Open(ctx, keystore.Config{Address: sb.Vault.Address, CAFile: sb.Vault.CAFile, InsecureAllowHTTP: sb.Vault.PlainHTTP(), AuthMethod: keystore.AuthToken,
		TokenFile: sb.Vault.TokenFile, KVMount: "secret", Prefix: "atrest", Cluster: clusterName})
	if err != nil {
		return nil, err
	}
	defer ks.Close()
	kr, err := ks.Keyring(ctx)
	if err != nil {
		return nil, err
	}
	var out []cluster.Key
	for _, info := range kr.Keys {
		k, err := ks.Key(ctx, info.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}
