// Package api holds the openshell protobuf definitions (api/proto/*.proto,
// flat file names and proto packages wire-compatible with upstream
// OpenShell) and, in sub-packages, the Go code generated from them:
//
//	optionsv1   openshell.options.v1   options.proto        authorization (50000) / secret (50001) options
//	datamodelv1 openshell.datamodel.v1 datamodel.proto      ObjectMeta, Provider, Workspace
//	sandboxv1   openshell.sandbox.v1   sandbox.proto        policy tree, GetSandboxConfig/GetGatewayConfig types
//	openshellv1 openshell.v1           openshell.proto      service OpenShell, all 67 upstream RPCs (gateway API + supervisor callbacks)
//	computev1   openshell.compute.v1   compute_driver.proto service ComputeDriver (driver contract)
//	snapshotv1  openshell.snapshot.v1  snapshot.proto       project services Snapshots (gateway) and DriverSnapshots
//	poolv1      openshell.pool.v1      pool.proto           project services Pools (gateway) and DriverPools (warm pools)
//	peerv1      openshell.peer.v1      peer.proto           project service between gateway replicas
//
// Regenerate with scripts/gen-proto.sh; the generated code is committed and
// TestGeneratedCodeIsFresh checks it matches the .proto files.
// TestDescriptorsMatchWireTables compares every service, method, message, field and
// enum with the tables in testdata/wire-protocol.md (generated from upstream's
// descriptors); the project's own fields in upstream messages are numbered from 1000.
package api
