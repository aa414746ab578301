package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/worker"
)

func checkpointDir(stateDir string) string { return filepath.Join(stateDir, "checkpoints") }

// openCheckpoints opens the worker's checkpoint store and prunes it by the
// configured retention. A second worker on the same state directory gets
// a store of its own, and says so.
func openCheckpoints(ctx context.Context, cfg *config.Config, log *slog.Logger) (*checkpoint.Store, error) {
	if cfg.Checkpoints.Disabled {
		log.Warn("workspace checkpoints are disabled (checkpoints.disabled)")
		return nil, nil
	}
	dir := cmp.Or(cfg.Checkpoints.Dir, checkpointDir(cfg.Worker.StateDir))
	s, err := checkpoint.Open(dir, checkpoint.Options{})
	if errors.Is(err, checkpoint.ErrLocked) {
		alt := dir + "." + cfg.Worker.ID
		log.Warn("another worker uses the checkpoint store here; using this worker's own", slog.String("busy", dir), slog.String("dir", alt))
		dir = alt
		s, err = checkpoint.Open(dir, checkpoint.Options{})
	}
	if err != nil {
		return nil, err
	}
	rep, err := s.Prune(ctx, retention(cfg))
	if err != nil {
		log.Warn("pruning checkpoints failed", slog.Any("error", err))
	}
	log.Info("checkpoint store open", slog.String("dir", dir), slog.Int("checkpoints", rep.Kept), slog.Int64("bytes", rep.Bytes), slog.Int("pruned", rep.Removed))
	return s, nil
}

func retention(cfg *config.Config) checkpoint.Retention {
	return checkpoint.Retention{
		MaxCount: cmp.Or(cfg.Checkpoints.MaxCount, 200),
		MaxAge:   cfg.Checkpoints.MaxAge.D(7 * 24 * time.Hour),
		MaxBytes: cmp.Or(int64(cfg.Checkpoints.MaxBytes), 10<<30),
	}
}

// restoreRequest is the body of POST /v1/checkpoints/restore.
type restoreRequest struct {
	Session    string `json:"session"`
	Before     string `json:"before,omitempty"`
	Checkpoint string `json:"checkpoint,omitempty"`
	By         string `json:"by"`
}

// restoreResponse is its answer.
type restoreResponse struct {
	Checkpoint checkpoint.Checkpoint    `json:"checkpoint"`
	Report     checkpoint.RestoreReport `json:"report"`
}

