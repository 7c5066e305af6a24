//go:build tools

// Package tools only pins kube-apiserver's sources; `go build
// k8s.io/kubernetes/cmd/kube-apiserver` in this folder builds it.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
