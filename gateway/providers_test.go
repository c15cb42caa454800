package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/credentials"
)

const ghSecret = "ghp_provider_secret_value_0123456789"

// newProvider is a CreateProviderRequest; hosts go into config "hosts".
func newProvider(name, typ string, creds map[string]string, hosts ...string) *openshellv1.CreateProviderRequest {
	p := &datamodelv1.Provider{Metadata: &datamodelv1.ObjectMeta{Name: name}, Type: typ, Credentials: creds}
	if len(hosts) > 0 {
		p.Config = map[string]string{credentials.ConfigHosts: strings.Join(hosts, ",")}
	}
	return &openshellv1.CreateProviderRequest{Provider: p}
}

// envReq asks for a sandbox's real provider values (as the supervisor does).
func envReq(id string) *openshellv1.GetSandboxProviderEnvironmentRequest {
	return &openshellv1.GetSandboxProviderEnvironmentRequest{SandboxId: id, SupportsStaticCredentialBindings: true}
}

// decodeEnv decodes a GetSandboxProviderEnvironment answer as the supervisor does.
func decodeEnv(t *testing.T, resp *openshellv1.GetSandboxProviderEnvironmentResponse) []credentials.Provider {
	t.Helper()
	ps, err := credentials.ProvidersFromEnvironment(resp)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func createGitHubProvider(t *testing.T, ue openshellv1.OpenShellClient) *datamodelv1.Provider {
	t.Helper()
	p, err := ue.CreateProvider(context.Background(), newProvider("github", "github",
		map[string]string{"GITHUB_TOKEN": ghSecret, "GH_USER": "bot"}, "api.github.com"))
	if err != nil {
		t.Fatal(err)
	}
	return p.GetProvider()
}

func TestProviderCRUD(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	ue := e.user
	p := createGitHubProvider(t, ue)
	if !slices.Equal(slices.Sorted(maps.Keys(p.GetCredentials())), []string{"GH_USER", "GITHUB_TOKEN"}) || p.GetCredentials()["GITHUB_TOKEN"] != "" ||
		p.GetType() != "github" || p.GetMetadata().GetCreatedAtMs() == 0 || p.GetMetadata().GetId() == "" {
		t.Fatalf("created provider = %v", p)
	}
	_, err := ue.CreateProvider(ctx, newProvider("github", "github", map[string]string{"A": "b"}))
	wantCode(t, err, codes.AlreadyExists)
	_, err = ue.CreateProvider(ctx, newProvider("Bad Name", "x", map[string]string{"A": "b"}))
	wantCode(t, err, codes.InvalidArgument)
	_, err = ue.CreateProvider(ctx, newProvider("x", "x", map[string]string{"1BAD": "b"}))
	wantCode(t, err, codes.InvalidArgument)

	got, err := ue.GetProvider(ctx, &openshellv1.GetProviderRequest{Name: "github"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got.String(), ghSecret) || got.GetProvider().GetConfig()[credentials.ConfigHosts] != "api.github.com" {
		t.Fatalf("GetProvider = %v (values must never be returned)", got)
	}
	if _, err := ue.CreateProvider(ctx, newProvider("anthropic", "llm", map[string]string{"API_KEY": "k"})); err != nil {
		t.Fatal(err)
	}
	list, err := ue.ListProviders(ctx, &openshellv1.ListProvidersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetProviders()) != 2 || list.GetProviders()[0].GetMetadata().GetName() != "anthropic" || strings.Contains(list.String(), ghSecret) {
		t.Fatalf("ListProviders = %v", list)
	}
	if _, err := ue.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "anthropic"}); err != nil {
		t.Fatal(err)
	}
	_, err = ue.GetProvider(ctx, &openshellv1.GetProviderRequest{Name: "anthropic"})
	wantCode(t, err, codes.NotFound)
	_, err = ue.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "anthropic"})
	wantCode(t, err, codes.NotFound)

	// The database files hold no plaintext credential.
	files, _ := filepath.Glob(filepath.Join(e.dir, "openshell.db*"))
	if len(files) == 0 {
		t.Fatal("no database files")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte(ghSecret)) {
			t.Fatalf("%s contains a provider credential in plaintext", f)
		}
	}
}

