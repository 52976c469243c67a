package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/reconciler"
)

// demoNamespaces hold the example secrets, a few teams' worth.
var demoNamespaces = []string{"shop", "billing", "auth", "reports"}

// exampleSecret is the i-th example secret: its namespace, name and value.
// The values are made up; they only have to read back unchanged.
func exampleSecret(i int) (ns, name string, value []byte) {
	ns = demoNamespaces[i%len(demoNamespaces)]
	return ns, fmt.Sprintf("app-credentials-%02d", i), fmt.Appendf(nil, "demo-password-%02d-%s", i, strings.Repeat("x", 24))
}

// kubeClient is a client of the sandbox's kube-apiserver, as its admin.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 15 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// createSecrets creates n example secrets (and their namespaces).
func createSecrets(ctx context.Context, kc kubernetes.Interface, n int) error {
	for _, ns := range demoNamespaces {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, 8)
	)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ns, name, value := exampleSecret(i)
			_, err := kc.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "atrest-demo"}},
				Data:       map[string][]byte{"password": value},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("create secret %s/%s: %w", ns, name, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readBack reads the n example secrets through kube-apiserver and checks
// their values: the proof that no transition lost or changed one. It
// retries for a while, since kube-apiserver may still be settling after a
// restart.
func readBack(ctx context.Context, kc kubernetes.Interface, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		if last = readBackOnce(ctx, kc, n); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("read back the example secrets: %w", last)
		case <-time.After(2 * time.Second):
		}
	}
}

func readBackOnce(ctx context.Context, kc kubernetes.Interface, n int) error {
	want := map[string][]byte{}
	for i := range n {
		ns, name, value := exampleSecret(i)
		want[ns+"/"+name] = value
	}
	seen := 0
	for _, ns := range demoNamespaces {
		l, err := kc.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=atrest-demo"})
		if err != nil {
			return fmt.Errorf("list secrets in %s: %w", ns, err)
		}
		for _, s := range l.Items {
			v, ok := want[s.Namespace+"/"+s.Name]
			if !ok {
				continue
			}
			if !bytes.Equal(s.Data["password"], v) {
				return fmt.Errorf("secret %s/%s reads back with a different value", s.Namespace, s.Name)
			}
			seen++
		}
	}
	if seen != n {
		return fmt.Errorf("%d of the %d example secrets listed", seen, n)
	}
	return nil
}

// storedSecrets is the census of secrets, read straight from etcd: how
// each one's value starts (k8s:enc:aescbc:v1:<key>:..., or plain).
func storedSecrets(ctx context.Context, etcd *clientv3.Client) (census, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := etcd.Get(ctx, "/registry/secrets/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read /registry/secrets/ from etcd: %w", err)
	}
	c := census{}
	for _, kv := range resp.Kvs {
		c[cluster.StoragePrefix(kv.Value)]++
	}
	return c, nil
}

// otherSecrets names the secrets in etcd that are not example secrets
// (atrest's canary, say), at most a few.
func otherSecrets(ctx context.Context, etcd *clientv3.Client, n int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	const prefix = "/registry/secrets/"
	resp, err := etcd.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list %s in etcd: %w", prefix, err)
	}
	examples := map[string]bool{}
	for i := range n {
		ns, name, _ := exampleSecret(i)
		examples[ns+"/"+name] = true
	}
	var out []string
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), prefix)
		if examples[name] {
			continue
		}
		if len(out) == 3 {
			out = append(out, "more")
			break
		}
		out = append(out, name)
	}
	return out, nil
}

// command runs a program and returns its standard output and, apart, its
// standard error.
func command(ctx context.Context, timeout time.Duration, env []string, name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("%w (no answer within %s)", err, timeout)
		}
	}
	return out.String(), errb.String(), err
}

// statusJSON parses `atrest status -o json`.
func statusJSON(out string) (*reconciler.Status, error) {
	var st reconciler.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("parse atrest status -o json: %w", err)
	}
	return &st, nil
}
