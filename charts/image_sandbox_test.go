//go:build sandbox

package charts

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImage builds atrest's image as `make image` does, with the Docker of
// the sandbox's node, and runs it: `atrest version`, and `atrest validate`
// on an example, as the chart runs it (user 65532, read-only root, no
// network). Its name and tag are the chart's default image.
func TestImage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dockerHost := "DOCKER_HOST=unix://" + sb.Nodes[0].DockerSocket
	make := exec.CommandContext(ctx, "make", "-s", "-C", root, "image")
	make.Env = append(os.Environ(), dockerHost)
	out, err := make.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	image := ""
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "built "); ok {
			image = rest
		}
	}
	deployment := find(t, render(t, "t", "atrest", []string{"testdata/minimal-values.yaml"}), "Deployment", "t-atrest")
	containers, _, _ := unstructuredSlice(deployment.Object, "spec", "template", "spec", "containers")
	if len(containers) == 0 || containers[0].(map[string]any)["image"] != image {
		t.Fatalf("make image built %q; the chart's default image is %v", image, containers)
	}
	docker := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "docker", args...)
		cmd.Env = append(os.Environ(), dockerHost)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		return b.String(), err
	}
	if out, err := docker("inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", image); err != nil || strings.TrimSpace(out) != `65532:65532 ["/usr/local/bin/atrest"]` {
		t.Errorf("the image's user and entrypoint: %q %v", out, err)
	}
	run := []string{"run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"}
	if out, err := docker(append(run, image, "version")...); err != nil || !strings.HasPrefix(out, "atrest ") {
		t.Errorf("docker run %s version: %v\n%s", image, err, out)
	}
	examples := filepath.Join(root, "examples")
	out2, err := docker(append(run, "-v", examples+":/examples:ro", image, "validate", "--config", "/examples/cluster.yml")...)
	if err != nil || !strings.Contains(out2, "cluster.yml") {
		t.Errorf("docker run %s validate: %v\n%s", image, err, out2)
	}
	t.Logf("%s: %s", image, strings.TrimSpace(out2))
}

// unstructuredSlice is obj's list at path.
func unstructuredSlice(obj map[string]any, path ...string) ([]any, bool, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[p]
	}
	s, ok := cur.([]any)
	return s, ok, nil
}
