package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/atrest-io/atrest/api"
	"github.com/atrest-io/atrest/etcdsnap"
	"github.com/atrest-io/atrest/reconciler"
)

// Output formats of -o.
var outputFormats = []string{"text", "json", "yaml"}

// outputFlag binds -o/--output to format.
func outputFlag(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVarP(format, "output", "o", "text", "text, json or yaml: json and yaml are atrest's documented documents (package api), with a kind and an apiVersion")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
}

// checkOutput refuses a format -o does not know, before anything is done.
func checkOutput(format string) error {
	if !slices.Contains(outputFormats, format) {
		return fmt.Errorf("--output %q: use text, json or yaml", format)
	}
	return nil
}

// printDoc writes doc as format: text by the text function, json or yaml
// as the document itself. The one printer of every command with -o.
func printDoc(w io.Writer, format string, doc any, text func(io.Writer) error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case "yaml":
		b, err := yaml.Marshal(doc)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return text(w)
}

// statusDoc is st as its documented document.
func statusDoc(st *reconciler.Status, now time.Time) api.Status {
	out := api.Status{TypeMeta: api.Meta("Status"), Census: st.Census, KeyIDs: st.KeyIDs, LastRotation: st.LastRotation,
		DeployedHash: st.DeployedHash, Plan: st.Plan, Drift: st.Drift, PlanError: st.PlanError, PlanReason: st.PlanReason,
		RotationPending: st.RotationPending, SnapshotsError: st.SnapshotsError}
	if out.Census == nil {
		out.Census = map[string]map[string]int64{}
	}
	if out.Plan == nil {
		out.Plan = []string{}
	}
	out.Nodes = []api.Node{}
	for _, n := range st.Nodes {
		an := api.Node{Name: n.Name, Ready: n.Ready, NotReady: n.NotReady, Flag: n.Flag, FileSHA256: n.FileSHA256, ConfigHash: n.ConfigHash, Config: n.Config, Error: n.Error}
		if p := n.Plugin; p != nil {
			an.Plugin = &api.Plugin{Current: p.Current, Present: p.Present, Healthy: p.Healthy, KeyID: p.KeyID, Problem: p.Problem}
		}
		out.Nodes = append(out.Nodes, an)
	}
	out.Keys = []api.Key{}
	for _, k := range st.Keys {
		out.Keys = append(out.Keys, api.Key{Name: k.Name, Provider: string(k.Provider), Role: string(k.Role), Created: k.Created, Fingerprint: k.Fingerprint, Outside: k.Outside})
	}
	if t := st.Transit; t != nil {
		out.Transit = &api.Transit{Mount: t.Mount, Key: t.Key, Exists: t.Exists, Latest: t.Latest, MinDecryption: t.MinDecryption, KeyID: t.KeyID, Problem: t.Problem}
	}
	if j := st.Journal; j != nil {
		tr := &api.Transition{ID: j.ID, Name: j.Transition, Revision: j.Revision, Snapshot: j.Snapshot, Started: j.Started, Steps: []api.Step{}}
		for _, s := range j.Steps {
			tr.Steps = append(tr.Steps, api.Step{Name: s.Name, Detail: s.Detail, State: string(s.State), Started: s.Started, Finished: s.Finished, Error: s.Error, Attempts: s.Attempts})
		}
		out.Transition = tr
	}
	if s := st.Stall; s != nil {
		out.Stall = &api.Stall{Reason: s.Reason, Message: s.Message, Step: s.Step, Revision: s.Revision, Since: s.Since}
	}
	if f := st.Failure; f != nil {
		out.Failure = &api.Failure{Step: f.Step, Count: f.Count, Last: f.Last, Error: f.Error}
	}
	for _, p := range st.Snapshots {
		sp := api.SnapshotProof{Name: p.Name, Time: p.Time, Reason: p.Reason, Verdict: p.Verdict, Proven: p.Proven, Summary: p.Summary}
		for _, f := range p.Failures {
			sp.Failures = append(sp.Failures, api.SnapshotFailure{Resource: f.Resource, Object: f.Object, Prefix: f.Prefix, Reason: f.Reason})
		}
		out.Snapshots = append(out.Snapshots, sp)
	}
	for _, d := range st.Daemons {
		out.Daemons = append(out.Daemons, api.Daemon{Instance: d.Instance, Version: d.Version, Heartbeat: d.Heartbeat, Stale: d.Stale(now),
			Revision: d.Revision, Refused: d.Refused, Suspended: d.Suspended, LastReconcile: d.LastReconcile, Result: d.Result,
			Error: d.Error, Failures: d.Failures, NextRetry: d.NextRetry, Schedule: d.Schedule, NextRotation: d.NextRotation,
			Stalled: d.Stalled, Step: d.Step})
	}
	return out
}

// planDoc is a plan (or the refusal to make one) as its documented
// document.
func planDoc(desired, origin string, live reconciler.Live, plan *reconciler.Plan, pf *reconciler.PreflightResult, refused error) api.Plan {
	out := api.Plan{TypeMeta: api.Meta("Plan"), Desired: desired, Origin: origin, Census: live.Census, Nodes: []api.PlanNode{}, Steps: []string{}}
	if out.Census == nil {
		out.Census = map[string]map[string]int64{}
	}
	for _, n := range live.Nodes {
		out.Nodes = append(out.Nodes, api.PlanNode{Name: n.Name, Ready: n.Ready, Config: describeChains(n.Running())})
	}
	if refused != nil {
		out.Refused, out.Reason = refused.Error(), reconciler.ReasonOf(refused)
		return out
	}
	out.Transition, out.Drift, out.Warnings = plan.Transition, plan.Drift, plan.Warnings
	for _, s := range plan.Steps {
		out.Steps = append(out.Steps, s.String())
	}
	if pf != nil {
		for _, c := range pf.Checks {
			out.Preflight = append(out.Preflight, api.Check{Subject: c.Subject, What: c.What, Passed: c.Passed(), Problem: c.Problem})
		}
	}
	return out
}

// snapshotListDoc is the manifests as their documented document.
func snapshotListDoc(ms []etcdsnap.Manifest) api.SnapshotList {
	out := api.SnapshotList{TypeMeta: api.Meta("SnapshotList"), Snapshots: []api.Snapshot{}}
	for _, m := range ms {
		keys := m.KeyNames()
		if keys == nil {
			keys = []string{}
		}
		out.Snapshots = append(out.Snapshots, api.Snapshot{Name: m.Name, Time: m.Time, Cluster: m.Cluster, Reason: m.Reason, Size: m.Size,
			SHA256: m.SHA256, Keys: keys, GitRevision: m.GitRevision})
	}
	return out
}
