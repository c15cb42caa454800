// Package storetest is the conformance suite every store backend runs: Run for
// behaviour, Bench for the Get/List hot paths on 1,000 objects.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/openshell/openshell/gateway/store"
)

// Factory returns a new, empty store for one test; it registers its own cleanup
// (closing the store, dropping its data) with tb.Cleanup.
type Factory func(tb testing.TB) store.Store

// Run runs the whole suite against stores made by newStore.
func Run(t *testing.T, newStore Factory) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateDuplicate", testCreateDuplicate},
		{"CreateInvalid", testCreateInvalid},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ListPaging", testListPaging},
		{"UpdateCAS", testUpdateCAS},
		{"UpdateRename", testUpdateRename},
		{"ConcurrentUpdaters", testConcurrentUpdaters},
		{"ConcurrentCreateSameName", testConcurrentCreateSameName},
		{"Delete", testDelete},
		{"CanceledContext", testCanceledContext},
		{"ServiceRecords", testServiceRecords},
		{"Sessions", testSessions},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func obj(kind, id, ws, name string, labels map[string]string, createdAt int64, data string) *store.Object {
	return &store.Object{Kind: kind, ID: id, Workspace: ws, Name: name, Labels: labels, CreatedAtMs: createdAt, Data: []byte(data)}
}

func mustCreate(t testing.TB, s store.Store, o *store.Object) *store.Object {
	t.Helper()
	got, err := s.Create(context.Background(), o)
	if err != nil {
		t.Fatalf("Create(%s %s): %v", o.Kind, o.ID, err)
	}
	return got
}

func equalObj(a, b *store.Object) bool {
	return a.Kind == b.Kind && a.ID == b.ID && a.Workspace == b.Workspace && a.Name == b.Name &&
		maps.Equal(a.Labels, b.Labels) && a.ResourceVersion == b.ResourceVersion &&
		a.CreatedAtMs == b.CreatedAtMs && bytes.Equal(a.Data, b.Data)
}

func ids(objs []*store.Object) string {
	s := make([]string, len(objs))
	for i, o := range objs {
		s[i] = o.ID
	}
	return strings.Join(s, ",")
}

func testCreateGet(t *testing.T, s store.Store) {
	ctx := t.Context()
	in := obj("sandbox", "id-1", "default", "alpha", map[string]string{"app": "web"}, 0, "\x00payload\xff")
	in.ResourceVersion = 42 // ignored by Create
	created, err := s.Create(ctx, in)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if created.ResourceVersion != 1 {
		t.Errorf("Create returned ResourceVersion %d, want 1", created.ResourceVersion)
	}
	if created.CreatedAtMs <= 0 {
		t.Errorf("Create left CreatedAtMs = %d, want now", created.CreatedAtMs)
	}
	if !bytes.Equal(created.Data, in.Data) || !maps.Equal(created.Labels, in.Labels) {
		t.Errorf("Create returned %+v, want payload/labels of %+v", created, in)
	}
	// The store must not keep the caller's maps/slices, nor hand out its own.
	in.Labels["app"] = "mutated"
	in.Data[0] = 'X'
	created.Labels["app"] = "mutated-too"

	got, err := s.Get(ctx, "sandbox", "id-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := obj("sandbox", "id-1", "default", "alpha", map[string]string{"app": "web"}, created.CreatedAtMs, "\x00payload\xff")
	want.ResourceVersion = 1
	if !equalObj(got, want) {
		t.Fatalf("Get = %+v, want %+v", got, want)
	}
	byName, err := s.GetByName(ctx, "sandbox", "default", "alpha")
	if err != nil || !equalObj(byName, want) {
		t.Fatalf("GetByName = %+v, %v; want %+v", byName, err, want)
	}

	// Explicit CreatedAtMs is kept; nil labels and data round-trip as empty.
	bare := mustCreate(t, s, obj("sandbox", "id-2", "default", "beta", nil, 1234, ""))
	bare.Data = nil
	got, err = s.Get(ctx, "sandbox", "id-2")
	if err != nil || got.CreatedAtMs != 1234 || len(got.Labels) != 0 || len(got.Data) != 0 {
		t.Fatalf("Get(bare) = %+v, %v; want CreatedAtMs 1234, no labels, no data", got, err)
	}
}

func testCreateDuplicate(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, obj("sandbox", "id-1", "ws", "alpha", nil, 0, ""))
	for _, dup := range []*store.Object{
		obj("sandbox", "id-1", "ws", "other-name", nil, 0, ""), // same id
		obj("sandbox", "id-2", "ws", "alpha", nil, 0, ""),      // same (kind, workspace, name)
	} {
		_, err := s.Create(ctx, dup)
		if !errors.Is(err, store.ErrAlreadyExists) {
			t.Errorf("Create(%+v) = %v, want ErrAlreadyExists", dup, err)
		} else if !strings.Contains(err.Error(), dup.ID) {
			t.Errorf("ErrAlreadyExists %q does not name the object %q", err, dup.ID)
		}
	}
	// The same name is free in another workspace and in another kind.
	mustCreate(t, s, obj("sandbox", "id-3", "ws2", "alpha", nil, 0, ""))
	mustCreate(t, s, obj("provider", "id-4", "ws", "alpha", nil, 0, ""))
	list, err := s.List(ctx, "sandbox", store.ListOptions{AllWorkspaces: true})
	if err != nil || len(list) != 2 {
		t.Fatalf("List after duplicates = %s, %v; want id-1,id-3", ids(list), err)
	}
}

