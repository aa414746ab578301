package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/approval"
)

// approvalsTarget is where `perimeter approvals` reads and decides: a
// worker's approvals API, or the store in a state directory directly.
type approvalsTarget struct {
	adminURL, tokenFile, stateDir, store string
	asJSON                               bool
}

// approvals is what the subcommands need of either target.
type approvals interface {
	List(ctx context.Context, state approval.State) ([]approval.Record, error)
	Get(ctx context.Context, id string) (approval.Record, error)
	Decide(ctx context.Context, id string, allow bool, d approval.Decision) (approval.Record, error)
}

// storeApprovals decides on the store directly, for when no worker runs.
type storeApprovals struct{ s *approval.Store }

func (a storeApprovals) List(ctx context.Context, state approval.State) ([]approval.Record, error) {
	return a.s.List(ctx, state)
}
func (a storeApprovals) Get(ctx context.Context, id string) (approval.Record, error) {
	return a.s.Get(ctx, id)
}
func (a storeApprovals) Decide(ctx context.Context, id string, allow bool, d approval.Decision) (approval.Record, error) {
	return a.s.Decide(ctx, id, allow, "human:"+d.By, d.Reason, d.Input, time.Now())
}

// open opens the store named by --store or --state-dir, or else the API of
// the worker the config file (--config) describes: its admin_listen
// address and the token in its state_dir, unless --admin-url,
// $PERIMETER_ADMIN_URL, --token-file or $PERIMETER_ADMIN_TOKEN say otherwise.
func (t *approvalsTarget) open(cmd *cobra.Command) (approvals, func(), error) {
	ctx := cmd.Context()
	if approval.IsPostgres(t.store) {
		s, err := approval.OpenPostgres(ctx, t.store)
		if err != nil {
			return nil, nil, err
		}
		return storeApprovals{s}, func() { s.Close() }, nil
	}
	// Any other --store is a state directory. Its store must exist: a
	// mistyped path would otherwise fail inside SQLite, or get an empty
	// store of its own that no worker reads.
	if dir := cmp.Or(t.store, t.stateDir); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "approvals.db")); err != nil {
			if t.store != "" {
				return nil, nil, fmt.Errorf("--store %q is neither a postgres:// URL nor a worker state directory: %w", t.store, err)
			}
			return nil, nil, fmt.Errorf("no approvals store in %s (is it a worker's --state-dir?): %w", t.stateDir, err)
		}
		s, err := approval.Open(dir)
		if err != nil {
			return nil, nil, err
		}
		return storeApprovals{s}, func() { s.Close() }, nil
	}
	cfg, err := resolveConfig(cmd, "")
	if err != nil {
		return nil, nil, err
	}
	url := cmp.Or(t.adminURL, os.Getenv("PERIMETER_ADMIN_URL"))
	if url == "" {
		if url, err = clientAdminURL(cfg.Worker.AdminListen); err != nil {
			return nil, nil, err
		}
	}
	token, err := clientAdminToken(t.tokenFile, cfg.Worker.StateDir)
	if err != nil {
		return nil, nil, err
	}
	return &approval.Client{BaseURL: url, Token: token}, func() {}, nil
}

