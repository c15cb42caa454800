//go:build tools

// Package kube pins the Kubernetes components the test cluster runs (control plane,
// node, etcd and the agent-sandbox controller) so scripts/setup-kubernetes.sh can build
// them from the Go module proxy at exactly these versions. It is a module of its own so
// the project's main module does not carry Kubernetes' dependency graph.
package kube

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller"
)
