package gateway

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
)

// The upstream RPCs this gateway does not implement answer UNIMPLEMENTED with the
// reason and what to use instead (the generated default only says "not
// implemented"). The table in the API test lists each one.

var unimplProfiles = status.Error(codes.Unimplemented, "provider profiles are not implemented by this gateway; create providers directly with CreateProvider (type, credentials, config hosts/headers)")

func (s *Server) ListProviderProfiles(context.Context, *openshellv1.ListProviderProfilesRequest) (*openshellv1.ListProviderProfilesResponse, error) {
	return nil, unimplProfiles
}

func (s *Server) GetProviderProfile(context.Context, *openshellv1.GetProviderProfileRequest) (*openshellv1.ProviderProfileResponse, error) {
	return nil, unimplProfiles
}

func (s *Server) ImportProviderProfiles(context.Context, *openshellv1.ImportProviderProfilesRequest) (*openshellv1.ImportProviderProfilesResponse, error) {
	return nil, unimplProfiles
}

func (s *Server) UpdateProviderProfiles(context.Context, *openshellv1.UpdateProviderProfilesRequest) (*openshellv1.UpdateProviderProfilesResponse, error) {
	return nil, unimplProfiles
}

func (s *Server) LintProviderProfiles(context.Context, *openshellv1.LintProviderProfilesRequest) (*openshellv1.LintProviderProfilesResponse, error) {
	return nil, unimplProfiles
}

func (s *Server) DeleteProviderProfile(context.Context, *openshellv1.DeleteProviderProfileRequest) (*openshellv1.DeleteProviderProfileResponse, error) {
	return nil, unimplProfiles
}

var unimplRefresh = status.Error(codes.Unimplemented, "credential refresh is not implemented by this gateway (it stores static values); replace a credential with UpdateProvider")

func (s *Server) GetProviderRefreshStatus(context.Context, *openshellv1.GetProviderRefreshStatusRequest) (*openshellv1.GetProviderRefreshStatusResponse, error) {
	return nil, unimplRefresh
}

func (s *Server) ConfigureProviderRefresh(context.Context, *openshellv1.ConfigureProviderRefreshRequest) (*openshellv1.ConfigureProviderRefreshResponse, error) {
	return nil, unimplRefresh
}

func (s *Server) RotateProviderCredential(context.Context, *openshellv1.RotateProviderCredentialRequest) (*openshellv1.RotateProviderCredentialResponse, error) {
	return nil, unimplRefresh
}

func (s *Server) DeleteProviderRefresh(context.Context, *openshellv1.DeleteProviderRefreshRequest) (*openshellv1.DeleteProviderRefreshResponse, error) {
	return nil, unimplRefresh
}

var unimplDrafts = status.Error(codes.Unimplemented, "policy drafts and denial analysis are not implemented by this gateway; change a sandbox's policy with UpdateConfig (`openshell policy set`)")

func (s *Server) SubmitPolicyAnalysis(context.Context, *openshellv1.SubmitPolicyAnalysisRequest) (*openshellv1.SubmitPolicyAnalysisResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) GetDraftPolicy(context.Context, *openshellv1.GetDraftPolicyRequest) (*openshellv1.GetDraftPolicyResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) ApproveDraftChunk(context.Context, *openshellv1.ApproveDraftChunkRequest) (*openshellv1.ApproveDraftChunkResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) RejectDraftChunk(context.Context, *openshellv1.RejectDraftChunkRequest) (*openshellv1.RejectDraftChunkResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) ApproveAllDraftChunks(context.Context, *openshellv1.ApproveAllDraftChunksRequest) (*openshellv1.ApproveAllDraftChunksResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) EditDraftChunk(context.Context, *openshellv1.EditDraftChunkRequest) (*openshellv1.EditDraftChunkResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) UndoDraftChunk(context.Context, *openshellv1.UndoDraftChunkRequest) (*openshellv1.UndoDraftChunkResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) ClearDraftChunks(context.Context, *openshellv1.ClearDraftChunksRequest) (*openshellv1.ClearDraftChunksResponse, error) {
	return nil, unimplDrafts
}

func (s *Server) GetDraftHistory(context.Context, *openshellv1.GetDraftHistoryRequest) (*openshellv1.GetDraftHistoryResponse, error) {
	return nil, unimplDrafts
}

var unimplWorkspaces = status.Error(codes.Unimplemented, "workspace management is not implemented by this gateway; every caller it authenticates may use any workspace name, and a workspace exists while it holds sandboxes")

func (s *Server) CreateWorkspace(context.Context, *openshellv1.CreateWorkspaceRequest) (*openshellv1.CreateWorkspaceResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) GetWorkspace(context.Context, *openshellv1.GetWorkspaceRequest) (*openshellv1.GetWorkspaceResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) ListWorkspaces(context.Context, *openshellv1.ListWorkspacesRequest) (*openshellv1.ListWorkspacesResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) DeleteWorkspace(context.Context, *openshellv1.DeleteWorkspaceRequest) (*openshellv1.DeleteWorkspaceResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) AddWorkspaceMember(context.Context, *openshellv1.AddWorkspaceMemberRequest) (*openshellv1.AddWorkspaceMemberResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) RemoveWorkspaceMember(context.Context, *openshellv1.RemoveWorkspaceMemberRequest) (*openshellv1.RemoveWorkspaceMemberResponse, error) {
	return nil, unimplWorkspaces
}

func (s *Server) ListWorkspaceMembers(context.Context, *openshellv1.ListWorkspaceMembersRequest) (*openshellv1.ListWorkspaceMembersResponse, error) {
	return nil, unimplWorkspaces
}