func testCreateInvalid(t *testing.T, s store.Store) {
	for _, o := range []*store.Object{
		nil,
		obj("", "id", "ws", "n", nil, 0, ""),
		obj("sandbox", "", "ws", "n", nil, 0, ""),
		obj("sandbox", "id", "ws", "", nil, 0, ""),
	} {
		if _, err := s.Create(t.Context(), o); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Create(%+v) = %v, want ErrInvalid", o, err)
		}
	}
	if _, err := s.List(t.Context(), "sandbox", store.ListOptions{Limit: -1}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("List(Limit -1) = %v, want ErrInvalid", err)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustCreate(t, s, obj("provider", "id-1", "ws", "alpha", nil, 0, ""))
	if _, err := s.Get(ctx, "sandbox", "id-1"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "id-1") {
		t.Errorf("Get(other kind) = %v, want ErrNotFound naming id-1", err)
	}
	if _, err := s.GetByName(ctx, "provider", "other-ws", "alpha"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetByName(other workspace) = %v, want ErrNotFound", err)
	}
	if _, err := s.Update(ctx, &store.Object{Kind: "sandbox", ID: "nope", Name: "n", ResourceVersion: 1}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Update(missing) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "sandbox", "nope", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete(missing) = %v, want ErrNotFound", err)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Created out of order; c and b share a timestamp so the id breaks the tie.
	mustCreate(t, s, obj("sandbox", "d", "ws1", "n-d", map[string]string{"app": "web", "tier": "1"}, 400, ""))
	mustCreate(t, s, obj("sandbox", "c", "ws1", "n-c", map[string]string{"app": "db"}, 200, ""))
	mustCreate(t, s, obj("sandbox", "a", "ws2", "n-a", map[string]string{"app": "web"}, 100, ""))
	mustCreate(t, s, obj("sandbox", "b", "ws1", "n-b", map[string]string{"app": "web", "tier": "2"}, 200, ""))
	mustCreate(t, s, obj("provider", "p", "ws1", "n-p", map[string]string{"app": "web"}, 50, ""))

	for _, tc := range []struct {
		name string
		opts store.ListOptions
		want string
	}{
		{"workspace", store.ListOptions{Workspace: "ws1"}, "b,c,d"},
		{"other workspace", store.ListOptions{Workspace: "ws2"}, "a"},
		{"empty workspace", store.ListOptions{}, ""},
		{"unknown workspace", store.ListOptions{Workspace: "nope"}, ""},
		{"all workspaces", store.ListOptions{AllWorkspaces: true, Workspace: "ignored"}, "a,b,c,d"},
		{"selector", store.ListOptions{Workspace: "ws1", Selector: map[string]string{"app": "web"}}, "b,d"},
		{"selector two keys", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"app": "web", "tier": "2"}}, "b"},
		{"selector no match", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"app": "none"}}, ""},
		{"selector missing key", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"zone": ""}}, ""},
		{"limit", store.ListOptions{AllWorkspaces: true, Limit: 2}, "a,b"},
		{"offset", store.ListOptions{AllWorkspaces: true, Offset: 3}, "d"},
		{"limit+offset", store.ListOptions{AllWorkspaces: true, Limit: 2, Offset: 1}, "b,c"},
		{"offset past end", store.ListOptions{AllWorkspaces: true, Offset: 10}, ""},
		// Paging applies after filtering: the 2nd web sandbox overall is b, the 3rd d.
		{"selector+offset", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"app": "web"}, Offset: 1}, "b,d"},
		{"selector+limit+offset", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"app": "web"}, Limit: 1, Offset: 2}, "d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(t.Context(), "sandbox", tc.opts)
			if err != nil {
				t.Fatalf("List(%+v): %v", tc.opts, err)
			}
			if ids(got) != tc.want {
				t.Fatalf("List(%+v) = [%s], want [%s]", tc.opts, ids(got), tc.want)
			}
			for _, o := range got {
				if o.Kind != "sandbox" || o.ResourceVersion != 1 {
					t.Fatalf("List returned %+v", o)
				}
			}
		})
	}
	if got, err := s.List(ctx, "kind-without-objects", store.ListOptions{AllWorkspaces: true}); err != nil || len(got) != 0 {
		t.Fatalf("List(empty kind) = %v, %v", got, err)
	}
}

