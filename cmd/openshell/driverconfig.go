package main

import (
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/openshellv1"
)

// setDriverConfig sets key in driver's object of the spec's driver_config (the gateway
// hands each driver only its own), keeping what else the object holds.
func setDriverConfig(spec *openshellv1.SandboxSpec, driver, key string, v *structpb.Value) {
	if spec.Template == nil {
		spec.Template = &openshellv1.SandboxTemplate{}
	}
	if spec.Template.DriverConfig == nil {
		spec.Template.DriverConfig = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	obj := spec.Template.DriverConfig.Fields[driver].GetStructValue()
	if obj == nil {
		obj = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		spec.Template.DriverConfig.Fields[driver] = structpb.NewStructValue(obj)
	}
	obj.Fields[key] = v
}
