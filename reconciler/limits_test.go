package reconciler

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/atrest-io/atrest/cluster"
)

// operatorDefaults are the limits of the default settings (policy.*).
var operatorDefaults = Limits{MinRotationInterval: time.Hour, MinSnapshotRetention: 2, AllowCustomConfig: true, AllowKMS: true}

// limitCase is one rule's input and what it says: "" for no refusal, else
// substrings of the message.
type limitCase struct {
	name string
	in   Input
	want []string
}

func runLimitRule(t *testing.T, rule func(Input) error, tests []limitCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rule(tt.in)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if ReasonOf(err) != ReasonBeyondOperatorLimit {
				t.Fatalf("got %v (%s), want %s", err, ReasonOf(err), ReasonBeyondOperatorLimit)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message does not say %q:\n%s", w, err)
				}
			}
			if strings.Contains(err.Error(), customSecret) {
				t.Errorf("message shows key material: %s", err)
			}
		})
	}
}

// scheduled is a managed desired state with atrest.yaml's schedule, as
// DesiredFrom resolves it.
func scheduled(t *testing.T, schedule string) Desired {
	t.Helper()
	d := Desired{Mode: cluster.Managed, Provider: cluster.AESCBC, Retention: cluster.DefaultRetention, Schedule: schedule}
	if schedule != "" {
		sched, err := cluster.ParseSchedule(schedule)
		if err != nil {
			t.Fatal(err)
		}
		d.ScheduleGap = cluster.ScheduleMinGap(sched)
	}
	return d
}

func TestRuleRotationInterval(t *testing.T) {
	floor := func(d time.Duration) Limits { return Limits{MinRotationInterval: d} }
	runLimitRule(t, ruleRotationInterval, []limitCase{
		{"no schedule", Input{Desired: scheduled(t, ""), Limits: floor(time.Hour)}, nil},
		{"daily", Input{Desired: scheduled(t, "0 3 * * *"), Limits: floor(time.Hour)}, nil},
		{"monthly", Input{Desired: scheduled(t, "CRON_TZ=UTC 0 3 1 * *"), Limits: floor(27 * 24 * time.Hour)}, nil},
		{"exactly the floor", Input{Desired: scheduled(t, "@every 1h"), Limits: floor(time.Hour)}, nil},
		{"no floor", Input{Desired: scheduled(t, "@every 30s"), Limits: floor(0)}, nil},
		{"every 30s", Input{Desired: scheduled(t, "@every 30s"), Limits: floor(time.Hour)}, []string{
			`atrest.yaml: rotation.schedule "@every 30s" fires every 30s, more often than the operator allows (settings policy.minRotationInterval 1h0m0s): each rotation is a snapshot, a deploy and a full rewrite; schedule less often or lower the setting`}},
		{"every 5 minutes", Input{Desired: scheduled(t, "*/5 * * * *"), Limits: floor(time.Hour)}, []string{
			`rotation.schedule "*/5 * * * *" fires as little as 5m0s apart`, "policy.minRotationInterval 1h0m0s"}},
		// The shortest gap counts, not the usual one.
		{"twice a night", Input{Desired: scheduled(t, "0 3,4 * * *"), Limits: floor(2 * time.Hour)}, []string{"fires as little as 1h0m0s apart"}},
		// February is shorter than a 30-day floor.
		{"monthly under a 30-day floor", Input{Desired: scheduled(t, "CRON_TZ=UTC 0 3 1 * *"), Limits: floor(30 * 24 * time.Hour)}, []string{"fires as little as 672h0m0s apart"}},
		{"disabled mode too", Input{Desired: Desired{Mode: cluster.Disabled, Schedule: "@every 30s", ScheduleGap: 30 * time.Second}, Limits: floor(time.Hour)}, []string{"fires every 30s"}},
	})
}

func TestRuleSnapshotRetention(t *testing.T) {
	kept := func(n int) Desired { return Desired{Mode: cluster.Managed, Retention: n} }
	runLimitRule(t, ruleSnapshotRetention, []limitCase{
		{"default retention", Input{Desired: kept(cluster.DefaultRetention), Limits: Limits{MinSnapshotRetention: 2}}, nil},
		{"at the floor", Input{Desired: kept(2), Limits: Limits{MinSnapshotRetention: 2}}, nil},
		{"no floor", Input{Desired: kept(1), Limits: Limits{}}, nil},
		{"below", Input{Desired: kept(1), Limits: Limits{MinSnapshotRetention: 2}}, []string{
			"atrest.yaml: snapshots.retention 1 keeps fewer snapshots than the operator allows (settings policy.minSnapshotRetention 2)", "keep at least 2 or lower the setting"}},
	})
}

