package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"
)

// Index format: one file per session, sessions/<first 32 hex digits of
// SHA-256(session)>.jsonl, of JSON lines. The first line is a header,
//
//	{"v":1,"session":"sesn_…","next_seq":7}
//
// (next_seq only after Prune removed the newest records), and every other
// line one checkpoint, in sequence order:
//
//	{"seq":3,"time_unix_nano":…,"tool_use_id":"toolu_…","id":"<64 hex>",
//	 "files":…,"dirs":…,"symlinks":…,"bytes":…,"new_objects":…,"new_bytes":…,
//	 "skipped":[{"path":"a/fifo","reason":"named pipe"}],"skipped_count":1}
//
// Strings that are not valid UTF-8 (a session or tool-use id, a skipped
// path) are written as {"base64":"…"} so they round-trip. A checkpoint is
// appended with one write(2) of one line and fsynced, after its objects
// are durable, so a crash leaves at most an incomplete last line, which
// loading ignores and the next append cuts off. Prune rewrites the file
// (temporary file, fsync, rename).
const indexVersion = 1

// maxRecordedSkips bounds the skipped entries kept in the index per
// checkpoint (a workspace can hold any number of FIFOs); skipped_count has
// the total.
const maxRecordedSkips = 100

// text is a string that survives JSON even when it is not UTF-8.
type text string

func (t text) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(t)) {
		return json.Marshal(string(t))
	}
	return json.Marshal(struct {
		Base64 string `json:"base64"`
	}{base64.StdEncoding.EncodeToString([]byte(t))})
}