func testListPaging(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 25
	for i := range n {
		labels := map[string]string{"parity": []string{"even", "odd"}[i%2]}
		mustCreate(t, s, obj("sandbox", fmt.Sprintf("id-%02d", i), "ws", fmt.Sprintf("n%d", i), labels, int64(1000+i), ""))
	}
	// Walking the odd ones page by page must visit each exactly once, in order.
	var seen []string
	for off := 0; ; off += 4 {
		page, err := s.List(ctx, "sandbox", store.ListOptions{Workspace: "ws", Selector: map[string]string{"parity": "odd"}, Limit: 4, Offset: off})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 4 {
			t.Fatalf("page of %d > limit 4", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, o := range page {
			seen = append(seen, o.ID)
		}
	}
	var want []string
	for i := 1; i < n; i += 2 {
		want = append(want, fmt.Sprintf("id-%02d", i))
	}
	if strings.Join(seen, ",") != strings.Join(want, ",") {
		t.Fatalf("paged odd ids = %v, want %v", seen, want)
	}
}

func testUpdateCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
	created := mustCreate(t, s, obj("sandbox", "id-1", "ws", "alpha", map[string]string{"a": "1"}, 0, "v1"))

	upd := created.Clone()
	upd.Data = []byte("v2")
	upd.Labels = map[string]string{"b": "2"}
	upd.CreatedAtMs = 1 // immutable: must be ignored
	got, err := s.Update(ctx, upd)
	if err != nil {
		t.Fatalf("Update at rv 1: %v", err)
	}
	if got.ResourceVersion != 2 || string(got.Data) != "v2" || !maps.Equal(got.Labels, upd.Labels) || got.CreatedAtMs != created.CreatedAtMs {
		t.Fatalf("Update returned %+v; want rv 2, data v2, labels b=2, CreatedAtMs %d", got, created.CreatedAtMs)
	}
	stored, err := s.Get(ctx, "sandbox", "id-1")
	if err != nil || !equalObj(stored, got) {
		t.Fatalf("Get after Update = %+v, %v; want %+v", stored, err, got)
	}

	// A writer still holding rv 1 loses, and nothing changes.
	stale := created.Clone()
	stale.Data = []byte("stale")
	_, err = s.Update(ctx, stale)
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "id-1") {
		t.Fatalf("Update at stale rv = %v, want ErrConflict naming id-1", err)
	}
	for _, rv := range []uint64{0, 3, 99} {
		stale.ResourceVersion = rv
		if _, err := s.Update(ctx, stale); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Update at rv %d = %v, want ErrConflict", rv, err)
		}
	}
	if after, _ := s.Get(ctx, "sandbox", "id-1"); !equalObj(after, got) {
		t.Fatalf("failed Updates changed the object: %+v", after)
	}
	if _, err := s.Update(ctx, &store.Object{Kind: "sandbox", ID: "id-1", ResourceVersion: 2}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Update without name = %v, want ErrInvalid", err)
	}
}

func testUpdateRename(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := mustCreate(t, s, obj("sandbox", "id-a", "ws", "alpha", nil, 0, ""))
	mustCreate(t, s, obj("sandbox", "id-b", "ws", "beta", nil, 0, ""))
	a.Name = "beta"
	if _, err := s.Update(ctx, a); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("rename onto a taken name = %v, want ErrAlreadyExists", err)
	}
	a.Name = "gamma"
	if _, err := s.Update(ctx, a); err != nil {
		t.Fatalf("rename to a free name: %v", err)
	}
	if got, err := s.GetByName(ctx, "sandbox", "ws", "gamma"); err != nil || got.ID != "id-a" || got.ResourceVersion != 2 {
		t.Fatalf("GetByName(gamma) = %+v, %v", got, err)
	}
	if _, err := s.GetByName(ctx, "sandbox", "ws", "alpha"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old name still resolves: %v", err)
	}
}