func newApprovalsCmd() *cobra.Command {
	t := &approvalsTarget{}
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List, show, approve and deny tool calls waiting for a human",
		Long: `A policy rule that says ask or defer holds its tool call until a human
decides it or its deadline denies it. These commands decide.

They talk to a worker's approvals API (--admin-url, else
$PERIMETER_ADMIN_URL, else the config file's worker.admin_listen, default
http://127.0.0.1:9464) with the admin token (--token-file, else
$PERIMETER_ADMIN_TOKEN; a worker without the variable writes one to
<state-dir>/admin-token, found through the config file's worker.state_dir,
default ./perimeter-state). With --state-dir they work on the
approvals store in that directory directly, which also works while no worker
runs: the worker that next serves the session applies the decision. With
--store postgres://… they work on a PostgreSQL store that workers share.

Every decision records who made it (--by, default $PERIMETER_APPROVER or
your user name) and is bound to the exact input of the call.`,
		Example: `  perimeter approvals list
  perimeter approvals show sevt_0123 --json
  perimeter approvals approve sevt_0123 --by alice --reason "reviewed the diff"
  perimeter approvals approve sevt_0123 --by alice --input '{"file_path":"docs/a.md","content":"fixed"}'
  perimeter approvals deny sevt_0123 --by alice --reason "not on a Friday"
  perimeter approvals list --state-dir /var/lib/perimeter --all`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&t.adminURL, "admin-url", "", "the worker's admin address (default $PERIMETER_ADMIN_URL, else the config's worker.admin_listen, else http://127.0.0.1:9464)")
	pf.StringVar(&t.tokenFile, "token-file", "", "file holding the admin token (default $PERIMETER_ADMIN_TOKEN, else admin-token in the config's worker.state_dir, else ./perimeter-state/admin-token)")
	pf.StringVar(&t.stateDir, "state-dir", "", "decide on the approvals store in this worker state directory instead of through a worker")
	pf.StringVar(&t.store, "store", "", "decide on this approvals store (a postgres:// URL, or a state directory) instead of through a worker")
	pf.BoolVar(&t.asJSON, "json", false, "print JSON")

	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List pending requests (--all for every decision)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, done, err := t.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			state := approval.Pending
			if all {
				state = ""
			}
			recs, err := a.List(cmd.Context(), state)
			if err != nil {
				return err
			}
			if t.asJSON {
				return printJSON(cmd.OutOrStdout(), recs)
			}
			if len(recs) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing waiting")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tTOOL\tRULE\tSESSION\tDEADLINE\tDECIDED BY")
			for _, r := range recs {
				deadline := "-"
				if !r.Deadline.IsZero() {
					deadline = r.Deadline.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ToolUseID, r.State, r.Tool, r.Rule, r.SessionID, deadline, cmp.Or(r.DecidedBy, "-"))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list every recorded decision, not only pending ones")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one request with the exact input of its call",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, done, err := t.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			r, err := a.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if t.asJSON {
				return printJSON(cmd.OutOrStdout(), r)
			}
			printRecord(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.AddCommand(list, show, decideCmd(t, true), decideCmd(t, false))
	return cmd
}

func decideCmd(t *approvalsTarget, allow bool) *cobra.Command {
	var by, reason, input string
	use, short := "deny ID", "Deny a waiting call; the model sees the reason"
	if allow {
		use, short = "approve ID", "Approve a waiting call, optionally with an edited input"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			by = cmp.Or(by, os.Getenv("PERIMETER_APPROVER"), currentUser())
			if by == "" {
				return errors.New("--by is required: who is deciding")
			}
			d := approval.Decision{By: by, Reason: reason}
			if input != "" {
				if !json.Valid([]byte(input)) {
					return errors.New("--input is not valid JSON")
				}
				d.Input = json.RawMessage(input)
			}
			a, done, err := t.open(cmd)
			if err != nil {
				return err
			}
			defer done()
			r, err := a.Decide(cmd.Context(), args[0], allow, d)
			if err != nil {
				return err
			}
			if t.asJSON {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s by %s\n", r.ToolUseID, r.State, r.DecidedBy)
			return nil
		},
	}
	c.Flags().StringVar(&by, "by", "", "who decides, recorded with the decision (default $PERIMETER_APPROVER, else your user name)")
	c.Flags().StringVar(&reason, "reason", "", "why; a denial's reason is shown to the model")
	if allow {
		c.Flags().StringVar(&input, "input", "", "run the call with this JSON input instead (only where the rule allows edits)")
	}
	return c
}

func currentUser() string {
	u, err := user.Current()
	if err != nil {
		return ""
	}
	host, _ := os.Hostname()
	return u.Username + "@" + host
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printRecord(w io.Writer, r approval.Record) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Local().Format(time.RFC3339)
	}
	row("id", r.ToolUseID)
	row("state", string(r.State))
	row("tool", r.Tool)
	row("session", r.SessionID)
	row("work item", r.WorkID)
	row("worker", r.WorkerID)
	row("policy", r.Policy+" (rule "+r.Rule+")")
	row("message", r.Message)
	row("requested", ts(r.RequestedAt))
	row("deadline", ts(r.Deadline))
	row("channels", strings.Join(r.Channels, ", "))
	row("edits allowed", fmt.Sprint(r.AllowEdit))
	row("decided by", r.DecidedBy)
	row("decided", ts(r.DecidedAt))
	row("reason", r.Reason)
	row("input sha256", r.InputSHA256)
	_ = tw.Flush()
	fmt.Fprintf(w, "input:\n%s\n", indentJSON(r.Input))
	if len(r.EditedInput) > 0 {
		fmt.Fprintf(w, "edited input (sha256 %s):\n%s\n", r.EditedSHA256, indentJSON(r.EditedInput))
	}
}

func indentJSON(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "  ", "  ")
	return "  " + string(out)
}
