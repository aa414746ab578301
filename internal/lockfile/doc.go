// Package lockfile keeps a directory to one process at a time: the audit
// log and the checkpoint store each hold an exclusive lock on a file in
// theirs for as long as they are open.
package lockfile
