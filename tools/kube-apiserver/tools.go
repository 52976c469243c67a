//go:build tools

// Blank imports keep k8s.io/kubernetes in go.mod under `go mod tidy`;
// tools/build.sh builds the commands, nothing imports them. kubectl is the
// baseline the rewrite benchmark compares against (the Kubernetes
// documentation's `kubectl get secrets -A -o json | kubectl replace -f -`).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
