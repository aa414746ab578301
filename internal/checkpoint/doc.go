// Package checkpoint keeps incremental, content-addressed snapshots of
// session workspaces, taken before each tool call that may write, so that
// a workspace can be rolled back, compared, or carried into a new session.
//
// # Store layout
//
// One Store per worker state directory, shared by every session:
//
//	LOCK                  flock held by the one process using the store
//	objects/ab/cdef…      objects, named by the hex SHA-256 of their bytes
//	sessions/<h>.jsonl    a session's checkpoint index (index.go); h is the
//	                      first 32 hex digits of SHA-256(session id)
//	tmp/                  files being written; emptied by Open
//	spare/                empty files made ahead of need, taken as tmp
//	                      files are (spare.go); emptied by Open
//
// Objects are file contents, stored raw, and directory manifests
// (manifest.go): a manifest is the sorted list of a directory's entries,
// each with its name, type, mode bits, size, and the content's hash, the
// subdirectory's manifest hash or the symlink's target, in a binary
// encoding that carries any byte string. A checkpoint's id is the hash of
// its root manifest. Equal trees therefore have equal ids in any session,
// identical files are stored once across checkpoints and sessions, and a
// checkpoint adds only the changed files plus one manifest per directory
// on the path to each change. Contents are stored raw: compress/gzip at
// its fastest level shrinks source code about 2.8x but runs at about a
// twentieth of the speed of SHA-256 (BenchmarkStoreContents, on this
// package's sources: 68 MB/s against 1.5-1.7 GB/s), which would dominate
// first checkpoints and every restore, while the
// checkpoints that follow add tens of kilobytes; raw objects also restore
// as a plain copy and can be checked with sha256sum.
//
// An object is written to tmp/ and, when the checkpoint commits, fsynced,
// renamed into objects/ and its directory fsynced; the checkpoint's index
// line is appended and fsynced only after that. A crash at any point
// leaves every recorded checkpoint complete; unreferenced objects it may
// leave are deleted by the next Prune.
//
// # Incremental cost
//
// Each session keeps in memory the stat cache of its latest checkpoint:
// every entry's size, mtime, ctime, inode and mode, and each directory's
// own stat, listing and totals. With change tracking (watch_linux.go, on
// unless Options.FullScan), the session's directories are watched through
// inotify, and a checkpoint visits only the directories that had an event
// since the previous checkpoint began, with their ancestors; the others
// are taken from the cache as they are, so the cost follows what changed,
// not the size of the workspace. Without tracking, or when its events do
// not cover everything (first checkpoint, queue overflow, a watch that
// could not be added, hard-linked files), a checkpoint stats every entry
// (one fstatat(2) each, on up to Options.Parallelism goroutines).
//
// Either way, it reads only files whose stat changed, and lists only
// directories whose stat changed. A file whose ctime was too close to the
// previous checkpoint's start for its stat to vouch for its content
// ("racily clean", as git calls it) is read again. Unchanged directories
// reuse their manifest without encoding it. The caches take about 180
// bytes per entry (BenchmarkStatCacheBytes), and Options.CacheEntries
// bounds them together; a session without one (after a restart, or
// evicted) reads every file once.
//
// # Trust model
//
// The workspace is written by the sandbox and is hostile: any name, any
// file type, symlinks pointing anywhere, entries replaced while they are
// being read. Snapshot and Restore touch it only through directory file
// descriptors opened from the root down with O_NOFOLLOW|O_DIRECTORY and
// *at system calls on single names, so no symlink is ever followed, at any
// depth, however entries are swapped meanwhile: symlinks are recorded and
// restored as links. Regular files are opened through O_PATH and checked
// before a real open, so a device node swapped in is never opened.
//
// A snapshot leaves out, and lists in Checkpoint.Skipped with a reason:
// FIFOs, sockets and device nodes (they have no content to keep, and
// opening them could block or act on the host); entries it may not read;
// directories on another file system or nested deeper than 256; sparse
// files over 64 MiB whose blocks hold less than an eighth of their size
// (their holes would be stored byte for byte); and files that changed
// while read twice, since a file is kept only if its stat after reading
// equals its stat before, so no content is ever torn. A restore removes
// whatever was skipped, a tree of any depth included. Restore never sets setuid or
// setgid bits, which the manifest records (RestoreReport.DroppedSetID),
// and, running as root, gives what it creates the root directory's owner.
// Hard links are recorded as separate files (stored once, restored once
// per link). Ownership, timestamps,
// extended attributes and ACLs are not recorded.
//
// The stat comparison is what git relies on too, and shares its blind
// spot: a write through a shared writable mmap to a page that is already
// dirty does not update the file's times, so a checkpoint taken before
// the page is written back can miss it. Change tracking widens it: such a
// write raises no event at all until the mapping is released.
//
// # Remote stores
//
// Push and Pull copy checkpoints to and from a Remote, such as an
// S3-compatible bucket, so that a workspace outlives the host that saved
// it. A remote holds
//
//	objects/<hex>   file contents, as in objects/ here
//	trees/<hex>     directory manifests
//	refs/<h>        named references (ref.go); h is the hex SHA-256 of
//	                the name, which may be any bytes
//
// Push sends a manifest only after everything it names, so a manifest on
// the remote vouches for its whole subtree, and Push skips such a
// directory without looking inside it: pushing again after a few changes
// costs a request per changed file and per directory on the path to one.
// Manifests live apart from file contents because the sandbox controls
// the contents: a file whose bytes equal some directory's manifest would
// otherwise stand, under the same name, for a subtree that was never
// sent. Objects are immutable and named by their content, so workers
// pushing to the same remote at once never conflict, at worst sending an
// object twice; a reference is replaced whole, and the last writer wins.
// PushRef writes a reference only after its checkpoint is whole on the
// remote. Nothing is ever deleted from a remote.
//
// The remote is trusted to keep objects, not to keep them intact. Pull
// checks every object it fetches against its name, and every file against
// the length its manifest records, before the object enters the store
// (streamed through tmp/, then committed as a checkpoint's objects are);
// it decodes manifests with the same checks as local ones, and refuses
// trees nested deeper than a checkpoint can be or that expand, through
// subdirectories named many times, beyond what a checkpoint can hold. A
// pulled tree is recorded in a session's index like a checkpoint, so that
// Prune keeps it. Push, in turn, checks each object it reads, so a store
// damaged on disk never spreads the damage to a remote that other workers
// share.
//
// # Concurrency
//
// One process per store (the flock). Within it, Checkpoint, Restore, Push
// and Pull hold Store.gcMu shared and Prune holds it exclusively, so garbage
// collection never races with a checkpoint that found an object already
// present, nor with a restore reading one; checkpoints of one session run
// one at a time, those of different sessions in parallel.
package checkpoint
