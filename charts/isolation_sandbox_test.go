//go:build sandbox

package charts

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const saTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// TestVaultTokenProjected: with Kubernetes auth, atrest logs in to Vault
// with a token of its own (projected for the Vault audience only, short
// lived, mounted apart) and never with the pod's API token, which stays
// mounted for the Kubernetes client alone.
func TestVaultTokenProjected(t *testing.T) {
	for _, tt := range []struct {
		name     string
		sets     []string
		audience string
		seconds  int64
	}{
		{"defaults", nil, "vault", 600},
		{"own audience and lifetime", []string{"vault.kubernetes.audience=https://vault.example.com", "vault.kubernetes.tokenExpirationSeconds=1800"}, "https://vault.example.com", 1800},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, "t", "atrest", []string{minimalValues}, tt.sets...)
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
			pod := d.Spec.Template.Spec
			var vol *corev1.Volume
			for i, v := range pod.Volumes {
				if v.Projected != nil {
					if vol != nil {
						t.Fatalf("two projected volumes: %s and %s", vol.Name, v.Name)
					}
					vol = &pod.Volumes[i]
				}
			}
			if vol == nil {
				t.Fatal("no projected volume: Vault's login would use the pod's API token")
			}
			if len(vol.Projected.Sources) != 1 || vol.Projected.Sources[0].ServiceAccountToken == nil {
				t.Fatalf("volume %s projects %+v, want one service-account token", vol.Name, vol.Projected.Sources)
			}
			tok := vol.Projected.Sources[0].ServiceAccountToken
			if tok.Audience != tt.audience || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != tt.seconds || tok.Path != "token" {
				t.Errorf("projected token: audience %q, expirationSeconds %v, path %q; want %q, %d, token", tok.Audience, tok.ExpirationSeconds, tok.Path, tt.audience, tt.seconds)
			}
			var mounts []corev1.VolumeMount
			for _, m := range pod.Containers[0].VolumeMounts {
				if m.Name == vol.Name {
					mounts = append(mounts, m)
				}
			}
			if len(mounts) != 1 || mounts[0].MountPath != "/etc/atrest/vault-token" || !mounts[0].ReadOnly || mounts[0].SubPath != "" {
				t.Errorf("the projected token is mounted %+v, want once, read-only, at /etc/atrest/vault-token", mounts)
			}

			var settings struct {
				Vault struct {
					AuthMethod          string `json:"authMethod"`
					KubernetesTokenFile string `json:"kubernetesTokenFile"`
				} `json:"vault"`
			}
			cm := settingsConfigMap(t, objs)
			if err := yaml.Unmarshal([]byte(cm.Data["settings.yaml"]), &settings); err != nil {
				t.Fatal(err)
			}
			if settings.Vault.AuthMethod != "kubernetes" || settings.Vault.KubernetesTokenFile != "/etc/atrest/vault-token/token" {
				t.Errorf("settings vault.authMethod %q, vault.kubernetesTokenFile %q: want kubernetes and the projected token", settings.Vault.AuthMethod, settings.Vault.KubernetesTokenFile)
			}
			if src := mountSource(d, settings.Vault.KubernetesTokenFile); src != "projected token for audience "+tt.audience {
				t.Errorf("vault.kubernetesTokenFile comes from %s", src)
			}
			// The Kubernetes client keeps the pod's own token.
			if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
				t.Error("the pod's API token is not mounted: the in-cluster client needs it")
			}
			if strings.Contains(cm.Data["settings.yaml"], saTokenPath) {
				t.Errorf("the settings name the pod's API token:\n%s", cm.Data["settings.yaml"])
			}
		})
	}
	t.Run("other auth methods project nothing", func(t *testing.T) {
		objs := render(t, "t", "atrest", []string{minimalValues}, "vault.authMethod=token", "vault.token.existingSecret=atrest-vault-token")
		d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Projected != nil {
				t.Errorf("volume %s projects a token with authMethod token", v.Name)
			}
		}
	})
}

