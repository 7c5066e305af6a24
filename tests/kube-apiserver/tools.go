//go:build tools

// Package tools only pins the Kubernetes components' sources: `go build
// k8s.io/kubernetes/cmd/<name>` in this folder builds kube-apiserver (the API-server
// tests) and the node and controllers of the one-node test cluster (kubelet,
// kube-scheduler, kube-controller-manager, kube-proxy). pause/ is the cluster's
// sandbox program.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
