package sandbox

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdClient returns a client of the sandbox's etcd, with the client
// certificate atrest uses. The caller closes it.
func (sb *Sandbox) EtcdClient() (*clientv3.Client, error) {
	tlsCfg, err := sb.tlsConfig(sb.EtcdCertFile, sb.EtcdKeyFile)
	if err != nil {
		return nil, err
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{sb.EtcdEndpoint}, DialTimeout: 10 * time.Second, TLS: tlsCfg,
		Logger: zap.NewNop(), // its retry warnings would drown test output
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return c, nil
}

// RecreateAPIServer replaces node i's kube-apiserver container with one
// running RKE's flags plus extra (say, --encryption-provider-config=...),
// and waits until it is ready: how tests set up a node the way RKE would,
// without atrest.
func (sb *Sandbox) RecreateAPIServer(ctx context.Context, i int, extra ...string) error {
	if err := sb.RunAPIServer(ctx, i, extra...); err != nil {
		return err
	}
	return sb.WaitReady(ctx, i, 3*time.Minute)
}

// RunAPIServer is RecreateAPIServer without waiting for /readyz: as RKE
// does, which waits for /healthz (WaitHealthy).
func (sb *Sandbox) RunAPIServer(ctx context.Context, i int, extra ...string) error {
	if _, err := sb.Docker(ctx, i, "rm", "--force", "kube-apiserver"); err != nil {
		return err
	}
	args := []string{"run", "--detach", "--name=kube-apiserver", "--network=host", "--restart=always",
		"--label=io.rancher.rke.container.name=kube-apiserver",
		"--env=ATREST_SANDBOX_RELOAD_POLL=" + sb.opts.ReloadPoll.String(),
		"--volume=/etc/kubernetes:/etc/kubernetes:z", sb.KubeAPIServerImage(), "/usr/local/bin/kube-apiserver"}
	args = append(append(args, sb.APIServerArgs(sb.Nodes[i])...), extra...)
	_, err := sb.Docker(ctx, i, args...)
	return err
}

// ProviderConfigFlag is RKE's flag pointing kube-apiserver at the provider
// file, for RecreateAPIServer.
const ProviderConfigFlag = "--encryption-provider-config=/etc/kubernetes/ssl/encryption.yaml"
