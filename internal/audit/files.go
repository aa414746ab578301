package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	filePrefix = "audit-"
	fileSuffix = ".jsonl"
	headName   = "head"
	lockName   = "lock"
	// hashSuffixLen is the length of `,"hash":"<64 hex>"}`, the end of
	// every line (before its newline).
	hashSuffixLen = len(`,"hash":"`) + 64 + len(`"}`)
)

// fileName is the name of the n-th file of a log, counting from 1.
func fileName(n int) string { return fmt.Sprintf("%s%06d%s", filePrefix, n, fileSuffix) }

// logFile is one audit-NNNNNN.jsonl file in a directory.
type logFile struct {
	num  int
	name string
}

// listFiles returns the log's files in order, and the names of files that
// look like log files but are not named as the writer names them.
func listFiles(dir string) (files []logFile, odd []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, filePrefix) || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, filePrefix), fileSuffix))
		if err != nil || n < 1 || fileName(n) != name || !e.Type().IsRegular() {
			odd = append(odd, name)
			continue
		}
		files = append(files, logFile{num: n, name: name})
	}
	slices.SortFunc(files, func(a, b logFile) int { return a.num - b.num })
	return files, odd, nil
}

// Head is the anchor the writer keeps in <dir>/head: the last record known
// to be on stable storage.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	File string `json:"file"`
}

// readHead reads <dir>/head; it returns nil, nil when there is none.
func readHead(dir string) (*Head, error) {
	b, err := os.ReadFile(filepath.Join(dir, headName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("head anchor does not parse: %w", err)
	}
	if h.Seq == 0 || !isHex64(h.Hash) {
		return nil, errors.New("head anchor does not parse: no seq or hash")
	}
	return &h, nil
}

// writeHead atomically replaces <dir>/head: a crash leaves the old anchor or
// the new one, both behind what is on disk.
func writeHead(dir string, h Head) error {
	b, _ := json.Marshal(h)
	tmp := filepath.Join(dir, headName+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, headName))
}

// tail finds the last complete line of a file of the given size. It returns
// the line (without its newline) and its offset, and end: where the bytes
// after the last newline begin (size when the file ends with a newline). A
// file without a newline has no complete line: line is nil and end 0.
func tail(f io.ReaderAt, size int64) (line []byte, off, end int64, err error) {
	const chunk = 64 << 10
	var buf []byte // the file's bytes from start to size
	start := size
	end = -1
	for {
		if end < 0 {
			if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
				end = start + int64(i) + 1
			}
		}
		if end >= 0 {
			body := buf[:end-1-start]
			if i := bytes.LastIndexByte(body, '\n'); i >= 0 {
				return body[i+1:], start + int64(i) + 1, end, nil
			}
			if start == 0 {
				return body, 0, end, nil
			}
		} else if start == 0 {
			return nil, 0, 0, nil
		}
		n := min(chunk, start)
		start -= n
		more := make([]byte, n, int(n)+len(buf))
		if _, err := f.ReadAt(more, start); err != nil {
			return nil, 0, 0, err
		}
		buf = append(more, buf...)
	}
}

// A lineError says why a line is not a valid record. Syntax errors (the
// line is not JSON at all) are what a crash during a write leaves behind.
type lineError struct {
	syntax bool
	msg    string
}

func (e *lineError) Error() string { return e.msg }

// parseLine parses and checks one line (without its newline): it is JSON,
// has the fields of a record, ends with its hash member, and the hash is the
// SHA-256 of the canonical bytes. It does not check seq or prev against the
// line before.
func parseLine(line []byte) (Entry, error) {
	var e Entry
	if !json.Valid(line) {
		return e, &lineError{syntax: true, msg: "line does not parse as JSON"}
	}
	if err := json.Unmarshal(line, &e); err != nil {
		return e, &lineError{msg: "not a record: " + err.Error()}
	}
	switch {
	case !isHex64(e.Hash):
		return e, &lineError{msg: "not a record: hash is missing or not 64 lowercase hex digits"}
	case !bytes.HasSuffix(line, []byte(`,"hash":"`+e.Hash+`"}`)):
		return e, &lineError{msg: "not a record: hash is not the last member"}
	case e.Seq == 0:
		return e, &lineError{msg: "not a record: seq is missing or 0"}
	case !isHex64(e.Prev):
		return e, &lineError{msg: "not a record: prev is missing or not 64 lowercase hex digits"}
	case e.Kind == "":
		return e, &lineError{msg: "not a record: kind is missing"}
	case e.Time.IsZero():
		return e, &lineError{msg: "not a record: time is missing"}
	}
	if canonicalHash(line) != e.Hash {
		return e, &lineError{msg: "hash mismatch: record edited"}
	}
	return e, nil
}

// canonicalHash is the hex SHA-256 of a line's canonical bytes: the line
// with its final `,"hash":"…"` member removed, i.e. its last 75 bytes
// replaced by "}".
func canonicalHash(line []byte) string {
	h := sha256.New()
	h.Write(line[:len(line)-hashSuffixLen])
	h.Write([]byte("}"))
	return hex.EncodeToString(h.Sum(nil))
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// syncDir makes a directory's entries (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
