package bootstrap

// Reidentify is what a VM guest restored as a copy of a snapshot needs besides its
// new Config: the guest's clock stood still since the snapshot and its kernel's
// random state is the snapshotted one, shared with every other copy.
type Reidentify struct {
	// HostTimeUnixNano is the host's clock when the document was sent.
	HostTimeUnixNano int64 `json:"host_time_unix_nano"`
	// Entropy is fresh host randomness for the guest kernel's pool.
	Entropy []byte `json:"entropy"`
}

// IdentityDoc is the document a copy's runner serves on the bootstrap port: the
// copy's Config with a "reidentify" member.
type IdentityDoc struct {
	Config
	Reidentify Reidentify `json:"reidentify"`
}
