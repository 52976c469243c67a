package reconciler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/controlplane"
)

// PreflightCheck is one thing a plan needs of the cluster, checked.
type PreflightCheck struct {
	Subject string // what it is about: "node cp1", "resource configmaps"
	What    string // what was checked: "sudo", "list, get, update across all namespaces"
	// Problem says what is missing and how to fix it; "" when the check
	// passed.
	Problem string
}

// Passed reports whether the cluster has what was checked.
func (c PreflightCheck) Passed() bool { return c.Problem == "" }

func (c PreflightCheck) String() string {
	if c.Passed() {
		return c.Subject + ": " + c.What + ": ok"
	}
	return c.Subject + ": " + c.What + ": " + c.Problem
}

// PreflightResult is every check a plan's preflight made.
type PreflightResult struct {
	Checks []PreflightCheck
}

// Failed returns the checks that did not pass.
func (p PreflightResult) Failed() []PreflightCheck {
	var out []PreflightCheck
	for _, c := range p.Checks {
		if !c.Passed() {
			out = append(out, c)
		}
	}
	return out
}

// Refusal is the refusal of the plan the preflight was for, naming every
// failed check; nil when all passed.
func (p PreflightResult) Refusal() *Refusal {
	failed := p.Failed()
	if len(failed) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "preflight: %d of %d checks failed, so nothing was changed:", len(failed), len(p.Checks))
	for _, c := range failed {
		b.WriteString("\n  - ")
		b.WriteString(c.String())
	}
	return &Refusal{Reason: ReasonPreflightFailed, Message: b.String()}
}

// preflightNeeds is what a plan's steps need of the cluster.
type preflightNeeds struct {
	rewrite []string // resources the rewrite lists and updates
	nodes   controlplane.PreflightRequest
}

// needsOf derives, from its steps, what plan will need: a deploy writes
// the provider file (and makes kube-apiserver dial the KMS plugins of its
// config), a reload makes kube-apiserver load it, a rewrite lists and
// updates its resources. Removing the config needs neither mount nor
// plugin, only the sudo every node operation needs.
func needsOf(plan *Plan) preflightNeeds {
	var n preflightNeeds
	for _, s := range plan.Steps {
		switch s.Kind {
		case StepRewrite:
			n.rewrite = append(n.rewrite, s.Resources...)
		case StepDeploy:
			n.nodes.ProviderFile = true
			for _, chain := range s.Chains {
				for _, e := range chain {
					switch {
					case e.IsTransit():
						// atrest deploys this plugin itself, proven healthy
						// before the config: only its mount is needed now.
						n.nodes.ManagedKMS = true
					case e.Kind == cluster.KindKMS && e.KMS != nil:
						n.nodes.KMSEndpoints = append(n.nodes.KMSEndpoints, e.KMS.Endpoint)
					}
				}
			}
		case StepReload:
			n.nodes.ProviderFile = true
		case StepDeployPlugin:
			n.nodes.ManagedKMS = true
		}
	}
	slices.Sort(n.rewrite)
	n.rewrite = slices.Compact(n.rewrite)
	slices.Sort(n.nodes.KMSEndpoints)
	n.nodes.KMSEndpoints = slices.Compact(n.nodes.KMSEndpoints)
	return n
}

// Preflight checks, changing nothing, everything plan's steps will need:
// on every node, sudo for a user that is not root, the provider file's
// mount into kube-apiserver and each KMS plugin's socket; of the API, that
// each resource to rewrite is served and that atrest may list, get and
// update it across all namespaces. Its error is what could not be checked
// at all; what is missing is a failed check (see PreflightResult.Refusal).
func (r *Reconciler) Preflight(ctx context.Context, plan *Plan) (PreflightResult, error) {
	var res PreflightResult
	if plan.Empty() {
		return res, nil
	}
	need := needsOf(plan)
	nodeChecks, err := r.Nodes.Preflight(ctx, need.nodes)
	if err != nil {
		return res, fmt.Errorf("preflight of the nodes: %w", err)
	}
	for _, c := range nodeChecks {
		res.Checks = append(res.Checks, PreflightCheck{Subject: "node " + c.Node, What: c.What, Problem: c.Problem})
	}
	if len(need.rewrite) > 0 {
		if r.Rewriter == nil {
			return res, errors.New("preflight: no rewriter (Reconciler.Rewriter)")
		}
		apiChecks, err := r.Rewriter.Preflight(ctx, need.rewrite)
		if err != nil {
			return res, fmt.Errorf("preflight of the rewrite: %w", err)
		}
		res.Checks = append(res.Checks, apiChecks...)
	}
	return res, nil
}