func TestSandboxProviders(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	ue := e.user
	createGitHubProvider(t, ue)

	// Unknown provider names are refused at create, naming the fix.
	_, err := e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "x", Spec: &openshellv1.SandboxSpec{
		Template: &openshellv1.SandboxTemplate{Image: "test:1"}, Providers: []string{"github", "nope"}}})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "openshell provider create") {
		t.Errorf("unknown provider error = %v", err)
	}

	id := e.create("agent", "github").GetMetadata().GetId()
	other := e.create("other").GetMetadata().GetId()

	got, err := e.sandboxClient(id).GetSandboxProviderEnvironment(ctx, envReq(id))
	if err != nil {
		t.Fatal(err)
	}
	if ps := decodeEnv(t, got); len(ps) != 1 || ps[0].Credentials["GITHUB_TOKEN"] != ghSecret || ps[0].Name != "github" ||
		!slices.Equal(ps[0].Hosts, []string{"api.github.com"}) {
		t.Fatalf("GetSandboxProviderEnvironment = %v", got)
	}
	// A caller that cannot bind credentials to hosts gets placeholders only.
	ph, err := e.sandboxClient(id).GetSandboxProviderEnvironment(ctx, &openshellv1.GetSandboxProviderEnvironmentRequest{SandboxId: id})
	if err != nil || strings.Contains(ph.String(), ghSecret) || !strings.HasPrefix(ph.GetEnvironment()["GITHUB_TOKEN"], credentials.PlaceholderPrefix+"github:GITHUB_TOKEN:") {
		t.Fatalf("placeholder answer %v, %v", ph, err)
	}
	// Never to a user, never to another sandbox.
	_, err = ue.GetSandboxProviderEnvironment(ctx, envReq(id))
	wantCode(t, err, codes.PermissionDenied)
	_, err = e.sandboxClient(other).GetSandboxProviderEnvironment(ctx, envReq(id))
	wantCode(t, err, codes.PermissionDenied)
	none, err := e.sandboxClient(other).GetSandboxProviderEnvironment(ctx, envReq(other))
	if err != nil || len(none.GetEnvironment()) != 0 {
		t.Fatalf("sandbox without providers: %v %v", none, err)
	}
	// Provider CRUD is a user method.
	_, err = e.sandboxClient(id).ListProviders(ctx, &openshellv1.ListProvidersRequest{})
	wantCode(t, err, codes.PermissionDenied)

	// In use: delete refused, naming the sandbox; allowed after the sandbox is gone.
	_, err = ue.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "github"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), `"agent"`) {
		t.Errorf("delete-in-use error does not name the sandbox: %v", err)
	}
	if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "agent"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = ue.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "github"})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("delete after the sandbox is gone: %v", err)
	}
}

// A CreateSandbox naming a provider and a DeleteProvider of it, at the same time,
// never leave a sandbox whose provider is gone: one of the two fails.
func TestProviderDeleteRacesCreate(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	ue := e.user
	const rounds = 40
	var bothOK, createOnly, deleteOnly int
	for i := range rounds {
		prov, box := fmt.Sprintf("p%d", i), fmt.Sprintf("race%d", i)
		if _, err := ue.CreateProvider(ctx, newProvider(prov, "generic",
			map[string]string{"TOKEN": "v"})); err != nil {
			t.Fatal(err)
		}
		var cerr, derr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, cerr = e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: box, Spec: &openshellv1.SandboxSpec{
				Template: &openshellv1.SandboxTemplate{Image: "test:1"}, Providers: []string{prov}}})
		}()
		go func() {
			defer wg.Done()
			_, derr = ue.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: prov})
		}()
		wg.Wait()
		_, gerr := ue.GetProvider(ctx, &openshellv1.GetProviderRequest{Name: prov})
		_, serr := e.user.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: box})
		providerGone, sandboxThere := status.Code(gerr) == codes.NotFound, serr == nil
		if providerGone && sandboxThere {
			t.Fatalf("round %d: sandbox %s exists but its provider %s was deleted (create: %v, delete: %v)", i, box, prov, cerr, derr)
		}
		switch {
		case cerr == nil && derr == nil:
			bothOK++ // only if the sandbox was gone again before the delete looked
		case cerr == nil:
			createOnly++
			wantCode(t, derr, codes.FailedPrecondition)
		case derr == nil:
			deleteOnly++
			wantCode(t, cerr, codes.FailedPrecondition)
		default:
			wantCode(t, cerr, codes.FailedPrecondition)
			wantCode(t, derr, codes.FailedPrecondition)
		}
		if derr != nil && status.Code(gerr) != codes.OK {
			t.Fatalf("round %d: delete failed (%v) but the provider is gone: %v", i, derr, gerr)
		}
		if derr != nil {
			// A refused delete leaves the provider usable (its mark removed).
			if _, err := e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: box + "b", Spec: &openshellv1.SandboxSpec{
				Template: &openshellv1.SandboxTemplate{Image: "test:1"}, Providers: []string{prov}}}); err != nil {
				t.Fatalf("round %d: provider unusable after a refused delete: %v", i, err)
			}
		}
	}
	if bothOK != 0 {
		t.Fatalf("%d rounds had both the create and the delete succeed", bothOK)
	}
	t.Logf("%d rounds: create won %d, delete won %d, both refused %d", rounds, createOnly, deleteOnly, rounds-createOnly-deleteOnly)
}
