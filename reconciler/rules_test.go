package reconciler

import (
	"errors"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
)

// node is a ready node running chains with the default etcd prefix.
func node(name string, cs cluster.Chains) NodeLive {
	n := NodeLive{Name: name, Ready: true, EtcdPrefix: "/registry"}
	if len(cs) > 0 {
		n.Flag, n.File, n.Chains = true, true, cloneChains(cs)
	}
	return n
}

// withFP is cs with key name's fingerprint replaced: the same name, other
// material.
func withFP(cs cluster.Chains, name, fp string) cluster.Chains {
	out := cloneChains(cs)
	for _, c := range out {
		for i := range c {
			if c[i].KeyName == name {
				c[i].Fingerprint = fp
			}
		}
	}
	return out
}

func TestRefusalRules(t *testing.T) {
	old := managed("k-old01")
	vault := Keyring{Keys: []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("k-old01")}}}
	census := map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 9}}
	customSame := Desired{Mode: cluster.Custom, Custom: withFP(old, "k-old01", "sha256:other")}
	tests := []struct {
		name     string
		in       Input
		reason   string
		want     []string // substrings of the message
		preserve []PreserveKey
	}{
		{
			name: "custom_config reuses a key name with other material",
			in: Input{Desired: customSame, Keyring: vault,
				Live: Live{Nodes: []NodeLive{node("cp1", old)}, Census: census, EtcdPrefix: "/registry"}},
			reason: ReasonKeyMaterialConflict,
			want: []string{"key k-old01: cluster.yml's custom_config holds other material (fingerprint sha256:other) than Vault",
				"Give the new key a new name, and keep the old one as a reader"},
		},
		{
			name: "custom_config reuses the name of a node's key Vault does not know yet",
			in: Input{Desired: customSame,
				Live: Live{Nodes: []NodeLive{node("cp1", old)}, Census: census, EtcdPrefix: "/registry"}},
			reason: ReasonKeyMaterialConflict,
			want:   []string{"key k-old01: cluster.yml's custom_config holds other material (fingerprint sha256:other) than node cp1's provider file"},
			// The node's file may be the only copy of what etcd holds.
			preserve: []PreserveKey{{Node: "cp1", Name: "k-old01", Provider: cluster.AESCBC, Fingerprint: testFP("k-old01")}},
		},
		{
			name: "a node holds a known name with other material",
			in: Input{Desired: Desired{Mode: cluster.Managed, Provider: cluster.AESCBC}, Keyring: vault,
				Live: Live{Nodes: []NodeLive{node("cp1", old), node("cp2", withFP(old, "k-old01", "sha256:hand"))}, Census: census, EtcdPrefix: "/registry"}},
			reason:   ReasonKeyMaterialConflict,
			want:     []string{"key k-old01: node cp2's provider file holds other material (fingerprint sha256:hand) than Vault", "kept in Vault"},
			preserve: []PreserveKey{{Node: "cp2", Name: "k-old01", Provider: cluster.AESCBC, Fingerprint: "sha256:hand"}},
		},
		{
			name: "two nodes hold one name with two materials, neither in Vault",
			in: Input{Desired: Desired{Mode: cluster.Managed, Provider: cluster.AESCBC},
				Live: Live{Nodes: []NodeLive{node("cp1", old), node("cp2", withFP(old, "k-old01", "sha256:hand"))}, Census: census, EtcdPrefix: "/registry"}},
			reason: ReasonKeyMaterialConflict,
			want:   []string{"node cp2's provider file holds other material (fingerprint sha256:hand) than node cp1's provider file"},
			preserve: []PreserveKey{{Node: "cp1", Name: "k-old01", Provider: cluster.AESCBC, Fingerprint: testFP("k-old01")},
				{Node: "cp2", Name: "k-old01", Provider: cluster.AESCBC, Fingerprint: "sha256:hand"}},
		},
		{
			name: "nodes disagree on the etcd prefix",
			in: Input{Desired: Desired{Mode: cluster.Disabled},
				Live: Live{Nodes: []NodeLive{node("cp1", nil), func() NodeLive { n := node("cp2", nil); n.EtcdPrefix = "/other"; return n }()}}},
			reason: ReasonEtcdPrefix,
			want:   []string{"different --etcd-prefix values (cp1 /registry, cp2 /other)"},
		},
		{
			name: "cluster.yml's etcd path is not what the apiservers run",
			in: Input{Desired: Desired{Mode: cluster.Disabled, EtcdPrefix: "/etcdcluster"},
				Live: Live{Nodes: []NodeLive{node("cp1", nil)}, Census: map[string]map[string]int64{}, EtcdPrefix: "/registry"}},
			reason: ReasonEtcdPrefix,
			want:   []string{"cluster.yml gives kube-apiserver --etcd-prefix /etcdcluster", "run with /registry"},
		},
		{
			name: "an apiserver serves that is no managed node",
			in: Input{Desired: Desired{Mode: cluster.Disabled},
				Live: Live{Nodes: []NodeLive{node("cp1", nil)}, Census: map[string]map[string]int64{}, EtcdPrefix: "/registry",
					Unmanaged: []string{"kube-apiserver on host cp9 (lease apiserver-abc)"}}},
			reason: ReasonUnmanagedAPIServer,
			want:   []string{"kube-apiserver on host cp9 (lease apiserver-abc)", "no controlplane node of cluster.yml"},
		},
		{
			name: "an unloaded file that would write with a key another node cannot read",
			in: Input{Desired: Desired{Mode: cluster.Managed, Provider: cluster.AESCBC},
				Keyring: Keyring{Keys: append(vault.Keys, KeyState{Name: "k-new01", Provider: cluster.AESCBC, Role: RoleReader, Fingerprint: testFP("k-new01")})},
				Live: Live{Nodes: []NodeLive{
					func() NodeLive {
						n := node("cp1", cluster.Chains{"secrets": {testKey(cluster.AESCBC, "k-new01"), testKey(cluster.AESCBC, "k-old01"), cluster.Identity}})
						n.Unloaded = true
						return n
					}(), node("cp2", old)}, Census: census, EtcdPrefix: "/registry"}},
			reason: ReasonUnloadedConfig,
			want:   []string{"node cp1: its provider file was written after its kube-apiserver started", "aescbc:v1:k-new01, which node cp2 cannot read"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MakePlan(tt.in)
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("MakePlan: %v, want a refusal", err)
			}
			if r.Reason != tt.reason || ReasonOf(err) != tt.reason {
				t.Errorf("reason %q, want %q", r.Reason, tt.reason)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.Message, w) {
					t.Errorf("message %q\nlacks %q", r.Message, w)
				}
			}
			if len(r.Preserve) != len(tt.preserve) {
				t.Fatalf("preserve %+v, want %+v", r.Preserve, tt.preserve)
			}
			for i := range tt.preserve {
				if r.Preserve[i] != tt.preserve[i] {
					t.Errorf("preserve[%d] = %+v, want %+v", i, r.Preserve[i], tt.preserve[i])
				}
			}
		})
	}
}

