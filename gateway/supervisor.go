package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/session"
)

// onSession is the hub's listener: a session coming or going changes the derived
// phase, so wake watchers and persist it.
//
// Watchers first: they derive the phase from the stored record and the hub's live
// sessions, which already hold this change, so a sandbox turning READY is seen now,
// not after the store write below (which queues behind every other write of a busy
// gateway). Nothing is lost to a crash in between: the phase is derived again on
// every read, and a supervisor re-opens its session with a restarted gateway. The
// create timeline's "ready" is stamped at this moment too, not at the write's.
func (s *Server) onSession(sandboxID, instanceID string, connected bool) {
	at := time.Now()
	s.watch.notify(sandboxID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.mutate(ctx, sandboxID, func(r *record) error {
		if connected && instanceID != "" && r.sb.GetStatus().GetMainProcessInstanceId() == "" {
			r.sb.Status.MainProcessInstanceId = instanceID
		}
		if connected {
			r.sessionAt = at
		}
		return nil // always re-stamp the phase
	})
	if errors.Is(err, store.ErrNotFound) {
		s.log.Debug("session change for an unknown sandbox", "sandbox_id", sandboxID)
		return
	}
	if err != nil {
		// Watchers were woken above and derive the phase live; the record catches up at
		// the next write or reconcile.
		s.log.Warn("recording a session change failed", "sandbox_id", sandboxID, "connected", connected, "err", err)
		return
	}
	if connected {
		s.gatewayLog(sandboxID, "INFO", "supervisor connected (instance "+instanceID+")")
	} else {
		s.gatewayLog(sandboxID, "WARN", "supervisor session ended")
	}
}

func (s *Server) ConnectSupervisor(stream openshellv1.OpenShell_ConnectSupervisorServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return invalidf("the first ConnectSupervisor message must be hello")
	}
	if hello.GetSandboxId() == "" {
		return invalidf("hello.sandbox_id is empty")
	}
	if err := auth.RequireSandbox(ctx, hello.GetSandboxId()); err != nil {
		return err
	}
	if _, err := s.load(ctx, hello.GetSandboxId()); err != nil {
		return err
	}
	inst, err := hub.InstanceFromContext(ctx, hello.GetInstanceId())
	if err != nil {
		return err
	}
	err = s.hub.Serve(stream, hello, inst)
	if errors.Is(err, hub.ErrRefused) {
		// Shown by `openshell sandbox logs`: a refused hello is either a leaked token
		// in use or a supervisor that lost its binding.
		s.gatewayLog(hello.GetSandboxId(), "WARN", "supervisor session refused: "+err.Error())
	}
	return err
}

func (s *Server) RelayStream(stream openshellv1.OpenShell_RelayStreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	ch := first.GetInit().GetChannelId()
	if ch == "" {
		return invalidf("the first RelayStream frame must be init with a channel_id")
	}
	inst, err := hub.InstanceFromContext(stream.Context(), "")
	if err != nil {
		return err
	}
	return s.hub.ServeRelay(stream, ch, inst, func(sandboxID string) error {
		return auth.RequireSandbox(stream.Context(), sandboxID)
	})
}

