//go:build tools

// Blank import keeps github.com/hashicorp/vault in go.mod under `go mod tidy`;
// tools/build.sh builds the command, nothing imports it.
package tools

import _ "github.com/hashicorp/vault"
