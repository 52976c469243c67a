package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// kubeClient is a minimal admin client of node 1's kube-apiserver REST API,
// enough to set the sandbox up without pulling client-go into it.
type kubeClient struct {
	sb *Sandbox
}

func (sb *Sandbox) kube() kubeClient { return kubeClient{sb: sb} }

func (k kubeClient) do(ctx context.Context, method, path string, body, out any) error {
	c, err := k.sb.AdminClient()
	if err != nil {
		return err
	}
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.sb.Nodes[0].APIServerURL+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("kube-apiserver %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// token asks the TokenRequest API for a service-account token.
func (k kubeClient) token(ctx context.Context, ns, sa string, ttl time.Duration, audiences []string) (string, error) {
	var res struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	spec := map[string]any{"expirationSeconds": int64(ttl.Seconds())}
	if len(audiences) > 0 {
		spec["audiences"] = audiences
	}
	err := k.do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token", map[string]any{
		"apiVersion": "authentication.k8s.io/v1",
		"kind":       "TokenRequest",
		"spec":       spec,
	}, &res)
	return res.Status.Token, err
}

// ServiceAccountToken creates a service account (if needed) and returns a
// token for it, for kube-apiserver's own audiences (as the pod's API token
// is): tests use it to log in to Vault with Kubernetes auth.
func (sb *Sandbox) ServiceAccountToken(ctx context.Context, ns, name string, ttl time.Duration) (string, error) {
	return sb.ServiceAccountTokenFor(ctx, ns, name, ttl)
}

// ServiceAccountTokenFor is ServiceAccountToken for the given audiences
// (none: kube-apiserver's own), as a projected service-account token
// volume has the kubelet request it (the TokenRequest API).
func (sb *Sandbox) ServiceAccountTokenFor(ctx context.Context, ns, name string, ttl time.Duration, audiences ...string) (string, error) {
	k := sb.kube()
	err := k.do(ctx, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts", map[string]any{"metadata": map[string]string{"name": name}}, nil)
	if err != nil && !bytes.Contains([]byte(err.Error()), []byte("409 Conflict")) {
		return "", err
	}
	return k.token(ctx, ns, name, ttl, audiences)
}
