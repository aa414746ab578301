package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/config"
)

// auditDir is where a worker with this config keeps its audit log.
func auditDir(cfg *config.Config) string {
	return cmp.Or(cfg.Audit.Dir, filepath.Join(cfg.Worker.StateDir, "audit"))
}

// auditFlags are the flags every `perimeter audit` subcommand shares.
type auditFlags struct {
	dir, stateDir string
	asJSON        bool
}

// resolve returns --dir, else the audit directory of the state directory
// `perimeter worker` would use: --state-dir, the config file's
// worker.state_dir, else ./perimeter-state.
func (f *auditFlags) resolve(cmd *cobra.Command) (string, error) {
	if f.dir != "" {
		return f.dir, nil
	}
	cfg, err := resolveConfig(cmd, f.stateDir)
	if err != nil {
		return "", err
	}
	return auditDir(cfg), nil
}

func newAuditCmd() *cobra.Command {
	f := &auditFlags{}
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify the tamper-evident audit log and show what each tool call did",
		Long: `A worker appends a record of every policy decision, approval, checkpoint,
egress request, injected credential (by name) and tool result to a
hash-chained log in <state-dir>/audit. Each record carries the SHA-256 of the
one before, so an edited, deleted, inserted or reordered record, a missing
or swapped file, or records cut off the end (up to the head anchor the worker
keeps) show up as a broken chain.

'verify' checks the whole chain and names the first bad record. Copy the last
seq and hash it prints somewhere the worker cannot write: a later
'verify --expect SEQ:HASH' then also proves nobody rewrote the log up to it.

'show' lists the sessions in the log, or, with --session, one dossier per
tool call: the decision and who made it, the approval wait, the checkpoint,
egress requests, credentials injected and the result.

The log is found in --dir, else in the audit directory of the worker's state
directory (--state-dir, else the config file's worker.state_dir, else
./perimeter-state).`,
		Example: `  perimeter audit verify
  perimeter audit verify --state-dir /var/lib/perimeter
  perimeter audit verify --dir /var/lib/perimeter/audit --expect 1234:9f86d081884c7d65
  perimeter audit show
  perimeter audit show --session sesn_011CZkZrF1SNWGh7NsGRd9Rb
  perimeter audit show --session sesn_011CZkZrF1SNWGh7NsGRd9Rb --json | jq '.[] | select(.verdict=="denied")'`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.dir, "dir", "", "the audit log directory (default <state-dir>/audit)")
	pf.StringVar(&f.stateDir, "state-dir", "", "the worker's state directory (default: the config file's worker.state_dir, else ./perimeter-state)")
	pf.BoolVar(&f.asJSON, "json", false, "print JSON")
	cmd.AddCommand(auditVerifyCmd(f), auditShowCmd(f))
	return cmd
}

