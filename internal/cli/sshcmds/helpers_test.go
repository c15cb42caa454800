package sshcmds

import (
	"github.com/openshell/openshell/api/datamodelv1"
)

func metaID(id, name string) *datamodelv1.ObjectMeta {
	return &datamodelv1.ObjectMeta{Id: id, Name: name}
}
