package cluster

import (
	"strings"
	"testing"
)

// TestParseErrorsNeverEchoAValue breaks cluster.yml around a custom
// config's key in the ways hands break YAML, and checks that no error
// echoes the key material, whichever parser (YAML, strict JSON, RKE's
// decode, the EncryptionConfiguration's) reports it.
func TestParseErrorsNeverEchoAValue(t *testing.T) {
	const secret = "c2VjcmV0LWtleS1tYXRlcmlhbC0wMTIzNDU2Nzg5YWI="
	head := "nodes:\n- address: 10.0.0.1\n  user: rke\n  role: [controlplane, etcd]\nservices:\n  kube-api:\n    secrets_encryption_config:\n      enabled: true\n      custom_config:\n        apiVersion: apiserver.config.k8s.io/v1\n        kind: EncryptionConfiguration\n        resources:\n        - resources: [secrets]\n          providers:\n          - aescbc:\n              keys:\n              - name: k1\n"
	tail := "          - identity: {}\n"
	tests := map[string]string{
		"a tab":                        head + "\t          secret: " + secret + "\n" + tail,
		"the key as a mapping key":     head + "                " + secret + ": x\n" + tail,
		"a misspelt field":             head + "                sercet: " + secret + "\n" + tail,
		"a list where a string goes":   head + "                secret: [" + secret + "]\n" + tail,
		"an unclosed quote":            head + "                secret: \"" + secret + "\n" + tail,
		"a bad indent":                 head + "                secret: " + secret + "\n               x: " + secret + "\n" + tail,
		"the key twice":                head + "                secret: " + secret + "\n                secret: " + secret + "\n" + tail,
		"a value that is not a string": head + "                secret: {" + secret + ": 1}\n" + tail,
		"an anchor gone wrong":         head + "                secret: *" + secret + "\n" + tail,
		"the key as a provider":        head[:strings.Index(head, "          - aescbc:")] + "          - " + secret + ": {}\n",
		"the key as a resource":        head[:strings.Index(head, "        - resources: [secrets]")] + "        - resources: [" + secret + "]\n          providers: [{identity: {}}]\n",
		"the key as a top-level field": "nodes: []\n" + secret + ": 1\n",
		"the key as a node field":      "nodes:\n- address: 10.0.0.1\n  " + secret + ": x\n",
		"the key as an address":        "nodes:\n- address: " + secret + "\n  user: rke\n  role: [controlplane]\n",
		"a null key above the config":  strings.Replace(head, "      custom_config:\n", "      ~: 1\n      custom_config:\n", 1) + "                secret: " + secret + "\n" + tail,
		"a null key in the config":     head + "                secret: " + secret + "\n                ~: " + secret + "\n" + tail,
		"secret without its colon":     head + "                secret " + secret + ": x\n" + tail,
		"a flow mapping without colon": head[:strings.Index(head, "              - name: k1")] + "              - {name: k1, secret " + secret + "}\n" + tail,
		"JSON style":                   head + "                \"secret\": \"" + secret + "\"\n\t" + tail,
	}
	for name, data := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("cluster.yml", []byte(data))
			if err == nil {
				return
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), strings.TrimRight(secret, "=")) {
				t.Errorf("the error echoes the value:\n%v", err)
			}
		})
	}
}

func TestLooksLikeMaterial(t *testing.T) {
	for s, want := range map[string]bool{
		"c2VjcmV0LWtleS1tYXRlcmlhbC0wMTIzNDU2Nzg5YWI=": true,
		"3q2+7w/3q2+7w==xx":                            true,
		"0123456789abcdef0123456789abcdef":             true,
		"secrets_encryption_config":                    false,
		"ignore_docker_version":                        false,
		"kube-api":                                     false,
		"apiVersion":                                   false,
		"rotate_encryption_key_v2":                     false,
		"resources[0]":                                 false,
	} {
		if got := looksLikeMaterial(s); got != want {
			t.Errorf("looksLikeMaterial(%q) = %v, want %v", s, got, want)
		}
	}
}
