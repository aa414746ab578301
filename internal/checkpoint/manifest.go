package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"strings"
)

// hash is the SHA-256 of an object's bytes, which is also its name.
type hash [sha256.Size]byte

func (h hash) String() string { return hex.EncodeToString(h[:]) }

func parseHash(s string) (hash, error) {
	var h hash
	if len(s) != 2*len(h) {
		return h, fmt.Errorf("%w: checkpoint id %q is not 64 hex digits", ErrNotFound, s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil || strings.ToLower(s) != s {
		return h, fmt.Errorf("%w: checkpoint id %q is not 64 lowercase hex digits", ErrNotFound, s)
	}
	return h, nil
}

// kind is an entry's type as stored in a manifest.
type kind byte

const (
	kindFile    kind = 'f'
	kindDir     kind = 'd'
	kindSymlink kind = 'l'
)

// Manifest format. One manifest per directory; a checkpoint's id is the hash
// of the root directory's manifest. A manifest is
//
//	"PCKM1\n" entry*
//
// with entries in strictly increasing bytewise order of name, each
//
//	kind (1 byte: 'f', 'd' or 'l')
//	mode (uvarint: permission bits plus setuid 04000, setgid 02000, sticky 01000)
//	len(name) (uvarint) name
//	'f': size (uvarint) and the SHA-256 of the content (32 bytes)
//	'd': the SHA-256 of the subdirectory's manifest (32 bytes)
//	'l': len(target) (uvarint) target, the link's text as readlink returns it
//
// Names and targets are raw bytes: newlines, invalid UTF-8, anything but
// "/" and NUL in a name (the kernel allows nothing else), so every tree
// round-trips. The encoding of a list of entries is unique, so equal trees
// have equal ids in every store.
const manifestMagic = "PCKM1\n"

const (
	maxName   = 255  // NAME_MAX
	maxTarget = 4095 // PATH_MAX - 1
	modeMask  = 0o7777
	setIDBits = 0o6000
)

// entry is one name in a directory's manifest.
type entry struct {
	name   string
	kind   kind
	mode   uint32 // modeMask bits only
	size   int64  // files: content length; symlinks: len(target); dirs: 0
	sum    hash   // files: content; dirs: the subdirectory's manifest
	target string // symlinks
}

func (e *entry) sameRecord(o *entry) bool {
	return e.name == o.name && e.kind == o.kind && e.mode == o.mode && e.size == o.size &&
		e.sum == o.sum && e.target == o.target
}

// encodeManifest appends the manifest of n entries, at(0) … at(n-1) in
// increasing order of name, to buf.
func encodeManifest(buf []byte, n int, at func(int) *entry) []byte {
	buf = append(buf, manifestMagic...)
	for i := range n {
		e := at(i)
		buf = append(buf, byte(e.kind))
		buf = binary.AppendUvarint(buf, uint64(e.mode))
		buf = binary.AppendUvarint(buf, uint64(len(e.name)))
		buf = append(buf, e.name...)
		switch e.kind {
		case kindFile:
			buf = binary.AppendUvarint(buf, uint64(e.size))
			buf = append(buf, e.sum[:]...)
		case kindDir:
			buf = append(buf, e.sum[:]...)
		case kindSymlink:
			buf = binary.AppendUvarint(buf, uint64(len(e.target)))
			buf = append(buf, e.target...)
		}
	}
	return buf
}

// decodeManifest parses and validates a manifest. It never trusts the
// bytes: a name that could leave its directory, an unsorted or duplicate
// name, or a truncated entry is ErrCorrupt.
func decodeManifest(b []byte) ([]entry, error) {
	if !bytes.HasPrefix(b, []byte(manifestMagic)) {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	b = b[len(manifestMagic):]
	var ents []entry
	uvarint := func(limit uint64) (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 || v > limit {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	bad := func(what string) ([]entry, error) {
		return nil, fmt.Errorf("%w: manifest entry %d: %s", ErrCorrupt, len(ents), what)
	}
	for len(b) > 0 {
		var e entry
		e.kind = kind(b[0])
		b = b[1:]
		mode, ok := uvarint(modeMask)
		if !ok {
			return bad("bad mode")
		}
		e.mode = uint32(mode)
		n, ok := uvarint(maxName)
		if !ok || n == 0 || uint64(len(b)) < n {
			return bad("bad name length")
		}
		e.name = string(b[:n])
		b = b[n:]
		if !validName(e.name) {
			return bad(fmt.Sprintf("invalid name %q", e.name))
		}
		if len(ents) > 0 && ents[len(ents)-1].name >= e.name {
			return bad(fmt.Sprintf("name %q out of order", e.name))
		}
		switch e.kind {
		case kindFile:
			size, ok := uvarint(1<<63 - 1)
			if !ok || len(b) < len(e.sum) {
				return bad("truncated file entry")
			}
			e.size = int64(size)
			b = b[copy(e.sum[:], b):]
		case kindDir:
			if len(b) < len(e.sum) {
				return bad("truncated directory entry")
			}
			b = b[copy(e.sum[:], b):]
		case kindSymlink:
			n, ok := uvarint(maxTarget)
			if !ok || n == 0 || uint64(len(b)) < n {
				return bad("bad link target length")
			}
			e.target = string(b[:n])
			e.size = int64(n)
			b = b[n:]
			if strings.IndexByte(e.target, 0) >= 0 {
				return bad("NUL in link target")
			}
		default:
			return bad(fmt.Sprintf("unknown kind %q", byte(e.kind)))
		}
		ents = append(ents, e)
	}
	return ents, nil
}

// validName reports whether name is one path element the kernel could
// have returned from a directory listing.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= maxName &&
		strings.IndexByte(name, '/') < 0 && strings.IndexByte(name, 0) < 0
}

// EntryType is the type of an Entry.
type EntryType string

const (
	File    EntryType = "file"
	Dir     EntryType = "dir"
	Symlink EntryType = "symlink"
)

// Entry is one path in a checkpoint.
type Entry struct {
	// Path is relative to the workspace root, "/"-separated; its elements
	// are raw bytes and need not be UTF-8.
	Path string
	Type EntryType
	// Mode holds the permission bits and, as recorded, fs.ModeSetuid,
	// fs.ModeSetgid and fs.ModeSticky; Restore never sets the first two.
	Mode fs.FileMode
	// Size is a file's length in bytes or a link target's.
	Size int64
	// Hash is a file's SHA-256 in hex; empty for the other types.
	Hash string
	// Target is a symlink's target text, recorded as is and never followed.
	Target string
}

func publicEntry(dir string, e *entry) Entry {
	out := Entry{Path: joinPath(dir, e.name), Mode: fileMode(e.mode), Size: e.size}
	switch e.kind {
	case kindFile:
		out.Type, out.Hash = File, e.sum.String()
	case kindDir:
		out.Type = Dir
	case kindSymlink:
		out.Type, out.Target = Symlink, e.target
	}
	return out
}

// fileMode converts stat(2) permission and set-id bits to an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
