// Package helm holds the tests of the openshell Helm chart (deploy/helm/openshell): lint
// and render through Helm's Go library, the rendered objects applied to the real test
// cluster's apiserver, and, when the cluster's node runs, the gateway installed from
// the chart answering Health through its Service.
package helm

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/daemon"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/token"
)

const chartDir = "openshell"

// render renders the chart as `helm template` would for release "gw" in namespace ns.
func render(t *testing.T, ns string, vals map[string]any, edit ...func(*chart.Chart)) ([]*unstructured.Unstructured, map[string]string, error) {
	t.Helper()
	ch, err := loader.LoadDir(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	for _, e := range edit {
		e(ch)
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "gw", Namespace: ns, Revision: 1, IsInstall: true}, nil)
	if err != nil {
		return nil, nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, nil, err
	}
	var objs []*unstructured.Unstructured
	names := slices.Sorted(maps.Keys(files))
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		rd := yamlutil.NewYAMLReader(bufio.NewReader(strings.NewReader(files[name])))
		for {
			doc, err := rd.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			js, err := yaml.YAMLToJSON(doc)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if s := strings.TrimSpace(string(js)); s == "null" || s == "{}" {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(js); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			objs = append(objs, u)
		}
	}
	return objs, files, nil
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s among the rendered objects", kind, name)
	return nil
}

func kinds(objs []*unstructured.Unstructured) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.GetKind()+"/"+o.GetName())
	}
	sort.Strings(ks)
	return ks
}

// TestLint: `helm lint` finds nothing worse than INFO, with the default values and the
// several-replica values.
func TestLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"default":           nil,
		"replicas+postgres": {"replicas": 3, "database": map[string]any{"existingSecret": "pg"}},
	} {
		t.Run(name, func(t *testing.T) {
			res := lint.RunAll(chartDir, vals, "openshell")
			for _, m := range res.Messages {
				t.Log(m)
			}
			if len(res.Messages) == 0 && res.HighestSeverity != 0 {
				t.Fatal("lint reported a severity without messages")
			}
			if res.HighestSeverity >= support.WarningSev {
				t.Fatalf("helm lint: highest severity %d (warning or error)", res.HighestSeverity)
			}
		})
	}
}

func container(t *testing.T, dep *unstructured.Unstructured, field, name string) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", field)
	for _, c := range cs {
		if m := c.(map[string]any); m["name"] == name {
			return m
		}
	}
	t.Fatalf("deployment has no %s %q", field, name)
	return nil
}

func envOf(c map[string]any) map[string]any {
	out := map[string]any{}
	env, _ := c["env"].([]any)
	for _, e := range env {
		m := e.(map[string]any)
		if v, ok := m["value"]; ok {
			out[m["name"].(string)] = v
		} else {
			out[m["name"].(string)] = m["valueFrom"]
		}
	}
	return out
}

// driverRules are exactly the rules the Kubernetes driver needs in its namespace.
var driverRules = []any{
	map[string]any{"apiGroups": []any{"agents.x-k8s.io"}, "resources": []any{"sandboxes"}, "verbs": []any{"create", "delete", "get", "list", "patch", "watch"}},
	map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"create", "delete"}},
	map[string]any{"apiGroups": []any{""}, "resources": []any{"pods"}, "verbs": []any{"list", "watch"}},
	map[string]any{"apiGroups": []any{""}, "resources": []any{"persistentvolumeclaims"}, "verbs": []any{"delete", "get"}},
	map[string]any{"apiGroups": []any{""}, "resources": []any{"namespaces"}, "resourceNames": []any{"team-a"}, "verbs": []any{"get"}},
}

