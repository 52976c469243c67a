//go:build tools

// Blank import keeps helm.sh/helm/v3 in go.mod under `go mod tidy`;
// tools/build.sh builds its cmd/helm, nothing imports it. The chart's tests
// (charts/) run this helm for `helm lint` and `helm template`.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
