// Command pause is the pod sandbox of the test cluster (containerd's sandbox_image): it
// holds the pod's namespaces, reaps the children it inherits as PID 1, and exits on
// SIGTERM or SIGINT. It is built static (CGO_ENABLED=0) to run in an empty image, since
// the registry.k8s.io pause image cannot be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