// testConcurrentUpdaters races writers that all read the same version: exactly one
// wins per version and every loser gets ErrConflict.
func testConcurrentUpdaters(t *testing.T, s store.Store) {
	ctx := t.Context()
	cur := mustCreate(t, s, obj("sandbox", "id-1", "ws", "alpha", nil, 0, "0"))
	const writers, rounds = 8, 5
	for round := range rounds {
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			winners  []*store.Object
			otherErr []error
		)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := cur.Clone()
				o.Data = fmt.Appendf(nil, "round %d writer %d", round, w)
				got, err := s.Update(ctx, o)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					winners = append(winners, got)
				case !errors.Is(err, store.ErrConflict):
					otherErr = append(otherErr, err)
				}
			}()
		}
		wg.Wait()
		if len(otherErr) > 0 {
			t.Fatalf("round %d: unexpected errors (want only ErrConflict): %v", round, errors.Join(otherErr...))
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d writers won at rv %d, want exactly 1", round, len(winners), cur.ResourceVersion)
		}
		if winners[0].ResourceVersion != cur.ResourceVersion+1 {
			t.Fatalf("round %d: winner rv %d, want %d", round, winners[0].ResourceVersion, cur.ResourceVersion+1)
		}
		stored, err := s.Get(ctx, "sandbox", "id-1")
		if err != nil || !equalObj(stored, winners[0]) {
			t.Fatalf("round %d: stored %+v, %v; want the winner's %+v", round, stored, err, winners[0])
		}
		cur = stored
	}
	if cur.ResourceVersion != rounds+1 {
		t.Fatalf("final rv %d, want %d", cur.ResourceVersion, rounds+1)
	}
}

func testConcurrentCreateSameName(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Create(ctx, obj("sandbox", fmt.Sprintf("id-%d", i), "ws", "same", nil, 0, ""))
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, store.ErrAlreadyExists):
			t.Errorf("concurrent Create: %v, want nil or ErrAlreadyExists", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent Creates of the same name succeeded, want 1", ok)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := mustCreate(t, s, obj("sandbox", "id-a", "ws", "alpha", nil, 0, ""))
	a.Data = []byte("x")
	a, err := s.Update(ctx, a) // rv 2
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "sandbox", "id-a", 1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Delete at stale rv = %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, "sandbox", "id-a"); err != nil {
		t.Fatalf("failed Delete removed the object: %v", err)
	}
	if err := s.Delete(ctx, "sandbox", "id-a", a.ResourceVersion); err != nil {
		t.Fatalf("Delete at current rv: %v", err)
	}
	if _, err := s.Get(ctx, "sandbox", "id-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "sandbox", "id-a", 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	// The name is free again, and rv 0 deletes whatever version is stored.
	b := mustCreate(t, s, obj("sandbox", "id-b", "ws", "alpha", nil, 0, ""))
	if _, err := s.Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "sandbox", "id-b", 0); err != nil {
		t.Fatalf("unconditional Delete: %v", err)
	}
	if list, err := s.List(ctx, "sandbox", store.ListOptions{AllWorkspaces: true}); err != nil || len(list) != 0 {
		t.Fatalf("List after deletes = [%s], %v", ids(list), err)
	}
}