func TestRuleCustomConfig(t *testing.T) {
	custom := customDesired(t)
	runLimitRule(t, ruleCustomConfig, []limitCase{
		{"allowed", Input{Desired: custom, Limits: Limits{AllowCustomConfig: true}}, nil},
		{"managed keys", Input{Desired: enable("r1"), Limits: Limits{}}, nil},
		{"disabled", Input{Desired: Desired{Mode: cluster.Disabled}, Limits: Limits{}}, nil},
		{"not allowed", Input{Desired: custom, Limits: Limits{}}, []string{
			"cluster.yml: services.kube-api.secrets_encryption_config.custom_config is given", "(settings policy.allowCustomConfig false)", "or set policy.allowCustomConfig true"}},
	})
}

func TestRuleKMS(t *testing.T) {
	kms := Desired{Mode: cluster.Custom, Custom: mustChains(kmsConfig)}
	runLimitRule(t, ruleKMS, []limitCase{
		{"allowed", Input{Desired: kms, Limits: Limits{AllowKMS: true}}, nil},
		{"custom without kms", Input{Desired: customDesired(t), Limits: Limits{}}, nil},
		{"managed keys", Input{Desired: enable("r1"), Limits: Limits{}}, nil},
		{"not allowed", Input{Desired: kms, Limits: Limits{}}, []string{
			"cluster.yml: custom_config gives secrets the kms provider kms:v2:vault-kms,", "(settings policy.allowKMS false)", "or set policy.allowKMS true"}},
	})
}

func TestRuleDisable(t *testing.T) {
	old := managed("k-old01")
	encrypted := Live{Nodes: []NodeLive{node("cp1", old), node("cp2", old)}, Census: map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 9}}}
	plain := Live{Nodes: []NodeLive{node("cp1", nil)}, Census: map[string]map[string]int64{"secrets": {cluster.PrefixIdentity: 9}}}
	// A disable halfway: every node writes plain, the census still holds
	// encrypted secrets (the rewrite has not run).
	halfway := Live{Nodes: []NodeLive{node("cp1", cluster.Chains{"secrets": {cluster.Identity, old["secrets"][0]}})},
		Census: map[string]map[string]int64{"secrets": {"aescbc:v1:k-old01": 4, cluster.PrefixIdentity: 5}}}
	disabled := Desired{Mode: cluster.Disabled}
	// A custom config that writes secrets plain, keeping the key to read.
	plainCustom := Desired{Mode: cluster.Custom, Custom: cluster.Chains{"secrets": {cluster.Identity, old["secrets"][0]}}}
	// One that encrypts configmaps only: secrets, no longer listed, are
	// written plain.
	otherResource := Desired{Mode: cluster.Custom, Custom: cluster.Chains{"configmaps": old["secrets"]}}
	// A custom config that encrypts secrets and configmaps, as it runs.
	customLive := Live{Nodes: []NodeLive{node("cp1", mustChains(customTwoResources))}}
	runLimitRule(t, ruleDisable, []limitCase{
		{"allowed", Input{Desired: disabled, Live: encrypted, Limits: Limits{AllowDisable: true}}, nil},
		{"nothing encrypted", Input{Desired: disabled, Live: plain}, nil},
		{"no nodes seen", Input{Desired: disabled}, nil},
		{"managed keys", Input{Desired: enable("r1"), Live: encrypted}, nil},
		{"custom that encrypts", Input{Desired: Desired{Mode: cluster.Custom, Custom: old}, Live: encrypted}, nil},
		{"custom plain on a plain cluster", Input{Desired: plainCustom, Live: plain}, nil},
		{"enabled false", Input{Desired: disabled, Live: encrypted}, []string{
			"cluster.yml: services.kube-api.secrets_encryption_config.enabled is false, but encryption at rest is in force (secrets written with aescbc:v1:k-old01 on node cp1)",
			"(settings policy.allowDisable false)", "enable it again in cluster.yml, or set policy.allowDisable true"}},
		{"enabled false, halfway", Input{Desired: disabled, Live: halfway}, []string{"in force (secrets 4 stored under aescbc:v1:k-old01)"}},
		{"custom writes plain", Input{Desired: plainCustom, Live: encrypted}, []string{
			"cluster.yml: custom_config writes secrets plain", "encrypted now (written with aescbc:v1:k-old01 on node cp1)", "put an encrypting provider first for secrets, or set policy.allowDisable true"}},
		{"custom drops a resource", Input{Desired: otherResource, Live: encrypted}, []string{"custom_config writes secrets plain"}},
		{"managed keys after a custom config of more", Input{Desired: enable("r1"), Live: customLive}, []string{
			"cluster.yml: managed keys encrypt secrets only, but configmaps are encrypted now (written with aescbc:v1:k-git01 on node cp1)", "keep the custom_config that encrypts them, or set policy.allowDisable true"}},
		{"managed keys after a custom config of more, allowed", Input{Desired: enable("r1"), Live: customLive, Limits: Limits{AllowDisable: true}}, nil},
	})
}