func auditVerifyCmd(f *auditFlags) *cobra.Command {
	var expect string
	c := &cobra.Command{
		Use:   "verify",
		Short: "Check the whole hash chain; exit 1 naming the first bad record",
		Long: `Reads every file of the log in order and checks each record's hash, that it
links to the one before, that seq counts up without gaps, that no file is
missing or out of place, and that the log reaches its head anchor. An
incomplete last line (a crash during a write) is a warning, not tampering.

Exits 0 when the log verifies, 1 with the file, line and seq of the first bad
record when it does not.`,
		Example: `  perimeter audit verify --dir /var/lib/perimeter/audit
  perimeter audit verify --expect 1234:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  perimeter audit verify --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var wantSeq uint64
			var wantHash string
			if expect != "" {
				s, h, ok := strings.Cut(expect, ":")
				n, err := strconv.ParseUint(s, 10, 64)
				if !ok || err != nil || n == 0 || len(h) < 16 {
					return fmt.Errorf("--expect %q: want SEQ:HASH as verify printed them (at least 16 digits of the hash)", expect)
				}
				wantSeq, wantHash = n, strings.ToLower(h)
			}
			dir, err := f.resolve(cmd)
			if err != nil {
				return err
			}
			r, err := audit.Verify(dir)
			var p *audit.Problem
			if err != nil && !errors.As(err, &p) {
				return fmt.Errorf("read the audit log: %w (is %s a worker's audit directory? set --dir or --state-dir)", err, dir)
			}
			var bad error
			if p != nil {
				bad = p
			} else if wantSeq > 0 {
				bad = checkExpected(dir, r, wantSeq, wantHash)
			}
			out := cmd.OutOrStdout()
			if f.asJSON {
				if err := printJSON(out, r); err != nil {
					return err
				}
			} else {
				printVerify(out, r, wantSeq, bad)
			}
			if bad != nil {
				return fmt.Errorf("the audit log in %s does not verify: %w", dir, bad)
			}
			return nil
		},
	}
	c.Flags().StringVar(&expect, "expect", "", "also require the record with this seq to have this hash (SEQ:HASH, from an earlier verify)")
	return c
}

// checkExpected checks a verified log against an anchor kept elsewhere:
// the record with that seq must be there, with that hash (or a prefix).
func checkExpected(dir string, r audit.Report, seq uint64, hash string) error {
	if seq > r.LastSeq {
		return fmt.Errorf("the log ends at seq %d, before the expected seq %d: records were cut off the end", r.LastSeq, seq)
	}
	var bad error
	stop := errors.New("found")
	err := audit.Read(dir, func(e audit.Entry) error {
		if e.Seq != seq {
			return nil
		}
		if !strings.HasPrefix(e.Hash, hash) {
			bad = fmt.Errorf("seq %d has hash %s, not the expected %s: the log was rewritten up to there", seq, e.Hash, hash)
		}
		return stop
	})
	if err != nil && !errors.Is(err, stop) {
		return err
	}
	return bad
}

func printVerify(w io.Writer, r audit.Report, expected uint64, bad error) {
	switch {
	case r.Problem != nil:
		p := r.Problem
		fmt.Fprintf(w, "FAILED: %s\n", p.Error())
		if p.Text != "" {
			fmt.Fprintf(w, "  %s\n", p.Text)
		}
		fmt.Fprintf(w, "%s before it verified\n", plural(r.Records, "record"))
	case bad != nil:
		fmt.Fprintf(w, "FAILED: %s in %s verified, but %v\n", plural(r.Records, "record"), plural(uint64(r.Files), "file"), bad)
	default:
		fmt.Fprintf(w, "ok: %s in %s verified (%s)\n", plural(r.Records, "record"), plural(uint64(r.Files), "file"), r.Dir)
		if r.Records > 0 {
			fmt.Fprintf(w, "last record: seq %d hash %s\n", r.LastSeq, r.LastHash)
			fmt.Fprintf(w, "  keep it where the worker cannot write; later: perimeter audit verify --expect %d:%s\n", r.LastSeq, r.LastHash)
		}
		if r.Head != nil {
			fmt.Fprintf(w, "head anchor: seq %d, reached\n", r.Head.Seq)
		}
		if expected > 0 {
			fmt.Fprintf(w, "expected anchor: seq %d, matches\n", expected)
		}
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}

func auditShowCmd(f *auditFlags) *cobra.Command {
	var session string
	c := &cobra.Command{
		Use:   "show",
		Short: "List the sessions in the log, or show one session's tool calls",
		Long: `Without --session, lists the sessions in the log. With --session, prints one
dossier per tool call of that session, in order: the tool and the SHA-256 of
its input, the policy decision and who made it (a rule, a human, the
platform or the default), how long it waited for approval, the checkpoint
taken before it, its egress requests (host, method, verdict, bytes), the
credentials injected into them (names only), its result and duration.

The log is verified first; if it does not verify, a warning says so, since
what follows may have been altered.`,
		Example: `  perimeter audit show
  perimeter audit show --session sesn_011CZkZrF1SNWGh7NsGRd9Rb
  perimeter audit show --session sesn_011CZkZrF1SNWGh7NsGRd9Rb --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := f.resolve(cmd)
			if err != nil {
				return err
			}
			var p *audit.Problem
			if _, err := audit.Verify(dir); errors.As(err, &p) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: the audit log does not verify (%v); what follows may have been altered\n", p)
			} else if err != nil {
				return fmt.Errorf("read the audit log: %w (is %s a worker's audit directory? set --dir or --state-dir)", err, dir)
			}
			out := cmd.OutOrStdout()
			if session == "" {
				ss, err := audit.Sessions(dir)
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(out, ss)
				}
				printSessions(out, ss)
				return nil
			}
			ds, err := audit.Dossiers(dir, session)
			if err != nil {
				return err
			}
			if len(ds) == 0 {
				return fmt.Errorf("no tool calls of session %s in %s (list the sessions with: perimeter audit show --dir %s)", session, dir, dir)
			}
			if f.asJSON {
				return printJSON(out, ds)
			}
			fmt.Fprintf(out, "session %s: %s\n", session, plural(uint64(len(ds)), "tool call"))
			for _, d := range ds {
				fmt.Fprintln(out)
				printDossier(out, d)
			}
			return nil
		},
	}
	c.Flags().StringVar(&session, "session", "", "the session whose tool calls to show")
	return c
}