// preflight refuses plan, once per reconcile, when its preflight fails.
func (r *Reconciler) preflight(ctx context.Context, plan *Plan) error {
	res, err := r.Preflight(ctx, plan)
	if err != nil {
		return err
	}
	if ref := res.Refusal(); ref != nil {
		return ref
	}
	r.logger().Info("preflight passed", "checks", len(res.Checks))
	return nil
}

// rewriteVerbs are what the rewrite does to every object of a resource,
// across all namespaces: list it page by page, update each object, and
// get it again after a conflict (updateOne).
var rewriteVerbs = []string{"list", "get", "update"}

// Preflight checks, for each resource, that discovery serves it (one
// discovery call for all) and that the rewriter's identity may list, get
// and update it across all namespaces, by SelfSubjectAccessReviews.
func (rw *Rewriter) Preflight(ctx context.Context, resources []string) ([]PreflightCheck, error) {
	d, err := discover(rw.typed)
	if err != nil {
		return nil, fmt.Errorf("discover the API's resources: %w", err)
	}
	who := rw.identity(ctx)
	var checks []PreflightCheck
	for _, res := range resources {
		subject := "resource " + res
		gvr, ok := d.find(res)
		if !ok {
			checks = append(checks, PreflightCheck{Subject: subject, What: "served by the API",
				Problem: d.unserved(res) + ": check the resource's name in custom_config (resource.group, such as deployments.apps) and that its API is installed"})
			continue
		}
		checks = append(checks, PreflightCheck{Subject: subject, What: "served by the API"})
		var denied []string
		asked := true
		for _, verb := range rewriteVerbs {
			review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				// No namespace: the rewrite lists and updates across all.
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: gvr.Group, Resource: gvr.Resource},
			}}
			got, err := rw.typed.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
			if apierrors.IsForbidden(err) {
				checks = append(checks, PreflightCheck{Subject: subject, What: "SelfSubjectAccessReview",
					Problem: fmt.Sprintf("%s may not ask what it may do (%v): grant create on selfsubjectaccessreviews (the system:basic-user ClusterRole has it)", who, err)})
				asked = false
				break
			}
			if err != nil {
				return nil, fmt.Errorf("ask whether %s may %s %s: %w", who, verb, res, err)
			}
			if !got.Status.Allowed {
				denied = append(denied, verb)
			}
		}
		if !asked {
			continue
		}
		what := strings.Join(rewriteVerbs, ", ") + " across all namespaces"
		problem := ""
		if len(denied) > 0 {
			problem = fmt.Sprintf("%s may not %s %s across all namespaces, which the rewrite does to every object: %s", who, strings.Join(denied, ", "), res, rbacFix(res))
		}
		checks = append(checks, PreflightCheck{Subject: subject, What: what, Problem: problem})
	}
	return checks, nil
}

// rbacFix says how to grant the rewrite of resource with the chart.
func rbacFix(resource string) string {
	name, group, _ := strings.Cut(resource, ".")
	entry := "{resource: " + name + "}"
	if group != "" {
		entry = "{resource: " + name + ", apiGroup: " + group + "}"
	}
	return fmt.Sprintf("add %s to the chart's rbac.extraResources (%s), or grant list, get, update on it", resource, entry)
}

// identity is who the API server says the rewriter is, for messages;
// "atrest's identity" when it will not say (before Kubernetes 1.28).
func (rw *Rewriter) identity(ctx context.Context) string {
	r, err := rw.typed.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r.Status.UserInfo.Username == "" {
		return "atrest's identity"
	}
	return r.Status.UserInfo.Username
}
