// Package images turns OCI images into read-only ext4 disks for VM sandboxes.
//
// An image reference (see ParseReference) names a registry image, an image in
// the local Docker/Podman daemon, an OCI image layout directory, or an OCI /
// docker-archive tarball. Cache.Ensure resolves the reference to a content
// digest, and — only when no disk for that digest exists yet — fetches the
// image for linux/amd64, unpacks its layers into a scratch rootfs (whiteouts,
// ownership, modes, xattrs; nothing may land outside the rootfs), and builds
// rootfs.ext4 with mkfs.ext4 -d. Finished entries are immutable and shared by
// every sandbox that uses the image; Acquire holds a shared lock on an entry
// while a VM uses it so Prune leaves it alone.
package images
