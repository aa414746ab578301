package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Report is what Verify found.
type Report struct {
	Dir string `json:"dir"`
	// Files and Records count what was read and checked.
	Files   int    `json:"files"`
	Records uint64 `json:"records"`
	// LastSeq and LastHash identify the last good record. Kept elsewhere,
	// they let a later Verify prove nothing up to it was rewritten.
	LastSeq  uint64 `json:"last_seq"`
	LastHash string `json:"last_hash"`
	// Head is the anchor found in <dir>/head, nil when there is none.
	Head *Head `json:"head,omitempty"`
	// Warnings are findings that are not tampering: an incomplete last line
	// from a crash, no head anchor.
	Warnings []string `json:"warnings,omitempty"`
	// Problem is the first bad record, nil when the log verifies.
	Problem *Problem `json:"problem,omitempty"`
}

// Problem is where and how the log fails to verify. It is an error that
// matches ErrTampered.
type Problem struct {
	File string `json:"file"`
	// Line counts from 1; 0 when the problem is a whole file.
	Line int `json:"line,omitempty"`
	// Seq is the seq the bad record carries, 0 when it has none.
	Seq    uint64 `json:"seq,omitempty"`
	Reason string `json:"reason"`
	// Text is the bad line, cut at 1 KiB.
	Text string `json:"text,omitempty"`
}

func (p *Problem) Error() string {
	var b bytes.Buffer
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, " line %d", p.Line)
	}
	if p.Seq > 0 {
		fmt.Fprintf(&b, " (seq %d)", p.Seq)
	}
	b.WriteString(": ")
	b.WriteString(p.Reason)
	return b.String()
}

// Is makes errors.Is(p, ErrTampered) true.
func (p *Problem) Is(target error) bool { return target == ErrTampered }

// Verify reads the whole log in dir and checks that every line is a record
// whose hash matches its canonical bytes, that each record's prev is the
// hash of the one before (Genesis for the first), that seq counts up by one
// from 1 across files, that the files are audit-000001.jsonl, 2, 3, … with
// none missing, and that the log reaches the head anchor.
//
// It returns the report and, when the log does not verify, the first
// problem as an error (a *Problem, also in Report.Problem). Other errors
// mean the log could not be read.
func Verify(dir string) (Report, error) {
	r := Report{Dir: dir, LastHash: Genesis}
	// The head first: a writer appending meanwhile only moves the log
	// further past it.
	head, herr := readHead(dir)
	r.Head = head
	files, odd, err := listFiles(dir)
	if err != nil {
		return r, fmt.Errorf("audit: %w", err)
	}
	for _, name := range odd {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s is not part of the log (not a name the writer gives)", name))
	}
	fail := func(p *Problem) (Report, error) {
		r.Problem = p
		return r, p
	}
	if herr != nil {
		return fail(&Problem{File: headName, Reason: herr.Error() + ": the anchor was altered"})
	}
	for i, lf := range files {
		if lf.num != i+1 {
			return fail(&Problem{File: fileName(i + 1), Reason: fmt.Sprintf("file %s missing (%s follows %s)", fileName(i+1), lf.name, prevName(files, i))})
		}
	}
	if len(files) == 0 && head == nil {
		r.Warnings = append(r.Warnings, "no audit files: the log is empty")
		return r, nil
	}
	if head == nil {
		r.Warnings = append(r.Warnings, "no head anchor: records cut off the end could not be noticed")
	}

	var lastFile string
	var lastLine int
	for i, lf := range files {
		last := i == len(files)-1
		n, p, err := r.verifyFile(filepath.Join(dir, lf.name), lf.name, i, last)
		if err != nil {
			return r, fmt.Errorf("audit: %w", err)
		}
		if p != nil {
			return fail(p)
		}
		if n == 0 && !last {
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s is empty", lf.name))
		}
		r.Files++
		lastFile, lastLine = lf.name, n
	}
	if head != nil && head.Seq > r.LastSeq {
		if lastFile == "" {
			lastFile = head.File
		}
		return fail(&Problem{File: lastFile, Line: lastLine + 1, Seq: r.LastSeq + 1,
			Reason: fmt.Sprintf("the log ends at seq %d but the head anchor says seq %d (in %s): records were cut off the end", r.LastSeq, head.Seq, head.File)})
	}
	return r, nil
}

func prevName(files []logFile, i int) string {
	if i == 0 {
		return "nothing"
	}
	return files[i-1].name
}

// verifyFile checks one file, continuing from r's last record, and returns
// how many lines it read.
func (r *Report) verifyFile(path, name string, index int, last bool) (int, *Problem, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	n := 0
	for {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return n, nil, nil
		}
		if err != nil && err != io.EOF {
			return n, nil, err
		}
		n++
		p := &Problem{File: name, Line: n, Text: cut(line)}
		if line[len(line)-1] != '\n' {
			if last {
				r.Warnings = append(r.Warnings, fmt.Sprintf("%s line %d: incomplete last line (%d bytes, no newline): a crash during a write; opening the log for writing cuts it off", name, n, len(line)))
				return n - 1, nil, nil
			}
			p.Reason = fmt.Sprintf("incomplete line (%d bytes, no newline) inside the log, not at its end", len(line))
			return n, p, nil
		}
		line = line[:len(line)-1]
		e, err := parseLine(line)
		if e.Seq > 0 {
			p.Seq = e.Seq
		}
		if err != nil {
			var le *lineError
			if errors.As(err, &le) && le.syntax && last {
				if _, perr := br.Peek(1); perr == io.EOF {
					r.Warnings = append(r.Warnings, fmt.Sprintf("%s line %d: last line is not JSON (%d bytes): a crash during a write; opening the log for writing cuts it off", name, n, len(line)))
					return n - 1, nil, nil
				}
			}
			p.Reason = err.Error()
			return n, p, nil
		}
		want, seqProblem := r.LastSeq+1, e.Seq != r.LastSeq+1
		switch {
		case e.Seq > want:
			p.Reason = fmt.Sprintf("seq %d follows %d: a record before this one is missing or out of order", e.Seq, r.LastSeq)
		case e.Seq < want:
			p.Reason = fmt.Sprintf("seq %d follows %d: a record was inserted, duplicated or moved before this one", e.Seq, r.LastSeq)
		case e.Prev != r.LastHash:
			if r.LastSeq == 0 {
				p.Reason = "prev does not match: the first record must have the genesis prev; records were deleted or inserted before this one"
			} else {
				p.Reason = fmt.Sprintf("prev does not match the hash of seq %d: that record was edited (and its hash recomputed), or a record was deleted or inserted before this one", r.LastSeq)
			}
		case r.Head != nil && e.Seq == r.Head.Seq && e.Hash != r.Head.Hash:
			p.Reason = fmt.Sprintf("hash differs from the head anchor's for seq %d: the log was rewritten up to here", e.Seq)
		}
		if p.Reason != "" {
			if n == 1 && index > 0 && seqProblem {
				p.Reason += fmt.Sprintf(" (the first record of %s does not continue %s: files swapped, renamed or deleted?)", name, fileName(index))
			}
			return n, p, nil
		}
		r.Records++
		r.LastSeq, r.LastHash = e.Seq, e.Hash
	}
}

// cut shortens a line for a report.
func cut(line []byte) string {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(line) > 1024 {
		return string(line[:1024]) + "…"
	}
	return string(line)
}
