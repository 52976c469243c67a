package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"time"
)

func (sb *Sandbox) writePKI(context.Context) error {
	pki := sb.path("pki")
	authority, err := newCA()
	if err != nil {
		return err
	}
	if err := writeFile(sb.path("pki", "ca.pem"), authority.pem); err != nil {
		return err
	}
	var nodeIPs []net.IP
	for i := range sb.opts.Nodes {
		nodeIPs = append(nodeIPs, net.ParseIP(sb.ip(11+i)))
	}
	// A stray kube-apiserver serves with the nodes' certificate, as one
	// that RKE once set up and Git no longer lists would.
	for i := range maxStrays {
		nodeIPs = append(nodeIPs, net.ParseIP(sb.ip(strayHost+i)))
	}
	infra := net.ParseIP(sb.infraIP())
	loopback := net.ParseIP("127.0.0.1")
	certs := []struct {
		name string
		spec certSpec
	}{
		{"etcd", certSpec{cn: "etcd", ips: []net.IP{infra, loopback}, dns: []string{"localhost"}, server: true, client: true}},
		// RKE's names: kube-apiserver serves, kube-node is its etcd client.
		{"kube-apiserver", certSpec{cn: "kube-apiserver", ips: append([]net.IP{loopback, net.ParseIP("10.43.0.1")}, nodeIPs...),
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, server: true, client: true}},
		{"kube-node", certSpec{cn: "system:node", orgs: []string{"system:nodes"}, client: true}},
		{"kube-admin", certSpec{cn: "kube-admin", orgs: []string{"system:masters"}, client: true}},
		{"etcd-client", certSpec{cn: "atrest", client: true}},
		{"vault", certSpec{cn: "vault", ips: []net.IP{infra}, server: true}},
	}
	for _, c := range certs {
		if err := authority.issue(pki, c.name, c.spec); err != nil {
			return err
		}
	}
	if err := writeKeyPair(pki, "kube-service-account-token"); err != nil {
		return err
	}
	sb.CAFile = sb.path("pki", "ca.pem")
	sb.EtcdCertFile, sb.EtcdKeyFile = sb.path("pki", "etcd-client.pem"), sb.path("pki", "etcd-client-key.pem")
	sb.AdminCert, sb.AdminKey = sb.path("pki", "kube-admin.pem"), sb.path("pki", "kube-admin-key.pem")
	sb.SSHKeyFile = sb.path("ssh", "id_ed25519")
	if _, err := newSSHKey(sb.SSHKeyFile, "atrest-sandbox"); err != nil {
		return err
	}
	return nil
}

// tlsConfig returns a client TLS config trusting the sandbox CA, presenting
// cert/key when given.
func (sb *Sandbox) tlsConfig(certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(sb.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func (sb *Sandbox) startEtcd(ctx context.Context) error {
	ip := sb.infraIP()
	sb.EtcdEndpoint = "https://" + ip + ":2379"
	data := sb.path("etcd", "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	pki := func(n string) string { return sb.path("pki", n) }
	cmd := exec.Command("etcd",
		"--name=sandbox",
		"--data-dir="+data,
		"--listen-client-urls="+sb.EtcdEndpoint,
		"--advertise-client-urls="+sb.EtcdEndpoint,
		"--listen-peer-urls=http://"+ip+":2380",
		"--initial-advertise-peer-urls=http://"+ip+":2380",
		"--initial-cluster=sandbox=http://"+ip+":2380",
		"--cert-file="+pki("etcd.pem"),
		"--key-file="+pki("etcd-key.pem"),
		"--client-cert-auth",
		"--trusted-ca-file="+pki("ca.pem"),
		"--quota-backend-bytes=4294967296",
		"--logger=zap",
	)
	p, err := startProc("etcd", cmd, sb.path("etcd", "etcd.log"))
	if err != nil {
		return err
	}
	if err := sb.track(p); err != nil {
		return err
	}
	tlsCfg, err := sb.tlsConfig(sb.EtcdCertFile, sb.EtcdKeyFile)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Second}
	return waitFor(ctx, "etcd "+sb.EtcdEndpoint, 30*time.Second, p, func(ctx context.Context) error {
		var health struct {
			Health string `json:"health"`
		}
		if err := getJSON(ctx, client, sb.EtcdEndpoint+"/health", &health); err != nil {
			return err
		}
		if health.Health != "true" {
			return fmt.Errorf("health %q", health.Health)
		}
		return nil
	})
}

func getJSON(ctx context.Context, c *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