// checkpointsAPI serves GET /v1/checkpoints?session=ID and POST
// /v1/checkpoints/restore on the admin listener, with the admin token.
func checkpointsAPI(w *worker.Worker, store *checkpoint.Store, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/checkpoints", func(rw http.ResponseWriter, r *http.Request) {
		list, err := store.List(r.URL.Query().Get("session"))
		if err != nil {
			http.Error(rw, err.Error(), http.StatusNotFound)
			return
		}
		writeJSONTo(rw, map[string]any{"data": list})
	})
	mux.HandleFunc("POST /v1/checkpoints/restore", func(rw http.ResponseWriter, r *http.Request) {
		var req restoreRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req.Session == "" || (req.Before == "") == (req.Checkpoint == "") || req.By == "" {
			http.Error(rw, `body: {"session": ID, "before": TOOL_USE_ID or "checkpoint": ID, "by": WHO}`, http.StatusBadRequest)
			return
		}
		cp, rep, err := w.RestoreCheckpoint(r.Context(), req.Session, req.Before, req.Checkpoint, "human:"+req.By)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusConflict)
			return
		}
		writeJSONTo(rw, restoreResponse{Checkpoint: cp, Report: rep})
	})
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			http.Error(rw, "missing or wrong admin token (Authorization: Bearer …)", http.StatusUnauthorized)
			return
		}
		if store == nil {
			http.Error(rw, "this worker takes no checkpoints", http.StatusNotFound)
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

func writeJSONTo(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func newCheckpointsCmd(g *globals) *cobra.Command {
	var adminURL, tokenFile, stateDir, session, before string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "checkpoints",
		Short: "List, compare and restore a session's workspace checkpoints",
		Long: `Before every tool call that may change the workspace (write, edit, bash,
custom and MCP tools), the worker snapshots the session's workspace, keyed by
the call's tool-use id: incremental, content-addressed, deduplicated across
sessions, with modes, symlinks (as links) and empty directories.

list and diff read the store in a state directory (--state-dir) while no
worker holds it. restore --admin-url rolls a live session back through the
worker's admin API: the files change under the running sandbox and the model
is told so in the next tool result. Without --admin-url, restore works on the
state directory directly, for a session no worker serves.`,
		Example: `  perimeter checkpoints list --session sesn_0123 --state-dir /var/lib/perimeter
  perimeter checkpoints diff --session sesn_0123 --before sevt_0456 --state-dir /var/lib/perimeter
  perimeter checkpoints restore --session sesn_0123 --before sevt_0456 --admin-url http://127.0.0.1:9464
  perimeter checkpoints restore --session sesn_0123 --before sevt_0456 --state-dir /var/lib/perimeter`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&session, "session", "", "the session (required)")
	pf.StringVar(&stateDir, "state-dir", "", "the worker's state directory (default: the config's, else ./perimeter-state)")
	pf.BoolVar(&asJSON, "json", false, "print JSON")
	openStore := func() (*checkpoint.Store, func(), error) {
		if session == "" {
			return nil, nil, errors.New("--session is required")
		}
		dir := stateDir
		if dir == "" {
			cfg, err := g.load()
			if err != nil {
				return nil, nil, err
			}
			dir = cmp.Or(cfg.Worker.StateDir, "perimeter-state")
		}
		s, err := checkpoint.Open(checkpointDir(dir), checkpoint.Options{})
		if errors.Is(err, checkpoint.ErrLocked) {
			return nil, nil, fmt.Errorf("a worker holds the checkpoint store in %s: restore through it with --admin-url, or stop it first", dir)
		}
		if err != nil {
			return nil, nil, err
		}
		return s, func() { s.Close() }, nil
	}
	list := &cobra.Command{
		Use: "list", Short: "List a session's checkpoints, oldest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, done, err := openStore()
			if err != nil {
				return err
			}
			defer done()
			cps, err := s.List(session)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(cps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tBEFORE CALL\tTIME\tFILES\tBYTES\tCHECKPOINT")
			for _, c := range cps {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", c.Seq, c.ToolUseID, c.Time.Format(time.RFC3339), c.Files, c.Bytes, c.ID[:16])
			}
			return tw.Flush()
		},
	}
	diff := &cobra.Command{
		Use: "diff", Short: "What changed in the workspace since the checkpoint before a call (--before)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, done, err := openStore()
			if err != nil {
				return err
			}
			defer done()
			cps, err := s.List(session)
			if err != nil || len(cps) == 0 {
				return cmp.Or(err, fmt.Errorf("session %s has no checkpoints", session))
			}
			from := cps[0]
			if before != "" {
				if from, err = s.Before(session, before); err != nil {
					return err
				}
			}
			changes, err := s.Diff(cmd.Context(), from.ID, cps[len(cps)-1].ID)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(changes)
			}
			for _, c := range changes {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%q\n", c.Kind, c.Path)
			}
			return nil
		},
	}
	var by string
	restore := &cobra.Command{
		Use: "restore", Short: "Roll the workspace back to just before a call (--before)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if session == "" || before == "" {
				return errors.New("restore needs --session and --before TOOL_USE_ID")
			}
			if adminURL != "" {
				return restoreLive(cmd, adminURL, tokenFile, restoreRequest{Session: session, Before: before, By: by}, asJSON)
			}
			s, done, err := openStore()
			if err != nil {
				return err
			}
			defer done()
			cp, err := s.Before(session, before)
			if err != nil {
				return err
			}
			dir := stateDir
			if dir == "" {
				dir = "perimeter-state"
			}
			rep, err := s.Restore(cmd.Context(), filepath.Join(dir, "workspaces", session), cp.ID)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s to before %s: %d written, %d removed, %d unchanged\n", session, before, rep.Written, rep.Removed, rep.Kept)
			return nil
		},
	}
	for _, c := range []*cobra.Command{diff, restore} {
		c.Flags().StringVar(&before, "before", "", "the tool-use id whose checkpoint (taken just before it ran) to use")
	}
	restore.Flags().StringVar(&adminURL, "admin-url", "", "restore a live session through this worker's admin API")
	restore.Flags().StringVar(&tokenFile, "token-file", "", "file holding the admin token (default $PERIMETER_ADMIN_TOKEN, else <state-dir>/admin-token)")
	restore.Flags().StringVar(&by, "by", cmp.Or(os.Getenv("PERIMETER_APPROVER"), currentUser()), "who restores, for the audit log")
	cmd.AddCommand(list, diff, restore)
	return cmd
}

// restoreLive asks a worker to restore a session it may be serving.
func restoreLive(cmd *cobra.Command, url, tokenFile string, req restoreRequest, asJSON bool) error {
	token := os.Getenv("PERIMETER_ADMIN_TOKEN")
	if token == "" {
		b, err := os.ReadFile(cmp.Or(tokenFile, filepath.Join("perimeter-state", adminTokenFile)))
		if err != nil {
			return fmt.Errorf("no admin token: set PERIMETER_ADMIN_TOKEN or --token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(cmd.Context(), http.MethodPost, strings.TrimSuffix(url, "/")+"/v1/checkpoints/restore", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Authorization", "Bearer "+token)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("restore: %s: %s", resp.Status, strings.TrimSpace(string(out)))
	}
	if asJSON {
		_, err := cmd.OutOrStdout().Write(out)
		return err
	}
	var r restoreResponse
	if err := json.Unmarshal(out, &r); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "restored %s to before %s: %d written, %d removed, %d unchanged\n", req.Session, req.Before, r.Report.Written, r.Report.Removed, r.Report.Kept)
	return nil
}