func (t *text) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '{' {
		var v struct {
			Base64 string `json:"base64"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		raw, err := base64.StdEncoding.DecodeString(v.Base64)
		if err != nil {
			return err
		}
		*t = text(raw)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*t = text(s)
	return nil
}

type skipRecord struct {
	Path   text   `json:"path"`
	Reason string `json:"reason"`
}

// indexLine is a header or a checkpoint record.
type indexLine struct {
	// Header.
	V       int   `json:"v,omitempty"`
	Session *text `json:"session,omitempty"`
	NextSeq int64 `json:"next_seq,omitempty"`

	// Record.
	Seq          int64        `json:"seq,omitempty"`
	Time         int64        `json:"time_unix_nano,omitempty"`
	ToolUseID    *text        `json:"tool_use_id,omitempty"`
	ID           string       `json:"id,omitempty"`
	Files        int          `json:"files,omitempty"`
	Dirs         int          `json:"dirs,omitempty"`
	Symlinks     int          `json:"symlinks,omitempty"`
	Bytes        int64        `json:"bytes,omitempty"`
	NewObjects   int          `json:"new_objects,omitempty"`
	NewBytes     int64        `json:"new_bytes,omitempty"`
	Skipped      []skipRecord `json:"skipped,omitempty"`
	SkippedCount int          `json:"skipped_count,omitempty"`
}

// sessionIndex is a session's index file as loaded.
type sessionIndex struct {
	path    string
	session string
	records []Checkpoint // in sequence order; Hashed is always 0
	nextSeq int64
	size    int64 // bytes of complete lines in the file; 0 when it does not exist
}

func (s *Store) indexPath(session string) string {
	sum := sha256.Sum256([]byte(session))
	return filepath.Join(s.dir, sessionsDir, hex.EncodeToString(sum[:16])+".jsonl")
}

func loadIndex(path, session string) (*sessionIndex, error) {
	ix := &sessionIndex{path: path, session: session, nextSeq: 1}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return ix, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: read index: %w", err)
	}
	ix.records, ix.size, ix.nextSeq, err = parseIndex(data, &session)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: index %s: %w", path, err)
	}
	return ix, nil
}

// parseIndex parses an index file. If *session is empty it is set to the
// session the header names; otherwise the header must name it.
func parseIndex(data []byte, session *string) (recs []Checkpoint, size int64, nextSeq int64, err error) {
	nextSeq = 1
	sawHeader := false
	for off := 0; off < len(data); {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break // an append cut short by a crash
		}
		line := data[off : off+nl]
		off += nl + 1
		var l indexLine
		if json.Unmarshal(line, &l) != nil {
			// Only a crash of the machine leaves this (NULs where an
			// append's data did not reach the disk), and only after the
			// last complete record, where the next append overwrites it.
			continue
		}
		size = int64(off)
		switch {
		case l.V != 0:
			if l.V != indexVersion {
				return nil, 0, 0, fmt.Errorf("unknown index version %d", l.V)
			}
			if l.Session == nil {
				return nil, 0, 0, errors.New("index header without a session")
			}
			if *session == "" {
				*session = string(*l.Session)
			} else if string(*l.Session) != *session {
				return nil, 0, 0, fmt.Errorf("index belongs to session %q", string(*l.Session))
			}
			sawHeader = true
			nextSeq = max(nextSeq, l.NextSeq)
		case l.Seq > 0 && sawHeader:
			id, err := parseHash(l.ID)
			if err != nil {
				return nil, 0, 0, fmt.Errorf("record %d: %w", l.Seq, err)
			}
			c := Checkpoint{
				ID:         id.String(),
				Session:    *session,
				Seq:        l.Seq,
				Time:       time.Unix(0, l.Time),
				Files:      l.Files,
				Dirs:       l.Dirs,
				Symlinks:   l.Symlinks,
				Bytes:      l.Bytes,
				NewObjects: l.NewObjects,
				NewBytes:   l.NewBytes,
				NumSkipped: l.SkippedCount,
			}
			if l.ToolUseID != nil {
				c.ToolUseID = string(*l.ToolUseID)
			}
			for _, sk := range l.Skipped {
				c.Skipped = append(c.Skipped, Skip{Path: string(sk.Path), Reason: sk.Reason})
			}
			recs = append(recs, c)
			nextSeq = max(nextSeq, l.Seq+1)
		default:
			return nil, 0, 0, errors.New("index record before its header")
		}
	}
	return recs, size, nextSeq, nil
}

func headerLine(session string, nextSeq int64) []byte {
	t := text(session)
	b, _ := json.Marshal(indexLine{V: indexVersion, Session: &t, NextSeq: nextSeq})
	return append(b, '\n')
}

func recordLine(c *Checkpoint) []byte {
	tu := text(c.ToolUseID)
	l := indexLine{
		Seq: c.Seq, Time: c.Time.UnixNano(), ToolUseID: &tu, ID: c.ID,
		Files: c.Files, Dirs: c.Dirs, Symlinks: c.Symlinks, Bytes: c.Bytes,
		NewObjects: c.NewObjects, NewBytes: c.NewBytes, SkippedCount: c.NumSkipped,
	}
	for _, sk := range c.Skipped[:min(len(c.Skipped), maxRecordedSkips)] {
		l.Skipped = append(l.Skipped, skipRecord{Path: text(sk.Path), Reason: sk.Reason})
	}
	b, _ := json.Marshal(l)
	return append(b, '\n')
}

// writeRecord appends c's line to the file, creating it with its header
// if needed, and returns the file's new size. The caller updates ix.
func (ix *sessionIndex) writeRecord(s *Store, c *Checkpoint) (int64, error) {
	line := recordLine(c)
	if ix.size == 0 {
		data := append(headerLine(ix.session, 0), line...)
		if err := s.writeFileAtomic(ix.path, data); err != nil {
			return 0, err
		}
		return int64(len(data)), nil
	}
	f, err := os.OpenFile(ix.path, os.O_WRONLY, 0)
	if err != nil {
		return 0, fmt.Errorf("checkpoint: append index: %w", err)
	}
	// Cut off what a crash left of an earlier append.
	err = f.Truncate(ix.size)
	if err == nil {
		_, err = f.WriteAt(line, ix.size)
	}
	if err == nil && !s.opts.NoSync {
		err = fsync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoint: append index: %w", err)
	}
	return ix.size + int64(len(line)), nil
}

// rewrite replaces the file with the header and keep, and returns its new
// size. The caller updates ix.
func (ix *sessionIndex) rewrite(s *Store, keep []Checkpoint) (int64, error) {
	data := headerLine(ix.session, ix.nextSeq)
	for i := range keep {
		data = append(data, recordLine(&keep[i])...)
	}
	if err := s.writeFileAtomic(ix.path, data); err != nil {
		return 0, err
	}
	return int64(len(data)), nil
}
