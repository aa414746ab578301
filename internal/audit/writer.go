package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/perimeterhq/perimeter/internal/lockfile"
)

// Errors Append and Open return; test with errors.Is.
var (
	// ErrSecret: the record contains a value registered with Forbid. Nothing
	// was written.
	ErrSecret = errors.New("audit: record contains a forbidden secret value; not written")
	// ErrClosed: the writer was closed.
	ErrClosed = errors.New("audit: writer closed")
	// ErrLocked: another writer has the directory open.
	ErrLocked = errors.New("audit: the log is open in another writer")
	// ErrTampered: the log does not verify (see Verify and Problem).
	ErrTampered = errors.New("audit: log does not verify")
)

// Defaults for zero Options.
const (
	DefaultMaxFileBytes   = 64 << 20
	DefaultMaxRecordBytes = 1 << 20
)

// Options configure a Writer. The zero value is durable and useful: every
// record is fsynced before Append returns, files rotate at 64 MiB, no
// payload is kept.
type Options struct {
	// SyncInterval is how often appended records are fsynced. Zero fsyncs
	// each record before Append returns. A positive interval fsyncs in the
	// background (and on Sync and Close): much cheaper, but records appended
	// in the last interval are lost if the machine (not just the process)
	// crashes.
	SyncInterval time.Duration
	// MaxFileBytes starts a new file when the current one would grow past
	// it; zero means DefaultMaxFileBytes, negative never rotates.
	MaxFileBytes int64
	// MaxRecordBytes refuses larger records; zero means
	// DefaultMaxRecordBytes.
	MaxRecordBytes int
	// KeepPayload names the Record.Payload fields that are written; any
	// other payload field is dropped. Empty keeps none.
	KeepPayload []string
	// Now stamps records; nil means time.Now.
	Now func() time.Time
}

// Writer appends records to the log in a directory. It is safe for
// concurrent use.
type Writer struct {
	dir  string
	opts Options
	keep map[string]bool
	lock io.Closer

	mu      sync.Mutex // guards everything below, and the file's contents
	f       *os.File
	fileNum int
	size    int64    // bytes in f
	seq     uint64   // of the last record written, 0 for none
	last    string   // hash of the last record written
	dirty   bool     // records written since the last fsync
	err     error    // sticky: the writer can no longer append
	closed  bool     //
	secrets [][]byte // forms of forbidden values as they appear in JSON

	stopOnce sync.Once
	stop     chan struct{} // closed by Close to end the sync loop
	done     chan struct{} // closed when the sync loop returned
}

var kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Open opens the log in dir for appending, creating dir and the first file
// if needed (dir is made 0700, files 0600), and continues its chain. The directory is
// locked against other writers until Close.
//
// Open checks the last record of the last file. An incomplete last line (no
// newline) or a last line that is not JSON, which is what a crash during a
// write leaves, is cut off and a log_repaired record appended, so the log
// verifies again. A last record that parses but does not hash to its hash,
// or a head anchor ahead of the log, means the log was altered: Open
// refuses with ErrTampered rather than continue the chain from it.
func Open(dir string, opts Options) (w *Writer, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	lock, err := lockfile.Take(filepath.Join(dir, lockName), ErrLocked)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	if opts.MaxFileBytes == 0 {
		opts.MaxFileBytes = DefaultMaxFileBytes
	}
	if opts.MaxRecordBytes == 0 {
		opts.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	w = &Writer{dir: dir, opts: opts, lock: lock, keep: map[string]bool{}, last: Genesis}
	for _, k := range opts.KeepPayload {
		w.keep[k] = true
	}
	repair, err := w.resume()
	if err != nil {
		if w.f != nil {
			w.f.Close()
		}
		return nil, err
	}
	if repair != nil {
		err = w.appendLocked(KindLogRepaired, "", "", "", mustMarshal(repair), nil)
		if err == nil {
			err = w.syncLocked()
		}
		if err != nil {
			w.f.Close()
			return nil, fmt.Errorf("audit: record the repair of %s: %w", repair.File, err)
		}
	}
	if opts.SyncInterval > 0 {
		w.stop, w.done = make(chan struct{}), make(chan struct{})
		go w.syncLoop(opts.SyncInterval)
	}
	return w, nil
}

// resume finds where the chain ends and opens the file to continue it. It
// returns what it cut off, if anything.
func (w *Writer) resume() (*LogRepaired, error) {
	files, _, err := listFiles(w.dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if len(files) == 0 {
		return nil, w.create(1)
	}
	lf := files[len(files)-1]
	f, err := os.OpenFile(filepath.Join(w.dir, lf.name), os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	w.f, w.fileNum = f, lf.num
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	size := st.Size()
	line, off, end, err := tail(f, size)
	if err != nil {
		return nil, fmt.Errorf("audit: read %s: %w", lf.name, err)
	}
	cut, reason := end, "incomplete last line (no newline): a crash during a write"
	var e Entry
	if line != nil {
		e, err = parseLine(line)
		var le *lineError
		if errors.As(err, &le) && le.syntax {
			// A complete line that is not JSON: a crash left garbage (a
			// file extended but not written). Only the last line may be so;
			// the one before it must be a record.
			cut, reason = off, "last line is not JSON: a crash during a write"
			line, _, _, err = tail(f, off)
			if err == nil && line != nil {
				e, err = parseLine(line)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s, last record: %v (run perimeter audit verify --dir %s; to keep writing, move the directory aside)", ErrTampered, lf.name, err, w.dir)
		}
	}
	if line != nil {
		w.seq, w.last = e.Seq, e.Hash
	} else if len(files) > 1 {
		// The last file is empty, or holds only a torn first line (a crash
		// right after a rotation): the chain ends in the file before it.
		prev := files[len(files)-2]
		e, err := lastEntry(filepath.Join(w.dir, prev.name))
		if err != nil {
			return nil, fmt.Errorf("%w: %s, last record: %v (run perimeter audit verify --dir %s)", ErrTampered, prev.name, err, w.dir)
		}
		w.seq, w.last = e.Seq, e.Hash
	}
	h, err := readHead(w.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (run perimeter audit verify --dir %s)", ErrTampered, err, w.dir)
	}
	switch {
	case h == nil:
	case h.Seq > w.seq:
		return nil, fmt.Errorf("%w: the head anchor says seq %d but the log ends at seq %d (run perimeter audit verify --dir %s; to keep writing, move the directory aside)", ErrTampered, h.Seq, w.seq, w.dir)
	case h.Seq == w.seq && h.Hash != w.last:
		return nil, fmt.Errorf("%w: the last record, seq %d, does not have the hash the head anchor holds (run perimeter audit verify --dir %s; to keep writing, move the directory aside)", ErrTampered, h.Seq, w.dir)
	}

	var repair *LogRepaired
	if cut < size {
		dropped := make([]byte, size-cut)
		if _, err := f.ReadAt(dropped, cut); err != nil {
			return nil, fmt.Errorf("audit: read %s: %w", lf.name, err)
		}
		sum := sha256.Sum256(dropped)
		repair = &LogRepaired{File: lf.name, Offset: cut, DroppedBytes: size - cut, DroppedSHA256: hex.EncodeToString(sum[:]), Reason: reason}
		if err := f.Truncate(cut); err != nil {
			return nil, fmt.Errorf("audit: repair %s: %w", lf.name, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("audit: repair %s: %w", lf.name, err)
		}
	}
	w.size = cut
	return repair, nil
}

// lastEntry is the last record of a file, which must end in a complete one.
func lastEntry(path string) (Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return Entry{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Entry{}, err
	}
	line, _, end, err := tail(f, st.Size())
	switch {
	case err != nil:
		return Entry{}, err
	case line == nil || end != st.Size():
		return Entry{}, errors.New("file does not end with a complete record")
	}
	return parseLine(line)
}

// create starts file n; the caller holds mu (or has not shared w yet).
func (w *Writer) create(n int) error {
	name := fileName(n)
	f, err := os.OpenFile(filepath.Join(w.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := syncDir(w.dir); err != nil {
		f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	w.f, w.fileNum, w.size = f, n, 0
	return nil
}

// Forbid registers a secret value: Append refuses any record whose
// serialised kind, ids, data or payload contain it, as it is or as it
// appears inside a JSON string (the rest of a line is digits and hex the
// writer makes). Values are held only in memory, and cleared by Close.
// Empty values are ignored; very short values refuse many records.
func (w *Writer) Forbid(value []byte) {
	if len(value) == 0 {
		return
	}
	forms := [][]byte{bytes.Clone(value)}
	for _, html := range []bool{false, true} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		_ = enc.Encode(string(value))
		s := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
		s = s[1 : len(s)-1]
		if !slices.ContainsFunc(forms, func(f []byte) bool { return bytes.Equal(f, s) }) {
			forms = append(forms, bytes.Clone(s))
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.secrets = append(w.secrets, forms...)
}

// Append writes one record, stamped with the next seq and the time, chained
// to the one before, with one write call. With the zero SyncInterval it is
// on stable storage when Append returns nil. It refuses (writing nothing) a
// record with no kind, with data that is not a JSON object, over
// MaxRecordBytes, or containing a forbidden value (ErrSecret).
//
// ctx is checked before writing; a record that must be written while
// shutting down should be appended with context.WithoutCancel.
func (w *Writer) Append(ctx context.Context, r Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	kind := r.Kind
	if d, ok := r.Data.(Data); ok {
		if kind != "" && kind != d.Kind() {
			return fmt.Errorf("audit: record kind %q but data of kind %q", kind, d.Kind())
		}
		kind = d.Kind()
	}
	if !kindPattern.MatchString(string(kind)) {
		return fmt.Errorf("audit: record kind %q: want lowercase letters, digits and _", kind)
	}
	if kind == KindLogRepaired {
		return fmt.Errorf("audit: kind %s is written only by Open", kind)
	}
	var data []byte
	if r.Data != nil {
		var err error
		if data, err = marshal(r.Data); err != nil {
			return fmt.Errorf("audit: %s data: %w", kind, err)
		}
		if string(data) == "null" {
			data = nil
		} else if data[0] != '{' {
			return fmt.Errorf("audit: %s data is not a JSON object", kind)
		}
	}
	var payload []byte
	if len(r.Payload) > 0 && len(w.keep) > 0 {
		kept := map[string]any{}
		for k, v := range r.Payload {
			if w.keep[k] {
				kept[k] = v
			}
		}
		if len(kept) > 0 {
			var err error
			if payload, err = marshal(kept); err != nil {
				return fmt.Errorf("audit: %s payload: %w", kind, err)
			}
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return ErrClosed
	case w.err != nil:
		return w.err
	}
	if err := w.appendLocked(kind, r.SessionID, r.WorkID, r.ToolUseID, data, payload); err != nil {
		return err
	}
	if w.opts.SyncInterval <= 0 {
		return w.syncLocked()
	}
	return nil
}

// appendLocked encodes, checks and writes one record.
func (w *Writer) appendLocked(kind Kind, sessionID, workID, toolUseID string, data, payload []byte) error {
	// The caller's part of the line: everything a secret could be in.
	var body bytes.Buffer
	body.WriteString(`,"kind":`)
	body.Write(mustMarshal(string(kind)))
	for _, id := range [...]struct{ name, v string }{{"session_id", sessionID}, {"work_id", workID}, {"tool_use_id", toolUseID}} {
		if id.v != "" {
			body.WriteString(`,"` + id.name + `":`)
			body.Write(mustMarshal(id.v))
		}
	}
	if data != nil {
		body.WriteString(`,"data":`)
		body.Write(data)
	}
	if payload != nil {
		body.WriteString(`,"payload":`)
		body.Write(payload)
	}
	for _, s := range w.secrets {
		if bytes.Contains(body.Bytes(), s) {
			return ErrSecret
		}
	}

	seq := w.seq + 1
	line := make([]byte, 0, body.Len()+256)
	line = append(line, `{"seq":`...)
	line = strconv.AppendUint(line, seq, 10)
	line = append(line, `,"time":"`...)
	line = w.opts.Now().UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, '"')
	line = append(line, body.Bytes()...)
	line = append(line, `,"prev":"`...)
	line = append(line, w.last...)
	line = append(line, `"}`...)
	sum := sha256.Sum256(line) // the canonical bytes
	hash := hex.EncodeToString(sum[:])
	line = append(line[:len(line)-1], `,"hash":"`...)
	line = append(line, hash...)
	line = append(line, "\"}\n"...)

	if len(line) > w.opts.MaxRecordBytes {
		return fmt.Errorf("audit: %s record is %d bytes, over the limit of %d", kind, len(line), w.opts.MaxRecordBytes)
	}
	if w.opts.MaxFileBytes > 0 && w.size > 0 && w.size+int64(len(line)) > w.opts.MaxFileBytes {
		if err := w.rotateLocked(); err != nil {
			return err
		}
	}
	if _, err := w.f.Write(line); err != nil {
		// Take back a partial line, so the chain stays whole.
		if terr := w.f.Truncate(w.size); terr != nil {
			w.err = fmt.Errorf("audit: write failed (%v) and could not be undone: %w", err, terr)
			return w.err
		}
		return fmt.Errorf("audit: write: %w", err)
	}
	w.size += int64(len(line))
	w.seq, w.last, w.dirty = seq, hash, true
	return nil
}

// rotateLocked syncs and closes the current file and starts the next.
func (w *Writer) rotateLocked() error {
	if err := w.syncLocked(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		w.err = fmt.Errorf("audit: close %s: %w", fileName(w.fileNum), err)
		return w.err
	}
	if err := w.create(w.fileNum + 1); err != nil {
		w.err = err
		return err
	}
	return nil
}

// syncLocked fsyncs the file and moves the head anchor to the last record.
// A failed fsync is sticky: what reached the disk is then unknown.
func (w *Writer) syncLocked() error {
	if !w.dirty {
		return nil
	}
	if err := w.f.Sync(); err != nil {
		w.err = fmt.Errorf("audit: fsync %s: %w", fileName(w.fileNum), err)
		return w.err
	}
	w.dirty = false
	h := Head{Seq: w.seq, Hash: w.last, File: fileName(w.fileNum)}
	if err := writeHead(w.dir, h); err != nil {
		return fmt.Errorf("audit: record %d is on disk but the head anchor was not updated: %w", w.seq, err)
	}
	return nil
}

// Sync fsyncs what was appended and updates the head anchor.
func (w *Writer) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return ErrClosed
	case w.err != nil:
		return w.err
	}
	return w.syncLocked()
}

func (w *Writer) syncLoop(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			// An error is sticky in w.err; the next Append returns it.
			_ = w.Sync()
		}
	}
}

// Last returns the seq and hash of the last record written (0 and Genesis
// for an empty log). Kept elsewhere, they let a later Verify prove that
// nothing up to that record was rewritten.
func (w *Writer) Last() (seq uint64, hash string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq, w.last
}

// Close fsyncs, writes the head anchor, closes the file, releases the
// directory and forgets the forbidden values.
func (w *Writer) Close() error {
	if w.stop != nil {
		w.stopOnce.Do(func() { close(w.stop) })
		<-w.done
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	var err error
	if w.err == nil {
		err = w.syncLocked()
	}
	err = errors.Join(err, w.f.Close(), w.lock.Close())
	for _, s := range w.secrets {
		clear(s)
	}
	w.secrets = nil
	return err
}

// marshal encodes v as compact JSON without HTML escaping.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func mustMarshal(v any) []byte {
	b, err := marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
