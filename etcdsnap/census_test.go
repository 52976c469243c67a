package etcdsnap

import (
	"slices"
	"testing"
)

func TestStoragePath(t *testing.T) {
	tests := []struct {
		prefix, resource, want string
	}{
		{"/registry", "secrets", "/registry/secrets/"},
		{"/registry", "configmaps", "/registry/configmaps/"},
		{"/registry", "deployments.apps", "/registry/deployments/"},
		{"/registry", "cronjobs.batch", "/registry/cronjobs/"},
		{"/registry", "services", "/registry/services/specs/"},
		{"/registry", "endpoints", "/registry/services/endpoints/"},
		{"/registry", "nodes", "/registry/minions/"},
		{"/registry", "replicationcontrollers", "/registry/controllers/"},
		{"/registry", "ingresses.networking.k8s.io", "/registry/ingress/"},
		{"/registry", "leases.coordination.k8s.io", "/registry/leases/"},
		{"/registry", "customresourcedefinitions.apiextensions.k8s.io", "/registry/apiextensions.k8s.io/customresourcedefinitions/"},
		{"/registry", "apiservices.apiregistration.k8s.io", "/registry/apiregistration.k8s.io/apiservices/"},
		{"/registry", "widgets.example.com", "/registry/example.com/widgets/"},
		{"/registry", "gateways.gateway.networking.k8s.io", "/registry/gateway.networking.k8s.io/gateways/"},
		{"/registry", "*.*", "/registry/"},
		{"/custom/", "secrets", "/custom/secrets/"},
		{"", "secrets", "/registry/secrets/"},
	}
	for _, tt := range tests {
		got, err := StoragePath(tt.prefix, tt.resource)
		if err != nil || got != tt.want {
			t.Errorf("StoragePath(%q, %q) = %q, %v; want %q", tt.prefix, tt.resource, got, err, tt.want)
		}
	}
	for _, bad := range []string{"*.apps", "*.", "", ".apps", "secrets/x"} {
		if got, err := StoragePath("/registry", bad); err == nil {
			t.Errorf("StoragePath(%q) = %q, want an error", bad, got)
		}
	}
}

func TestCensusHelpers(t *testing.T) {
	c := Census{
		"secrets":    {"identity": 3, "aescbc:v1:k-aaaaa": 5, "aescbc:v1:k-bbbbb": 0},
		"configmaps": {"identity": 7},
	}
	if c.Total("secrets") != 8 || c.Total("configmaps") != 7 || c.Total("pods") != 0 {
		t.Errorf("totals %d %d %d", c.Total("secrets"), c.Total("configmaps"), c.Total("pods"))
	}
	if got := c.Prefixes(); !slices.Equal(got, []string{"aescbc:v1:k-aaaaa", "identity"}) {
		t.Errorf("Prefixes = %v", got)
	}
}
