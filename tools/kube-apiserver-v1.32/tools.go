//go:build tools

// Blank import keeps k8s.io/kubernetes in go.mod under `go mod tidy`;
// tools/build.sh builds the sandbox's kube-apiserver from it.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
