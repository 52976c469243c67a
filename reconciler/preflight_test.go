package reconciler

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
)

// customSecret is the material of customTwoResources' key.
const customSecret = "RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I="

func customDesired(t *testing.T) Desired {
	t.Helper()
	cfg, err := cluster.ParseEncryptionConfig("custom_config", "", []byte(customTwoResources), "")
	if err != nil {
		t.Fatal(err)
	}
	return Desired{Mode: cluster.Custom, Custom: cfg.Chains(), CustomConfig: cfg, Revision: "r1"}
}

func TestNeedsOf(t *testing.T) {
	kms := func(endpoint string) cluster.ProviderEntry {
		return cluster.ProviderEntry{Kind: cluster.KindKMS, KMS: &cluster.KMS{APIVersion: "v2", Name: "p-" + endpoint, Endpoint: endpoint}}
	}
	aescbc := cluster.KeyEntry(cluster.AESCBC, "k-abcde", "sha256:x")
	for _, tc := range []struct {
		name    string
		steps   []Step
		rewrite []string
		nodes   controlplane.PreflightRequest
	}{
		{"empty plan", nil, nil, controlplane.PreflightRequest{}},
		{"import and snapshot need nothing of the nodes", []Step{{Kind: StepImportKeys, Keys: []string{"k-abcde"}}, {Kind: StepSnapshot}, {Kind: StepGenerateKey}},
			nil, controlplane.PreflightRequest{}},
		{"a deploy writes the provider file", []Step{{Kind: StepDeploy, Chains: cluster.Chains{"secrets": {aescbc, cluster.Identity}}}},
			nil, controlplane.PreflightRequest{ProviderFile: true}},
		{"a reload loads it", []Step{{Kind: StepReload, Node: "cp1"}}, nil, controlplane.PreflightRequest{ProviderFile: true}},
		{"removing the config needs no mount", []Step{{Kind: StepRewrite, Resources: []string{"secrets"}}, {Kind: StepRemoveConfig}},
			[]string{"secrets"}, controlplane.PreflightRequest{}},
		{"rewrites, every resource once", []Step{{Kind: StepRewrite, Resources: []string{"secrets", "configmaps"}}, {Kind: StepVerify, Resources: []string{"secrets"}}, {Kind: StepRewrite, Resources: []string{"secrets"}}},
			[]string{"configmaps", "secrets"}, controlplane.PreflightRequest{}},
		{"KMS endpoints of every deploy, once each", []Step{
			{Kind: StepDeploy, Chains: cluster.Chains{"secrets": {cluster.Identity, kms("unix:///var/run/kms/b.sock")}}},
			{Kind: StepDeploy, Chains: cluster.Chains{"secrets": {kms("unix:///var/run/kms/b.sock"), cluster.Identity}, "configmaps": {kms("unix:///var/run/kms/a.sock"), aescbc}}},
			{Kind: StepRewrite, Resources: []string{"configmaps", "secrets"}},
		}, []string{"configmaps", "secrets"}, controlplane.PreflightRequest{ProviderFile: true, KMSEndpoints: []string{"unix:///var/run/kms/a.sock", "unix:///var/run/kms/b.sock"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := needsOf(&Plan{Steps: tc.steps})
			if !slices.Equal(n.rewrite, tc.rewrite) || n.nodes.ProviderFile != tc.nodes.ProviderFile || !slices.Equal(n.nodes.KMSEndpoints, tc.nodes.KMSEndpoints) {
				t.Errorf("needs: rewrite %q, nodes %+v; want %q, %+v", n.rewrite, n.nodes, tc.rewrite, tc.nodes)
			}
		})
	}
}

func TestPreflightRefusal(t *testing.T) {
	ok := PreflightCheck{Subject: "node cp1", What: "sudo"}
	for _, tc := range []struct {
		name   string
		checks []PreflightCheck
		want   []string // in the message; nil: no refusal
	}{
		{"nothing checked", nil, nil},
		{"all passed", []PreflightCheck{ok, {Subject: "resource secrets", What: "served by the API"}}, nil},
		{"every failure named, not just the first", []PreflightCheck{
			ok,
			{Subject: "node cp1", What: "KMS socket unix:///a.sock", Problem: "no socket at /a.sock"},
			{Subject: "node cp2", What: "KMS socket unix:///a.sock", Problem: "no socket at /a.sock"},
			{Subject: "resource configmaps", What: "list, get, update across all namespaces", Problem: "may not list"},
		}, []string{"preflight: 3 of 4 checks failed, so nothing was changed:",
			"\n  - node cp1: KMS socket unix:///a.sock: no socket at /a.sock",
			"\n  - node cp2: KMS socket unix:///a.sock: no socket at /a.sock",
			"\n  - resource configmaps: list, get, update across all namespaces: may not list"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := PreflightResult{Checks: tc.checks}.Refusal()
			if (r != nil) != (tc.want != nil) {
				t.Fatalf("refusal %v, want one: %v", r, tc.want != nil)
			}
			if r == nil {
				return
			}
			if r.Reason != ReasonPreflightFailed || strings.Contains(r.Message, "sudo") {
				t.Errorf("refusal %s: %s", r.Reason, r.Message)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.Message, w) {
					t.Errorf("message %q does not say %q", r.Message, w)
				}
			}
		})
	}
}

func TestRBACFix(t *testing.T) {
	for res, want := range map[string]string{
		"configmaps":       "add configmaps to the chart's rbac.extraResources ({resource: configmaps}), or grant list, get, update on it",
		"deployments.apps": "add deployments.apps to the chart's rbac.extraResources ({resource: deployments, apiGroup: apps}), or grant list, get, update on it",
	} {
		if got := rbacFix(res); got != want {
			t.Errorf("rbacFix(%s) = %q, want %q", res, got, want)
		}
	}
}

