package reconciler

import (
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

func TestDesiredFrom(t *testing.T) {
	cfg, err := cluster.Parse("cluster.yml", []byte(`
nodes: [{address: 127.0.0.11, user: root, role: [controlplane]}]
rotate_encryption_key: true
services: {kube-api: {secrets_encryption_config: {enabled: true}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := cluster.DefaultPolicy()
	p.Provider = cluster.Secretbox
	d := DesiredFrom(cfg, p, "abc123")
	if d.Mode != cluster.Managed || d.Provider != cluster.Secretbox || d.RotateRequest != "commit:abc123" || d.Revision != "abc123" {
		t.Fatalf("desired = %+v", d)
	}
	// Without a revision (a local file), rotate_encryption_key cannot be
	// told apart from the last run's: it is not a request.
	if d := DesiredFrom(cfg, p, ""); d.RotateRequest != "" {
		t.Fatalf("local file requested a rotation: %+v", d)
	}
	custom, err := cluster.Load("../cluster/testdata/custom-aescbc.yml")
	if err != nil {
		t.Fatal(err)
	}
	d = DesiredFrom(custom, p, "r")
	if d.Mode != cluster.Custom || d.Custom["secrets"].Writer() != "aescbc:v1:k-fw5hn" || d.CustomConfig == nil {
		t.Fatalf("custom desired = %+v", d)
	}
}