// TestNetworkPolicy: none by default; enabled, it selects the chart's pod
// only, admits ingress to the metrics (and webhook) port only, and egress
// to exactly the destinations of the values, each on its ports.
func TestNetworkPolicy(t *testing.T) {
	for _, files := range [][]string{{minimalValues}, nil} {
		args := []string{"template", "t", "./atrest"}
		for _, f := range files {
			args = append(args, "--values", f)
		}
		out, _, _ := helm(t, args...) // the defaults are refused: no object at all
		if strings.Contains(out, "kind: NetworkPolicy") {
			t.Errorf("helm %s renders a NetworkPolicy: it must be off by default", strings.Join(args, " "))
		}
	}
	np := typed[networkingv1.NetworkPolicy](t, find(t, render(t, "t", "atrest", []string{fullValues}), "NetworkPolicy", "t-atrest"))
	if got := np.Spec.PodSelector.MatchLabels; len(got) != 2 || got["app.kubernetes.io/name"] != "atrest" || got["app.kubernetes.io/instance"] != "t" {
		t.Errorf("podSelector %v, want the chart's pod only", got)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("policyTypes %v, want Ingress and Egress", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 1 {
		t.Fatalf("%d ingress rules, want 1", len(np.Spec.Ingress))
	}
	in := np.Spec.Ingress[0]
	if got := ports(in.Ports); got != "TCP/http-metrics TCP/webhook" {
		t.Errorf("ingress ports %s, want the metrics and webhook ports", got)
	}
	if len(in.From) != 2 || in.From[0].NamespaceSelector == nil || in.From[1].IPBlock == nil || in.From[1].IPBlock.CIDR != "192.0.2.10/32" {
		t.Errorf("ingress from %+v, want the values' peers", in.From)
	}
	want := []string{
		"[192.0.2.10/32] TCP/22 TCP/443",
		"[10.0.5.20/32 10.0.5.21/32] TCP/8200",
		"[10.0.0.1/32 10.0.0.2/32 10.0.0.3/32] TCP/2379",
		"[10.0.0.0/29] TCP/22",
		"[10.0.0.0/29 10.43.0.1/32] TCP/443 TCP/6443",
		"[pods k8s-app=kube-dns in kubernetes.io/metadata.name=kube-system] UDP/53 TCP/53",
		"[10.0.6.0/24] TCP/4318",
	}
	var got []string
	for _, r := range np.Spec.Egress {
		got = append(got, describeRule(r.To, r.Ports))
	}
	if !slices.Equal(got, want) {
		t.Errorf("egress rules\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Run("webhook off, DNS by address, anyone scrapes", func(t *testing.T) {
		np := typed[networkingv1.NetworkPolicy](t, find(t, render(t, "t", "atrest", []string{fullValues},
			"webhook.enabled=false", "networkPolicy.egress.dns.cidrs={169.254.20.10/32}", "networkPolicy.ingress.from=null", "networkPolicy.egress.extra=null"), "NetworkPolicy", ""))
		if len(np.Spec.Ingress) != 1 || ports(np.Spec.Ingress[0].Ports) != "TCP/http-metrics" || len(np.Spec.Ingress[0].From) != 0 {
			t.Errorf("ingress %+v, want the metrics port only, from anyone", np.Spec.Ingress)
		}
		last := np.Spec.Egress[len(np.Spec.Egress)-1]
		if got := describeRule(last.To, last.Ports); got != "[169.254.20.10/32] UDP/53 TCP/53" {
			t.Errorf("DNS egress %s, want the resolver's address", got)
		}
	})
}

func ports(ps []networkingv1.NetworkPolicyPort) string {
	var out []string
	for _, p := range ps {
		port := "all"
		if p.Port != nil {
			port = p.Port.String()
			if p.Port.Type == intstr.Int {
				port = fmt.Sprint(p.Port.IntVal)
			}
		}
		out = append(out, fmt.Sprintf("%s/%s", *p.Protocol, port))
	}
	return strings.Join(out, " ")
}

func describeRule(to []networkingv1.NetworkPolicyPeer, ps []networkingv1.NetworkPolicyPort) string {
	var peers []string
	for _, p := range to {
		switch {
		case p.IPBlock != nil:
			peers = append(peers, p.IPBlock.CIDR)
		case p.PodSelector != nil && p.NamespaceSelector != nil:
			peers = append(peers, fmt.Sprintf("pods %s in %s", labels(p.PodSelector.MatchLabels), labels(p.NamespaceSelector.MatchLabels)))
		default:
			peers = append(peers, fmt.Sprintf("%+v", p))
		}
	}
	return fmt.Sprintf("%v %s", peers, ports(ps))
}

func labels(m map[string]string) string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}
