// Package tools only anchors the workspace's pinned Go tools: go.mod's tool directives make `go tool task`
// work from anywhere in the workspace. versitygw and golangci-lint live in their own modules (tools/versitygw,
// tools/lint), outside the workspace, so their dependencies never mix with the services'.
package tools