func (s *Server) ReportMainProcessExit(ctx context.Context, req *openshellv1.ReportMainProcessExitRequest) (*openshellv1.ReportMainProcessExitResponse, error) {
	if req.GetSandboxId() == "" || req.GetInstanceId() == "" {
		return nil, invalidf("sandbox_id and instance_id are required")
	}
	inst, err := hub.InstanceFromContext(ctx, req.GetInstanceId())
	if err != nil {
		return nil, err
	}
	if err := s.hub.Authorize(req.GetSandboxId(), inst, false); err != nil {
		s.gatewayLog(req.GetSandboxId(), "WARN", "main-process exit report refused: "+err.Error())
		return nil, err
	}
	code := req.GetExitCode()
	why := s.exitReason(req.GetSandboxId(), code)
	_, err = s.mutate(ctx, req.GetSandboxId(), func(r *record) error {
		switch r.intent {
		case intentStopping, intentStopped, intentDeleting:
			return errNoChange // the exit is the stop we asked for
		}
		if cur := r.sb.GetStatus().GetMainProcessInstanceId(); cur != "" && cur != req.GetInstanceId() {
			s.log.Info("ignoring an exit report from a stale supervisor instance", "sandbox_id", req.GetSandboxId(),
				"instance_id", req.GetInstanceId(), "current", cur)
			return errNoChange
		}
		r.sb.Status.ExitCode = &code
		r.sb.Status.MainProcessInstanceId = req.GetInstanceId()
		if r.failureReason == "" {
			r.failureMessage = why // shown on the Ready condition while exited
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("main process exited", "sandbox_id", req.GetSandboxId(), "exit_code", code)
	s.gatewayLog(req.GetSandboxId(), "WARN", fmt.Sprintf("main process exited with code %d", code))
	return &openshellv1.ReportMainProcessExitResponse{}, nil
}

// maxExitReason bounds the sandbox-supplied part of an exit message.
const maxExitReason = 300

// exitReason is the Ready condition's message for a main-process exit: the code, and
// why the command could not start when the supervisor said so in the last minute
// (it flushes that line before reporting the exit).
func (s *Server) exitReason(id string, code int32) string {
	msg := fmt.Sprintf("the sandbox's main process exited with code %d", code)
	lines, _ := s.logs.tail(id, 50, logFilter{since: time.Now().Add(-time.Minute).UnixMilli(), sources: []string{sandboxLogSource}, minLevel: "ERROR"})
	for i := len(lines) - 1; i >= 0; i-- {
		if rest, ok := strings.CutPrefix(lines[i].GetMessage(), session.MainStartFailure); ok {
			rest = strings.ToValidUTF8(rest, "?")
			if len(rest) > maxExitReason {
				rest = rest[:maxExitReason] + "…"
			}
			return msg + ": " + rest
		}
	}
	return msg
}

// sandboxLogSource is the only source a sandbox may give its log lines: the gateway's
// own lines say "gateway" (gatewayLog), and a sandbox must not be able to pass a
// forged line off as one of them.
const sandboxLogSource = "sandbox"

func (s *Server) PushSandboxLogs(stream openshellv1.OpenShell_PushSandboxLogsServer) error {
	ctx := stream.Context()
	inst, err := hub.InstanceFromContext(ctx, "")
	if err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&openshellv1.PushSandboxLogsResponse{})
		}
		if err != nil {
			return err
		}
		id := req.GetSandboxId()
		if err := auth.RequireSandbox(ctx, id); err != nil {
			return err
		}
		if err := s.hub.Authorize(id, inst, true); err != nil {
			return err
		}
		lines := req.GetLogs()
		for i, l := range lines {
			if l.GetSource() != "" && l.GetSource() != sandboxLogSource {
				// The whole push is refused: a supervisor that forges sources is not
				// one whose other lines deserve trust.
				return status.Errorf(codes.PermissionDenied, "logs[%d].source %q: a sandbox may only push lines with source %q (or none); the gateway's own lines are written by the gateway",
					i, l.GetSource(), sandboxLogSource)
			}
		}
		for _, l := range lines {
			l.SandboxId = id
			l.Source = sandboxLogSource
			if l.TimestampMs == 0 {
				l.TimestampMs = time.Now().UnixMilli()
			}
		}
		s.logs.append(id, lines...)
	}
}

func (s *Server) GetSandboxLogs(ctx context.Context, req *openshellv1.GetSandboxLogsRequest) (*openshellv1.GetSandboxLogsResponse, error) {
	if req.GetSandboxId() == "" {
		return nil, invalidf("sandbox_id is required")
	}
	if _, err := s.load(ctx, req.GetSandboxId()); err != nil {
		return nil, err
	}
	n := int(req.GetLines())
	if n == 0 {
		n = 2000
	}
	lines, total := s.logs.tail(req.GetSandboxId(), n, logFilter{since: req.GetSinceMs(), sources: req.GetSources(), minLevel: req.GetMinLevel()})
	return &openshellv1.GetSandboxLogsResponse{Logs: lines, BufferTotal: uint32(total)}, nil
}

func (s *Server) GetSandboxConfig(ctx context.Context, req *sandboxv1.GetSandboxConfigRequest) (*sandboxv1.GetSandboxConfigResponse, error) {
	if req.GetSandboxId() == "" {
		return nil, invalidf("sandbox_id is required")
	}
	if err := auth.RequireSandbox(ctx, req.GetSandboxId()); err != nil {
		return nil, err
	}
	r, err := s.load(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &sandboxv1.GetSandboxConfigResponse{Workspace: r.sb.GetMetadata().GetWorkspace(),
		PolicySource: sandboxv1.PolicySource_POLICY_SOURCE_SANDBOX, PolicyValidationFailureMode: "fail_closed",
		Version: r.currentPolicyVersion()}
	if p := r.sb.GetSpec().GetPolicy(); p != nil {
		resp.Policy = p
		resp.PolicyHash = policy.Hash(p)
		// The revision changes whenever the policy does (first 64 bits of its hash).
		if len(resp.PolicyHash) >= 16 {
			resp.ConfigRevision, _ = strconv.ParseUint(resp.PolicyHash[:16], 16, 64)
		}
	}
	return resp, nil
}
