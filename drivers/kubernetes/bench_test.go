package kubernetes

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/kubetest"
)

// Create→Ready latency of 10 sandboxes next to 10 bare pods of the same image
// reaching Running, all at once, on the real node. Slow, so it runs only with
// OPENSHELL_BENCH=1 (scripts/bench.sh kubernetes):
//
//	OPENSHELL_BENCH=1 go test ./drivers/kubernetes -run TestBenchCreateToReady -v
func TestBenchCreateToReady(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1 to run")
	}
	c := kubetest.RequireNode(t)
	c.LockSandboxCRD(t, false)
	ns := c.Namespace(t)
	d := newClusterDriver(t, c, clusterConfig(ns))
	defer d.Close()
	const n = 10
	drv := drivertest.Measure(t, n, n, func(ctx context.Context) (time.Duration, func()) {
		return drivertest.CreateToReady(t, ctx, d, testImage)
	})
	pod := drivertest.Measure(t, n, n, func(ctx context.Context) (time.Duration, func()) { return barePodRunning(t, ctx, c, ns) })
	dp50, dp99 := drivertest.Percentile(drv, 50), drivertest.Percentile(drv, 99)
	pp50, pp99 := drivertest.Percentile(pod, 50), drivertest.Percentile(pod, 99)
	t.Logf("%d at once: driver create→Ready p50 %dms p99 %dms | bare pod create→Running p50 %dms p99 %dms | ratio p50 %.2fx p99 %.2fx (target ≤ 1.5x)",
		n, dp50.Milliseconds(), dp99.Milliseconds(), pp50.Milliseconds(), pp99.Milliseconds(),
		float64(dp50)/float64(pp50), float64(dp99)/float64(pp99))
	fmt.Printf("BENCH kubernetes-create-ready p50_us=%d p99_us=%d\nBENCH kubernetes-bare-pod p50_us=%d p99_us=%d\n",
		dp50.Microseconds(), dp99.Microseconds(), pp50.Microseconds(), pp99.Microseconds())
}

func barePodRunning(t *testing.T, ctx context.Context, c *kubetest.Cluster, ns string) (time.Duration, func()) {
	id, _ := drivertest.NewIDs()
	name := "bare-" + id
	pods := c.Client.CoreV1().Pods(ns)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "c", Image: testImage, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"},
			}},
		},
	}
	cleanup := func() {
		_ = pods.Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}
	start := time.Now()
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Errorf("create pod: %v", err)
		return 0, cleanup
	}
	if _, err := c.WaitPod(ctx, ns, name, time.Minute, kubetest.PodRunning); err != nil {
		t.Errorf("pod %s: %v", name, err)
		return 0, cleanup
	}
	return time.Since(start), cleanup
}