// testServiceRecords is how the gateway keeps exposed services: one name per
// (workspace, sandbox, service), dotted label keys, and lookups by two labels across
// workspaces (the service proxy's route carries no workspace) or by sandbox id (a
// sandbox's services are deleted with it).
func testServiceRecords(t *testing.T, s store.Store) {
	ctx := t.Context()
	lbl := func(sb, id, svc string) map[string]string {
		return map[string]string{"openshell.sandbox": sb, "openshell.sandbox-id": id, "openshell.service": svc}
	}
	mustCreate(t, s, obj("service", "s1", "default", "web--dev", lbl("dev", "id-1", "web"), 10, "p8080"))
	mustCreate(t, s, obj("service", "s2", "default", "api--dev", lbl("dev", "id-1", "api"), 20, "p9000"))
	mustCreate(t, s, obj("service", "s3", "team", "web--dev", lbl("dev", "id-2", "web"), 30, "p80"))
	mustCreate(t, s, obj("sandbox", "x", "default", "web--dev", lbl("dev", "id-1", "web"), 5, ""))
	if _, err := s.Create(ctx, obj("service", "s4", "default", "web--dev", lbl("dev", "id-1", "web"), 40, "")); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("second web--dev in workspace default: %v, want ErrAlreadyExists", err)
	}
	for _, tc := range []struct {
		name string
		opts store.ListOptions
		want string
	}{
		{"route across workspaces", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"openshell.sandbox": "dev", "openshell.service": "web"}}, "s1,s3"},
		{"route, first two", store.ListOptions{AllWorkspaces: true, Limit: 2, Selector: map[string]string{"openshell.service": "api", "openshell.sandbox": "dev"}}, "s2"},
		{"by sandbox id", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"openshell.sandbox-id": "id-1"}}, "s1,s2"},
		{"by sandbox in a workspace", store.ListOptions{Workspace: "team", Selector: map[string]string{"openshell.sandbox": "dev"}}, "s3"},
	} {
		got, err := s.List(ctx, "service", tc.opts)
		if err != nil || ids(got) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.name, ids(got), err, tc.want)
		}
	}
	got, err := s.GetByName(ctx, "service", "team", "web--dev")
	if err != nil || got.ID != "s3" || string(got.Data) != "p80" {
		t.Fatalf("GetByName(team, web--dev) = %+v, %v", got, err)
	}
	// Re-exposing re-points the record in place.
	got.Data = []byte("p81")
	got.Labels = lbl("dev", "id-3", "web")
	if _, err := s.Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if l, err := s.List(ctx, "service", store.ListOptions{AllWorkspaces: true, Selector: map[string]string{"openshell.sandbox-id": "id-2"}}); err != nil || len(l) != 0 {
		t.Errorf("old sandbox id still selects %s, %v", ids(l), err)
	}
	for _, id := range []string{"s1", "s2"} {
		if err := s.Delete(ctx, "service", id, 0); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := s.List(ctx, "service", store.ListOptions{AllWorkspaces: true}); err != nil || ids(l) != "s3" {
		t.Errorf("after deleting id-1's services: %s, %v", ids(l), err)
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Create(ctx, obj("sandbox", "id", "ws", "n", nil, 0, "")); err == nil {
		t.Errorf("Create with a canceled context succeeded")
	}
	if _, err := s.List(ctx, "sandbox", store.ListOptions{AllWorkspaces: true}); err == nil {
		t.Errorf("List with a canceled context succeeded")
	}
}

// Bench measures Get and List against 1,000 stored objects.
func Bench(b *testing.B, newStore Factory) {
	s := newStore(b)
	ctx := context.Background()
	const n = 1000
	payload := bytes.Repeat([]byte("p"), 512)
	for i := range n {
		labels := map[string]string{"app": fmt.Sprintf("app-%d", i%10), "team": "core"}
		o := &store.Object{Kind: "sandbox", ID: fmt.Sprintf("id-%04d", i), Workspace: "default", Name: fmt.Sprintf("sb-%04d", i), Labels: labels, CreatedAtMs: int64(i + 1), Data: payload}
		if _, err := s.Create(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Get", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.Get(ctx, "sandbox", fmt.Sprintf("id-%04d", i%n)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("GetByName", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.GetByName(ctx, "sandbox", "default", fmt.Sprintf("sb-%04d", i%n)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("ListAll1000", func(b *testing.B) {
		for b.Loop() {
			l, err := s.List(ctx, "sandbox", store.ListOptions{Workspace: "default"})
			if err != nil || len(l) != n {
				b.Fatalf("List = %d, %v", len(l), err)
			}
		}
	})
	b.Run("ListPage50", func(b *testing.B) {
		for b.Loop() {
			l, err := s.List(ctx, "sandbox", store.ListOptions{Workspace: "default", Limit: 50, Offset: 500})
			if err != nil || len(l) != 50 {
				b.Fatalf("List = %d, %v", len(l), err)
			}
		}
	})
	b.Run("ListSelectorPage10", func(b *testing.B) {
		sel := map[string]string{"app": "app-3"}
		for b.Loop() {
			l, err := s.List(ctx, "sandbox", store.ListOptions{Workspace: "default", Selector: sel, Limit: 10, Offset: 50})
			if err != nil || len(l) != 10 {
				b.Fatalf("List = %d, %v", len(l), err)
			}
		}
	})
}