// A node running a file atrest cannot model (a wildcard, a resource in two
// lists) is observed as unreadable, and the plan refuses, naming the field
// and the fix; nothing is planned from what atrest cannot read.
func TestNodeRunningUnmodelledFileIsRefused(t *testing.T) {
	const head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
	for _, tt := range []struct{ name, file, want string }{
		{"wildcard", head + "- resources: ['*.*']\n  providers:\n  - identity: {}\n",
			`resources[0].resources[0]: "*.*" is a wildcard, and atrest cannot census or rewrite a wildcard: list the resources`},
		{"resource in two lists", head + "- resources: [secrets]\n  providers:\n  - identity: {}\n- resources: [secrets]\n  providers:\n  - identity: {}\n",
			`resources[1].resources[0]: resource "secrets" is also listed at resources[0].resources[0]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := controlplane.NodeState{Node: "cp1", Ready: true, File: controlplane.ProviderFile{Present: true, Data: []byte(tt.file)}}
			_, err := (&Reconciler{}).parseNodeFile(s)
			if err == nil {
				t.Fatal("parseNodeFile read it")
			}
			n := NodeLive{Name: "cp1", Ready: true, Flag: true, File: true, EtcdPrefix: "/registry", FileError: err.Error()}
			_, err = MakePlan(Input{Desired: Desired{Mode: cluster.Disabled}, Live: Live{Nodes: []NodeLive{n}, EtcdPrefix: "/registry"}})
			if ReasonOf(err) != ReasonUnreadableFile || !strings.Contains(err.Error(), "node cp1 provider file: "+tt.want) {
				t.Fatalf("MakePlan: %v (%s)\nwant %s naming %q", err, ReasonOf(err), ReasonUnreadableFile, tt.want)
			}
		})
	}
}

// A crash between writing stage 1's file to a node and restarting its
// kube-apiserver leaves a node whose file says [old, new] while it runs
// [old]: the next plan restarts it on its file before any stage goes on,
// so that stage 2 never makes a node write with a key this one cannot
// read.
func TestPlanReloadsUnloadedNodeFirst(t *testing.T) {
	old := managed("k-old01")
	w := newWorld(t, 3, old, map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 9}})
	w.keyring.Keys = []KeyState{
		{Name: "k-old01", Provider: cluster.AESCBC, Role: RoleReader, Fingerprint: testFP("k-old01")},
		{Name: "k-new01", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: testFP("k-new01")},
	}
	w.desired = Desired{Mode: cluster.Managed, Provider: cluster.AESCBC}
	stage1 := cluster.Chains{"secrets": {testKey(cluster.AESCBC, "k-old01"), testKey(cluster.AESCBC, "k-new01"), cluster.Identity}}
	w.nodes[1].Chains, w.nodes[1].Unloaded = cloneChains(stage1), true

	p := w.plan()
	if got := kinds(p.Steps); got != "snapshot reload" {
		t.Fatalf("plan %q, want the unloaded node restarted first:\n%s", got, stepList(p))
	}
	if s := p.Steps[1]; s.Node != "node2" || s.Expect != "aescbc:v1:k-old01" {
		t.Fatalf("reload step %+v", s)
	}
	if len(p.Drift) == 0 || !strings.Contains(strings.Join(p.Drift, "\n"), "node node2: the provider file changed after kube-apiserver started") {
		t.Fatalf("drift %q", p.Drift)
	}
	w.converge()
	w.assertConverged(managed("k-new01"))
}

// The planner compares material, not names: a node that runs a chain with
// the right names but other material under them is not "as Git says".
func TestPlanChainsCompareMaterial(t *testing.T) {
	a := managed("k-old01")
	b := withFP(a, "k-old01", "sha256:other")
	if a.Equal(b) {
		t.Fatal("chains with one key name and two materials compare equal")
	}
}