func printSessions(w io.Writer, ss []audit.Session) {
	if len(ss) == 0 {
		fmt.Fprintln(w, "no sessions recorded")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tWORK\tTOOL CALLS\tRECORDS\tFIRST\tLAST\tENDED")
	for _, s := range ss {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s.ID, dash(s.WorkID), s.ToolCalls, s.Records,
			s.First.Local().Format(time.DateTime), s.Last.Local().Format(time.DateTime), dash(s.EndReason))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\nshow one with: perimeter audit show --session <SESSION>")
}

func printDossier(w io.Writer, d audit.Dossier) {
	head := []string{d.ToolUseID, dash(d.Tool), dash(d.Status)}
	if d.Duration > 0 {
		head = append(head, d.Duration.String())
	}
	if d.Replayed {
		head = append(head, "(replayed from the journal)")
	}
	fmt.Fprintln(w, strings.Join(head, "  "))
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-13s %s\n", k, v)
		}
	}
	row("input sha256", d.InputSHA256)
	row("decision", decisionText(d))
	row("edited input", d.EditedInputSHA256)
	row("checkpoint", d.CheckpointID)
	row("restored to", d.RestoredTo)
	for i, e := range d.Egress {
		k := ""
		if i == 0 {
			k = "egress"
		}
		row(k, egressText(e))
	}
	row("credentials", strings.Join(d.Credentials, ", "))
	if d.OutputBytes > 0 {
		row("output", fmt.Sprintf("%d bytes", d.OutputBytes))
	}
	row("records", fmt.Sprintf("seq %d–%d (%d), %s – %s", d.FirstSeq, d.LastSeq, d.Records,
		d.Start.Local().Format(time.DateTime), d.End.Local().Format(time.TimeOnly)))
	for _, n := range d.Notes {
		row("note", n)
	}
}

func decisionText(d audit.Dossier) string {
	if d.Decision == "" {
		return ""
	}
	rule := ""
	if d.Rule != "" {
		rule = " (rule " + d.Rule + ")"
	}
	switch d.Decision {
	case "ask", "defer":
		s := d.Decision + rule + " → " + d.Verdict
		if d.Verdict != audit.VerdictPending {
			s += " by " + d.DecidedBy
			if d.ApprovalWait > 0 {
				s += " after " + d.ApprovalWait.Round(time.Millisecond).String()
			}
		}
		return s
	default:
		return d.Decision + " by " + dash(d.DecidedBy)
	}
}

func egressText(e audit.EgressCall) string {
	host := e.Host
	if e.Port != 0 {
		host += ":" + strconv.Itoa(e.Port)
	}
	parts := []string{e.Method, host, e.Verdict}
	if e.Status != 0 {
		parts = append(parts, strconv.Itoa(e.Status))
	}
	if e.Verdict != audit.VerdictBlocked {
		parts = append(parts, fmt.Sprintf("out %d B, in %d B", e.BytesOut, e.BytesIn))
	}
	if e.Rule != "" {
		parts = append(parts, "rule "+e.Rule)
	}
	if e.Reason != "" {
		parts = append(parts, e.Reason)
	}
	return strings.Join(parts, "  ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
