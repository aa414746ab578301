package sandbox

import "os"

// MkdirMode creates dir (and parents) and sets its mode exactly, whatever
// the umask or an earlier version made it: the directories a sandbox's uid
// must search (the state directory, workspaces, sandboxd's) stay
// searchable under a host's 027.
func MkdirMode(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	return os.Chmod(dir, mode)
}
