package gateway

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/store"
)

// missingGrace is how long a sandbox may be absent from the driver's list right after
// creation before the gateway declares its backend gone.
const missingGrace = time.Minute

// observe records a driver observation; it writes only when something changed.
func (s *Server) observe(ctx context.Context, id string, ds *computev1.DriverSandbox) (*record, error) {
	return s.mutate(ctx, id, func(r *record) error {
		st := ds.GetStatus()
		if proto.Equal(r.backend, st) && r.failureReason != reasonBackendGone {
			return errNoChange
		}
		r.backend = st
		if r.failureReason == reasonBackendGone {
			r.failureReason, r.failureMessage = "", ""
		}
		return nil
	})
}

// watchLoop consumes the driver's event stream, re-subscribing when it ends.
func (s *Server) watchLoop(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		ch, err := s.drv.Watch(ctx)
		if err != nil {
			s.log.Warn("driver watch failed; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 250 * time.Millisecond
		for ev := range ch {
			s.handleEvent(ctx, ev)
		}
		if ctx.Err() == nil {
			// The stream ended: catch up with a full list, then watch again.
			if err := s.reconcileOnce(ctx); err != nil {
				s.log.Warn("reconcile after watch end failed", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
		}
	}
}

func (s *Server) handleEvent(ctx context.Context, ev *computev1.WatchSandboxesEvent) {
	switch p := ev.GetPayload().(type) {
	case *computev1.WatchSandboxesEvent_Sandbox:
		ds := p.Sandbox.GetSandbox()
		if _, err := s.observe(ctx, ds.GetId(), ds); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("recording a driver observation failed", "sandbox_id", ds.GetId(), "err", err)
		}
	case *computev1.WatchSandboxesEvent_Deleted:
		s.backendGone(ctx, p.Deleted.GetSandboxId())
	case *computev1.WatchSandboxesEvent_PlatformEvent:
		e := p.PlatformEvent.GetEvent()
		s.logs.addEvent(p.PlatformEvent.GetSandboxId(), &openshellv1.PlatformEvent{TimestampMs: e.GetTimestampMs(),
			Source: e.GetSource(), Type: e.GetType(), Reason: e.GetReason(), Message: e.GetMessage(), Metadata: e.GetMetadata()})
	}
}

// backendGone handles a sandbox the driver no longer has: expected while deleting
// (finish the delete), otherwise a failure the user must see.
func (s *Server) backendGone(ctx context.Context, id string) {
	r, err := s.load(ctx, id)
	if err != nil {
		return
	}
	if r.intent == intentDeleting {
		if err := s.finishDelete(ctx, id, r.sb.GetMetadata().GetName()); err != nil {
			s.log.Warn("finishing a delete failed", "sandbox_id", id, "err", err)
		}
		return
	}
	_, _ = s.mutate(ctx, id, func(r *record) error {
		if r.failureReason != "" {
			return errNoChange
		}
		r.backend = nil
		r.failureReason, r.failureMessage = reasonBackendGone, "the compute driver no longer has this sandbox; delete and recreate it"
		return nil
	})
}

func (s *Server) listLoop(ctx context.Context) {
	t := time.NewTicker(s.opts.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.reconcileOnce(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("periodic reconcile failed", "err", err)
			}
		}
	}
}

// reconcileOnce lists the driver's sandboxes and brings every stored record in line.
func (s *Server) reconcileOnce(ctx context.Context) error {
	list, err := s.drv.List(ctx)
	if err != nil {
		return err
	}
	seen := make(map[string]*computev1.DriverSandbox, len(list))
	for _, ds := range list {
		seen[ds.GetId()] = ds
	}
	objs, err := s.st.List(ctx, kindSandbox, store.ListOptions{AllWorkspaces: true})
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	for _, o := range objs {
		r, err := decodeRecord(o)
		if err != nil {
			continue
		}
		id, name := r.id(), r.sb.GetMetadata().GetName()
		ds, ok := seen[id]
		switch {
		case r.intent == intentDeleting:
			// Retry a delete the driver failed earlier.
			if err := s.finishDelete(ctx, id, name); err != nil {
				s.log.Warn("retrying a delete failed", "sandbox_id", id, "err", err)
			}
		case ok:
			if _, err := s.observe(ctx, id, ds); err != nil && !errors.Is(err, store.ErrNotFound) {
				s.log.Warn("recording a driver observation failed", "sandbox_id", id, "err", err)
			}
		case r.failureReason == "" && now-o.CreatedAtMs > missingGrace.Milliseconds():
			// Double-check with Get: List may be eventually consistent.
			if _, err := s.drv.Get(ctx, id, name); errors.Is(err, drivers.ErrNotFound) {
				s.backendGone(ctx, id)
			}
		}
	}
	return nil
}