// TestRenderDefault: one replica on SQLite with its PVC, the exact driver Role, a
// non-root read-only container with probes, and a PKI Secret the gateway's own code
// accepts (CA, token key, secrets key, gateway id).
func TestRenderDefault(t *testing.T) {
	objs, files, err := render(t, "team-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ConfigMap/gw-openshell", "Deployment/gw-openshell", "PersistentVolumeClaim/gw-openshell-state",
		"Role/gw-openshell-driver", "RoleBinding/gw-openshell-driver", "Secret/gw-openshell-pki",
		"Service/gw-openshell", "ServiceAccount/gw-openshell",
	}
	if got := kinds(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects:\n got %v\nwant %v", got, want)
	}
	for _, o := range objs {
		if o.GetNamespace() != "team-a" {
			t.Errorf("%s/%s in namespace %q, want team-a", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	if !strings.Contains(files["openshell/templates/NOTES.txt"], "https://gw-openshell.team-a.svc:17670") {
		t.Errorf("NOTES.txt does not say where the gateway is:\n%s", files["openshell/templates/NOTES.txt"])
	}

	role := find(t, objs, "Role", "gw-openshell-driver")
	if rules, _, _ := unstructured.NestedSlice(role.Object, "rules"); !reflect.DeepEqual(rules, driverRules) {
		t.Errorf("driver Role rules:\n got %v\nwant %v", rules, driverRules)
	}
	rb := find(t, objs, "RoleBinding", "gw-openshell-driver")
	subj, _, _ := unstructured.NestedSlice(rb.Object, "subjects")
	if len(subj) != 1 || subj[0].(map[string]any)["name"] != "gw-openshell" || subj[0].(map[string]any)["namespace"] != "team-a" {
		t.Errorf("RoleBinding subjects = %v, want the chart's ServiceAccount", subj)
	}

	dep := find(t, objs, "Deployment", "gw-openshell")
	if n, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); n != 1 {
		t.Errorf("replicas = %d, want 1", n)
	}
	if s, _, _ := unstructured.NestedString(dep.Object, "spec", "strategy", "type"); s != "Recreate" {
		t.Errorf("strategy = %q, want Recreate (SQLite on a ReadWriteOnce volume)", s)
	}
	psc, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec", "securityContext")
	if psc["runAsNonRoot"] != true || psc["runAsUser"] != int64(65532) {
		t.Errorf("pod securityContext = %v, want runAsNonRoot as 65532", psc)
	}
	gw := container(t, dep, "containers", "gateway")
	if gw["image"] != "openshell/gateway:0.1.0" {
		t.Errorf("image = %v, want openshell/gateway:0.1.0 (the chart's appVersion)", gw["image"])
	}
	sc := gw["securityContext"].(map[string]any)
	if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false ||
		!reflect.DeepEqual(sc["capabilities"], map[string]any{"drop": []any{"ALL"}}) {
		t.Errorf("container securityContext = %v", sc)
	}
	env := envOf(gw)
	for k, v := range map[string]string{
		"OPENSHELL_DRIVERS": "kubernetes", "OPENSHELL_BIND_ADDRESS": "0.0.0.0", "OPENSHELL_SERVER_PORT": "17670",
		"OPENSHELL_HEALTH_PORT": "17671", "OPENSHELL_SOCKET": "none", "OPENSHELL_STATE_DIR": "/var/lib/openshell/gateway",
		"OPENSHELL_GATEWAY_CONFIG": "/etc/openshell/config/config.toml",
	} {
		if env[k] != v {
			t.Errorf("env %s = %v, want %s", k, env[k], v)
		}
	}
	if _, ok := env["OPENSHELL_DATABASE_URL"]; ok {
		t.Error("OPENSHELL_DATABASE_URL set without database.existingSecret")
	}
	for probe, path := range map[string]string{"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		p, _ := gw[probe].(map[string]any)
		if g, _, _ := unstructured.NestedString(p, "httpGet", "path"); g != path {
			t.Errorf("%s path = %q, want %s", probe, g, path)
		}
	}
	vols, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	if c, _, _ := unstructured.NestedString(vols[0].(map[string]any), "persistentVolumeClaim", "claimName"); c != "gw-openshell-state" {
		t.Errorf("state volume = %v, want the PVC", vols[0])
	}
	seed := container(t, dep, "initContainers", "seed-state")
	if cmd := seed["command"].([]any); cmd[0] != "/usr/local/bin/openshell-copy" || len(cmd) != 7 {
		t.Errorf("seed-state command = %v", cmd)
	}

	// The driver table the gateway reads, through the gateway's own config loader.
	cm := find(t, objs, "ConfigMap", "gw-openshell")
	tomlText, _, _ := unstructured.NestedString(cm.Object, "data", "config.toml")
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(tomlText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Resolve(nil, func(k string) string {
		if k == "OPENSHELL_GATEWAY_CONFIG" {
			return path
		}
		return ""
	})
	if err != nil {
		t.Fatalf("gateway config from the ConfigMap: %v\n%s", err, tomlText)
	}
	tbl := cfg.DriverTable("kubernetes")
	for k, v := range map[string]string{
		"namespace": "team-a", "supervisor_image": "openshell/gateway:0.1.0",
		"gateway_endpoint": "https://gw-openshell.team-a.svc:17670",
	} {
		if tbl[k] != v {
			t.Errorf("[drivers.kubernetes] %s = %v, want %s", k, tbl[k], v)
		}
	}

	// The sandboxes dial the Service by name: the server certificate must carry it.
	if err := cfg.Validate(); err != nil {
		t.Errorf("gateway config from the ConfigMap does not validate: %v", err)
	}
	for _, h := range []string{"gw-openshell", "gw-openshell.team-a.svc", "gw-openshell.team-a.svc.cluster.local"} {
		if !slices.Contains(cfg.TLSHosts, h) {
			t.Errorf("tls_hosts %q lacks %s, which sandboxes and clients dial", cfg.TLSHosts, h)
		}
	}
	if hosts := daemon.CertHosts(cfg); !slices.Contains(hosts, "gw-openshell.team-a.svc") {
		t.Errorf("the gateway's certificate hosts %q lack the Service name", hosts)
	}

	checkPKISecret(t, find(t, objs, "Secret", "gw-openshell-pki"))
}

// checkPKISecret hands the generated identity to the gateway's own loaders: the CA must
// issue the gateway's server and client certificates, the token key must sign, the
// secrets key must open a box.
func checkPKISecret(t *testing.T, s *unstructured.Unstructured) {
	t.Helper()
	data, _, _ := unstructured.NestedStringMap(s.Object, "data")
	want := []string{"ca.crt", "ca.key", "gateway-id", "sandbox-token.key", "secrets.key"}
	if got := slices.Sorted(maps.Keys(data)); !reflect.DeepEqual(got, want) {
		t.Fatalf("PKI Secret keys = %v, want %v", got, want)
	}
	dec := map[string][]byte{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		dec[k] = b
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	for k, rel := range map[string]string{"ca.crt": "pki/ca.crt", "ca.key": "pki/ca.key", "sandbox-token.key": "sandbox-token.key", "secrets.key": "secrets.key"} {
		if err := os.WriteFile(filepath.Join(dir, rel), dec[k], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := pki.Ensure(filepath.Join(dir, "pki"), []string{"gw-openshell-abc"})
	if err != nil {
		t.Fatalf("pki.Ensure with the chart's CA: %v", err)
	}
	blk, _ := pem.Decode(dec["ca.crt"])
	if blk == nil || !bytes.Equal(b.CA.Raw, blk.Bytes) {
		t.Fatal("pki.Ensure replaced the chart's CA instead of using it")
	}
	if _, err := b.Server.Leaf.Verify(x509.VerifyOptions{Roots: b.CertPool(), DNSName: pki.SandboxHostName}); err != nil {
		t.Errorf("server certificate from the chart's CA: %v", err)
	}
	if _, ok := b.CA.PublicKey.(ed25519.PublicKey); !ok {
		t.Errorf("CA key is %T, want Ed25519", b.CA.PublicKey)
	}
	id := strings.TrimSpace(string(dec["gateway-id"]))
	if _, err := token.NewIssuer(filepath.Join(dir, "sandbox-token.key"), id); err != nil {
		t.Errorf("token issuer from the chart's key and id %q: %v", id, err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "sandbox-token.key"))
	if !bytes.Equal(before, dec["sandbox-token.key"]) {
		t.Error("the token issuer replaced the chart's signing key")
	}
	if len(dec["secrets.key"]) != 32 {
		t.Errorf("secrets.key is %d bytes, want 32", len(dec["secrets.key"]))
	}
	if _, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile)); err != nil {
		t.Errorf("secrets box from the chart's key: %v", err)
	}
}

// TestRenderReplicasPostgres: three replicas on PostgreSQL: the DSN from the named
// Secret, no PVC, an emptyDir state directory, a rolling update, the peer port and
// its headless Service, each replica known by its pod name and IP.
func TestRenderReplicasPostgres(t *testing.T) {
	objs, _, err := render(t, "gw-ns", map[string]any{
		"replicas": 3,
		"database": map[string]any{"existingSecret": "pg", "secretKey": "dsn"},
		"driver":   map[string]any{"namespace": "sandboxes", "config": map[string]any{"runtime_class_name": "kata"}},
		"service":  map[string]any{"clusterIP": "10.96.0.170"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ConfigMap/gw-openshell", "Deployment/gw-openshell",
		"Role/gw-openshell-driver", "RoleBinding/gw-openshell-driver", "Secret/gw-openshell-pki",
		"Service/gw-openshell", "Service/gw-openshell-peers", "ServiceAccount/gw-openshell",
	}
	if got := kinds(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects:\n got %v\nwant %v", got, want)
	}
	if ns := find(t, objs, "Role", "gw-openshell-driver").GetNamespace(); ns != "sandboxes" {
		t.Errorf("Role in %q, want the sandbox namespace", ns)
	}
	dep := find(t, objs, "Deployment", "gw-openshell")
	if n, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas"); n != 3 {
		t.Errorf("replicas = %d, want 3", n)
	}
	if _, found, _ := unstructured.NestedMap(dep.Object, "spec", "strategy"); found {
		t.Error("several replicas on PostgreSQL should roll, not Recreate")
	}
	env := envOf(container(t, dep, "containers", "gateway"))
	wantDSN := map[string]any{"secretKeyRef": map[string]any{"name": "pg", "key": "dsn"}}
	if !reflect.DeepEqual(env["OPENSHELL_DATABASE_URL"], wantDSN) {
		t.Errorf("OPENSHELL_DATABASE_URL = %v, want %v", env["OPENSHELL_DATABASE_URL"], wantDSN)
	}
	if env["OPENSHELL_REPLICA_ID"] != "$(POD_NAME)" || env["OPENSHELL_PEER_ADDRESS"] != "0.0.0.0:17672" ||
		env["OPENSHELL_PEER_ADVERTISE_ADDRESS"] != "$(POD_IP):17672" {
		t.Errorf("replica env: id %v, peer listen %v, advertised %v", env["OPENSHELL_REPLICA_ID"], env["OPENSHELL_PEER_ADDRESS"], env["OPENSHELL_PEER_ADVERTISE_ADDRESS"])
	}
	// The environment as the kubelet expands it, through the gateway's own loader (the
	// config file as the ConfigMap mounts it).
	cmText, _, _ := unstructured.NestedString(find(t, objs, "ConfigMap", "gw-openshell").Object, "data", "config.toml")
	cfgPath := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cmText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Resolve(nil, func(k string) string {
		v, _ := env[k].(string)
		if k == "OPENSHELL_GATEWAY_CONFIG" {
			v = cfgPath
		}
		v = strings.NewReplacer("$(POD_NAME)", "gw-openshell-7d9f-abcde", "$(POD_IP)", "10.244.0.7").Replace(v)
		if k == "OPENSHELL_DATABASE_URL" {
			v = "postgres://u:p@db:5432/openshell"
		}
		return v
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the gateway refuses the chart's environment: %v", err)
	}
	if cfg.ReplicaID != "gw-openshell-7d9f-abcde" || cfg.PeerAddress != "0.0.0.0:17672" || cfg.PeerAdvertiseAddress != "10.244.0.7:17672" ||
		cfg.Driver != "kubernetes" || cfg.BindAddress != "0.0.0.0" || cfg.HealthPort != 17671 || cfg.Socket != "none" {
		t.Errorf("gateway config from the chart's env: %+v", cfg)
	}
	vols, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	if _, ok := vols[0].(map[string]any)["emptyDir"]; !ok {
		t.Errorf("state volume = %v, want an emptyDir", vols[0])
	}
	peers := find(t, objs, "Service", "gw-openshell-peers")
	if ip, _, _ := unstructured.NestedString(peers.Object, "spec", "clusterIP"); ip != "None" {
		t.Errorf("peer Service clusterIP = %q, want None (headless)", ip)
	}
	var tbl struct {
		Drivers map[string]map[string]any `toml:"drivers"`
	}
	cm, _, _ := unstructured.NestedString(find(t, objs, "ConfigMap", "gw-openshell").Object, "data", "config.toml")
	if _, err := toml.Decode(cm, &tbl); err != nil {
		t.Fatal(err)
	}
	if k := tbl.Drivers["kubernetes"]; k["namespace"] != "sandboxes" || k["runtime_class_name"] != "kata" ||
		k["gateway_endpoint"] != "https://host.openshell.internal:17670" || k["gateway_host_ip"] != "10.96.0.170" {
		t.Errorf("[drivers.kubernetes] = %v", k)
	}
	if ip, _, _ := unstructured.NestedString(find(t, objs, "Service", "gw-openshell").Object, "spec", "clusterIP"); ip != "10.96.0.170" {
		t.Errorf("Service clusterIP = %q, want the fixed 10.96.0.170", ip)
	}
}

// TestRenderRefusesBadValues: values that cannot work fail the render with the key and
// the fix.
func TestRenderRefusesBadValues(t *testing.T) {
	for name, tc := range map[string]struct {
		vals map[string]any
		want string
	}{
		"replicas without postgres": {map[string]any{"replicas": 2}, "database.existingSecret"},
		"zero replicas":             {map[string]any{"replicas": 0}, "replicas must be at least 1"},
		"agent-sandbox without CRD": {map[string]any{"agentSandbox": map[string]any{"enabled": true}}, "fetch-agent-sandbox.sh"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := render(t, "x", tc.vals, func(c *chart.Chart) {
				c.Files = slices.DeleteFunc(c.Files, func(f *common.File) bool { return strings.HasPrefix(f.Name, "files/agent-sandbox/") })
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestRenderAgentSandbox: the optional dependency renders the Sandbox CRD and a
// controller with exactly the webhook-free flags.
func TestRenderAgentSandbox(t *testing.T) {
	// The real manifest when deploy/helm/fetch-agent-sandbox.sh has run, else a stub
	// with the same name.
	var edit []func(*chart.Chart)
	fetched := true
	if _, err := os.Stat(filepath.Join(chartDir, "files/agent-sandbox/agents.x-k8s.io_sandboxes.yaml")); err != nil {
		fetched = false
		crd := []byte("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: sandboxes.agents.x-k8s.io\n")
		edit = append(edit, func(c *chart.Chart) {
			c.Files = append(c.Files, &common.File{Name: "files/agent-sandbox/agents.x-k8s.io_sandboxes.yaml", Data: crd})
		})
	}
	objs, _, err := render(t, "x", map[string]any{"agentSandbox": map[string]any{"enabled": true}}, edit...)
	if err != nil {
		t.Fatal(err)
	}
	crdObj := find(t, objs, "CustomResourceDefinition", "sandboxes.agents.x-k8s.io")
	if fetched {
		vers, _, _ := unstructured.NestedSlice(crdObj.Object, "spec", "versions")
		var names []string
		for _, v := range vers {
			names = append(names, v.(map[string]any)["name"].(string))
		}
		if !slices.Contains(names, "v1beta1") || !slices.Contains(names, "v1alpha1") {
			t.Errorf("Sandbox CRD serves %v, want v1beta1 and v1alpha1", names)
		}
	}
	find(t, objs, "ClusterRoleBinding", "gw-openshell-agent-sandbox")
	dep := find(t, objs, "Deployment", "gw-openshell-agent-sandbox")
	args := container(t, dep, "containers", "controller")["args"]
	if !slices.Contains(args.([]any), any("--enable-webhook=false")) {
		t.Errorf("controller args = %v", args)
	}
}
