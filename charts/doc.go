// Package charts holds atrest's Helm chart (charts/atrest). It has no code;
// its tests check the chart: that values.yaml holds no secret (unit tier),
// and, with a real helm and the sandbox's kube-apiserver, that it lints and
// renders clean, that kube-apiserver accepts every object it renders under
// the restricted Pod Security profile, that its RBAC is exactly what atrest
// uses and is enough for atrest's real rewrite and canary, and that the
// settings it renders name the files it mounts.
package charts