// The limits come after the rules of the world: a key material conflict
// is reported (and its node's material preserved) whatever the commit.
func TestLimitsAfterTheWorld(t *testing.T) {
	old := managed("k-old01")
	in := Input{
		Desired: Desired{Mode: cluster.Disabled},
		Live:    Live{Nodes: []NodeLive{node("cp1", old)}, EtcdPrefix: "/registry", Census: map[string]map[string]int64{}},
		Keyring: Keyring{Keys: []KeyState{{Name: "k-old01", Provider: cluster.AESCBC, Role: RolePrimary, Fingerprint: "sha256:other"}}},
	}
	if _, err := MakePlan(in); ReasonOf(err) != ReasonKeyMaterialConflict {
		t.Fatalf("MakePlan: %v, want %s first", err, ReasonKeyMaterialConflict)
	}
	// Once the conflict is gone, the zero Limits refuse the disable: a
	// Reconciler built without its limits does not obey such a commit.
	in.Keyring.Keys[0].Fingerprint = testFP("k-old01")
	if _, err := MakePlan(in); ReasonOf(err) != ReasonBeyondOperatorLimit {
		t.Fatalf("MakePlan: %v, want %s", err, ReasonBeyondOperatorLimit)
	}
}

// The attacker: a committer who may push to the repository, but not
// change atrest's settings, commits a rotation every 30 seconds (and then
// a disable). Apply, plan and status refuse it with the setting named;
// nothing is changed (no lock work beyond recovery, no deploy, no key,
// no journal); a commit within the limits lifts it.
func TestCommitBeyondLimitsChangesNothing(t *testing.T) {
	ctx := context.Background()
	e := newExecutor()
	e.r.Limits = operatorDefaults
	cfg, err := cluster.Parse("cluster.yml", []byte(`
nodes: [{address: 127.0.0.11, user: root, role: [controlplane]}]
services: {kube-api: {secrets_encryption_config: {enabled: true}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	commit := func(rev, atrestYAML string) Desired {
		t.Helper()
		p, err := cluster.ParsePolicy("atrest.yaml@"+rev, []byte(atrestYAML))
		if err != nil {
			t.Fatal(err)
		}
		return DesiredFrom(cfg, p, rev)
	}
	if _, err := e.r.Reconcile(ctx, commit("r1", "rotation:\n  schedule: \"@monthly\"\n")); err != nil {
		t.Fatalf("a commit within the limits: %v", err)
	}
	kr, err := e.keys.Keyring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keysBefore, appliesBefore, storedBefore := len(kr.Keys), e.nodes.applies, e.etcd.stored

	attack := commit("r2", "rotation:\n  schedule: \"@every 30s\"\n")
	for range 3 {
		_, err := e.r.Reconcile(ctx, attack)
		if StallReason(err) != ReasonBeyondOperatorLimit || !strings.Contains(err.Error(), `rotation.schedule "@every 30s" fires every 30s`) ||
			!strings.Contains(err.Error(), "settings policy.minRotationInterval 1h0m0s") {
			t.Fatalf("apply of the attack: %v (%s)", err, StallReason(err))
		}
	}
	st, err := StatusOf(ctx, e.r, attack)
	if err != nil || st.PlanReason != ReasonBeyondOperatorLimit || len(st.Plan) != 0 {
		t.Fatalf("status of the attack: %v, reason %q, plan %v", err, st.PlanReason, st.Plan)
	}
	live, kr, err := e.r.Observe(ctx, attack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MakePlan(e.r.Input(attack, live, kr, time.Now())); ReasonOf(err) != ReasonBeyondOperatorLimit {
		t.Fatalf("plan of the attack: %v", err)
	}
	if len(kr.Keys) != keysBefore || e.nodes.applies != appliesBefore || e.etcd.stored != storedBefore || kr.Journal != nil {
		t.Fatalf("the refused commit changed something: %d keys (was %d), %d deploys (was %d), stored %s (was %s), journal %+v",
			len(kr.Keys), keysBefore, e.nodes.applies, appliesBefore, e.etcd.stored, storedBefore, kr.Journal)
	}

	// A disable in the same way.
	off, err := cluster.Parse("cluster.yml", []byte(`
nodes: [{address: 127.0.0.11, user: root, role: [controlplane]}]
services: {kube-api: {secrets_encryption_config: {enabled: false}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Reconcile(ctx, DesiredFrom(off, cluster.DefaultPolicy(), "r3")); StallReason(err) != ReasonBeyondOperatorLimit ||
		!strings.Contains(err.Error(), "policy.allowDisable false") || e.etcd.stored != storedBefore || e.nodes.applies != appliesBefore {
		t.Fatalf("apply of a disable: %v; stored %s", err, e.etcd.stored)
	}

	// A commit within the limits lifts the refusal: here, the rotation the
	// attack wanted, once and by request.
	fix := commit("r4", "rotation:\n  schedule: \"0 3 * * *\"\n")
	fix.RotateRequest = "cli:now"
	res, err := e.r.Reconcile(ctx, fix)
	if err != nil || res.Transition != "rotate" {
		t.Fatalf("a commit within the limits: %v, %+v", err, res)
	}
}