// A custom config covering configmaps, without the permission to rewrite
// them, is refused before anything changes: no step, no journal entry, no
// import into Vault, no snapshot, no node touched.
func TestPreflightRefusesBeforeAnyChange(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	e.rw.denied = []string{"configmaps"}
	res, err := e.r.Reconcile(ctx, customDesired(t))
	if ReasonOf(err) != ReasonPreflightFailed {
		t.Fatalf("reconcile: %v, want a %s refusal", err, ReasonPreflightFailed)
	}
	msg := err.Error()
	for _, want := range []string{"plan: preflight: 1 of", "resource configmaps", "list, get, update", "rbac.extraResources"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal does not say %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, customSecret) {
		t.Error("the refusal shows key material")
	}
	if StallReason(err) != ReasonPreflightFailed {
		t.Errorf("stall reason %q, want %s: a refusal needs a person", StallReason(err), ReasonPreflightFailed)
	}
	if len(res.Steps) != 0 || e.nodes.applies != 0 || e.etcd.saves != 0 || e.nodes.file != nil {
		t.Errorf("steps %v, %d deploys, %d snapshots, node file %v: want nothing done", res.Steps, e.nodes.applies, e.etcd.saves, e.nodes.file != nil)
	}
	kr, _ := e.keys.Keyring(ctx)
	if kr.Journal != nil || len(kr.Keys) != 0 || len(e.keys.keys) != 0 || e.keys.version != 0 {
		t.Errorf("keyring changed: journal %+v, keys %v, %d in Vault, version %d", kr.Journal, kr.Keys, len(e.keys.keys), e.keys.version)
	}
	if !e.locker.last.released {
		t.Error("the lock was not released")
	}
	// The fix lifts it: the same reconcile now runs to the end, and
	// checks once however many steps it runs.
	e.rw.denied = nil
	e.rw.preflights, e.nodes.preflights = nil, nil
	res, err = e.r.Reconcile(ctx, customDesired(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) < 4 || e.nodes.applies == 0 {
		t.Errorf("after the fix: steps %v, %d deploys", res.Steps, e.nodes.applies)
	}
	if len(e.rw.preflights) != 1 || !slices.Equal(e.rw.preflights[0], []string{"configmaps", "secrets"}) {
		t.Errorf("rewrite preflights %q, want one, of configmaps and secrets", e.rw.preflights)
	}
	if len(e.nodes.preflights) != 1 || !e.nodes.preflights[0].ProviderFile {
		t.Errorf("node preflights %+v, want one, for the provider file", e.nodes.preflights)
	}
	// Converged: nothing to do, nothing to check.
	if _, err := e.r.Reconcile(ctx, customDesired(t)); err != nil || len(e.rw.preflights) != 1 || len(e.nodes.preflights) != 1 {
		t.Errorf("converged reconcile: %v, %d and %d preflights, want none more", err, len(e.rw.preflights)-1, len(e.nodes.preflights)-1)
	}
}

// What a node lacks is refused the same way, every node and every check
// named.
func TestPreflightNodeChecks(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	e.nodes.missing = func(req controlplane.PreflightRequest) []string {
		if req.ProviderFile {
			return []string{"provider file mount"}
		}
		return nil
	}
	e.rw.denied = []string{"secrets"}
	_, err := e.r.Reconcile(ctx, enable("r1"))
	if ReasonOf(err) != ReasonPreflightFailed {
		t.Fatalf("reconcile: %v, want a %s refusal", err, ReasonPreflightFailed)
	}
	for _, want := range []string{"3 of 5 checks failed", "node cp1: provider file mount", "node cp2: provider file mount", "resource secrets"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal does not say %q:\n%v", want, err)
		}
	}
	if e.nodes.applies != 0 || e.etcd.saves != 0 || e.keys.version != 0 {
		t.Errorf("%d deploys, %d snapshots, keyring version %d: want nothing changed", e.nodes.applies, e.etcd.saves, e.keys.version)
	}
}

func TestDiscoveredFind(t *testing.T) {
	d := discovered{
		lists: []*metav1.APIResourceList{
			{GroupVersion: "v1", APIResources: []metav1.APIResource{{Name: "secrets"}, {Name: "configmaps"}}},
			{GroupVersion: "apps/v1", APIResources: []metav1.APIResource{{Name: "deployments"}}},
		},
		failed: map[schema.GroupVersion]error{{Group: "metrics.k8s.io", Version: "v1beta1"}: errors.New("503")},
	}
	for _, tc := range []struct {
		resource string
		want     schema.GroupVersionResource
		unserved string // "" when served
	}{
		{"configmaps", schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, ""},
		{"deployments.apps", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, ""},
		{"deployments", schema.GroupVersionResource{}, `the API server serves no resource "deployments"`},
		{"widgets.example.com", schema.GroupVersionResource{}, `the API server serves no resource "widgets.example.com"`},
		{"pods.metrics.k8s.io", schema.GroupVersionResource{}, `the API server serves no resource "pods.metrics.k8s.io": the discovery of metrics.k8s.io/v1beta1 failed (503)`},
	} {
		t.Run(tc.resource, func(t *testing.T) {
			got, ok := d.find(tc.resource)
			if got != tc.want || ok != (tc.unserved == "") {
				t.Errorf("find = %v, %v; want %v", got, ok, tc.want)
			}
			if !ok && d.unserved(tc.resource) != tc.unserved {
				t.Errorf("unserved = %q, want %q", d.unserved(tc.resource), tc.unserved)
			}
		})
	}
}
