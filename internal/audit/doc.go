// Package audit holds Perimeter's evidence of what happened: OpenTelemetry
// export (tracing.go) and a tamper-evident local log of every decision,
// approval, result and egress request, which `perimeter audit verify`
// checks and `perimeter audit show` turns into one dossier per tool call.
//
// # The log
//
// A log is a directory (0700) of JSON-lines files (0600) named
// audit-000001.jsonl, audit-000002.jsonl, …; a file is started when the
// current one would grow past Options.MaxFileBytes. Records are only ever
// appended, each with one write(2) of one line ending in "\n". Members
// appear in this order; the ids, data and payload only when set:
//
//	{"seq":7,"time":"2026-03-01T12:00:00.123456789Z","kind":"tool_decision",
//	 "session_id":"sesn_…","work_id":"work_…","tool_use_id":"sevt_…",
//	 "data":{…},"payload":{…},"prev":"<64 hex>","hash":"<64 hex>"}
//
// (one line in the file). seq counts from 1 across all files with no gaps.
// time is the writer's clock in UTC, RFC 3339 with up to nine fractional
// digits. kind is one of the Kind constants; data is that kind's struct in
// record.go (ToolDecision for tool_decision, and so on), which is the
// contract between the worker that writes records and the dossier that reads
// them. prev is the hash of the record before, across file boundaries; the
// first record of the log has prev Genesis (64 zeros).
//
// # Canonical form and hash
//
// The canonical bytes of a record are its line, without the newline, with
// the final member `,"hash":"<64 hex>"` removed: the last 75 bytes of the
// line, `,"hash":"…"}`, replaced by the single byte "}". hash is the
// lowercase hex SHA-256 of those bytes. The hash covers exactly the bytes on
// disk, so no JSON re-encoding is involved and any tool can check a log:
//
//	import glob, hashlib, json, sys
//	prev, seq = "0" * 64, 0
//	for path in sorted(glob.glob(sys.argv[1] + "/audit-*.jsonl")):
//	    for n, line in enumerate(open(path, "rb"), 1):
//	        assert line.endswith(b"\n"), (path, n, "incomplete line")
//	        line = line[:-1]
//	        rec = json.loads(line)
//	        assert line[-75:] == b',"hash":"' + rec["hash"].encode() + b'"}', (path, n)
//	        assert hashlib.sha256(line[:-75] + b"}").hexdigest() == rec["hash"], (path, n, "edited")
//	        assert rec["seq"] == seq + 1 and rec["prev"] == prev, (path, n, "chain broken")
//	        prev, seq = rec["hash"], rec["seq"]
//	print("ok", seq, prev)
//
// # Durability and crashes
//
// With the zero Options.SyncInterval every record is fsynced before Append
// returns: a record Append accepted survives a crash of the process or the
// machine. With a positive interval records are fsynced in the background;
// a crash of the process loses nothing Append accepted (each record is in
// the kernel once its write returns), but a crash of the machine can lose
// the records of the last interval. Either way a crash can leave at most
// the last line incomplete (or, after a power loss, not JSON). Verify
// reports that as a warning, not tampering; Open cuts it off and appends a
// log_repaired record giving the offset, size and SHA-256 of the bytes it
// dropped, so the log verifies again and the repair is itself on record.
//
// The head anchor, <dir>/head, holds the seq and hash of the last record
// known to be on disk. It is replaced atomically (write, fsync, rename) at
// every fsync and on Close, so it never points past the log after a crash.
//
// # What Verify detects, and what it cannot
//
// Detected, naming the file, line and seq of the first bad record:
//
//   - an edited record (its hash no longer matches: "hash mismatch");
//   - an edited record whose hash was recomputed (the next record's prev no
//     longer matches);
//   - a deleted, inserted, duplicated or moved record (seq and prev break
//     where it was);
//   - a missing, swapped or renamed file (file numbers have a gap, or a
//     file's first record does not continue the file before);
//   - records or whole files cut off the end, up to the head anchor (the log
//     ends before the seq the head names), and a log rewritten up to the
//     anchor (the anchor's hash differs).
//
// Not detected by the log alone:
//
//   - a rewrite of the log from some record onwards, with every later hash
//     recomputed and the head rewritten to match: a hash chain without a
//     secret proves internal consistency, not authorship. Anyone able to
//     write the directory can forge a consistent log. Copy the last seq and
//     hash (Writer.Last, or what `perimeter audit verify` prints) somewhere
//     the worker cannot write, and a later Verify whose log does not contain
//     that hash at that seq shows the rewrite;
//   - records cut off the end together with the head file, or beyond the
//     head (with a SyncInterval, the anchor lags by up to one interval);
//   - deleting the whole directory, and events that were never recorded.
//
// Open refuses a log whose last record does not verify or whose head anchor
// is ahead of it (ErrTampered), rather than extend a broken chain. It takes
// an exclusive lock on <dir>/lock, so one writer extends a chain at a time.
//
// # What is kept out
//
// Records hold ids, names, decisions, sizes and hashes. Content that may be
// sensitive (a command, a path, an edited input) goes in Record.Payload and
// is written only for the field names listed in Options.KeepPayload. As a
// second line of defence, Writer.Forbid registers secret values (kept only
// in memory), and Append refuses, writing nothing, any record in which one
// appears, raw or as JSON-escaped inside a string. It does not look for
// other encodings of a value (base64, hex, URL escaping).
package audit
