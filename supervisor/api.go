package supervisor

import (
	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
)

func newAPI(cc grpc.ClientConnInterface) pb.OpenShellClient { return pb.NewOpenShellClient(cc) }
