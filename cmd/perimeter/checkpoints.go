package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/perimeterhq/perimeter/internal/adminapi"
	"github.com/perimeterhq/perimeter/internal/checkpoint"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/s3"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// checkpointDir is where a worker with this config keeps its checkpoints.
func checkpointDir(cfg *config.Config) string {
	return cmp.Or(cfg.Checkpoints.Dir, filepath.Join(cfg.Worker.StateDir, "checkpoints"))
}

// openCheckpoints opens the worker's checkpoint store and prunes it by the
// configured retention, now and every pruneInterval until close. A second
// worker on the same state directory gets a store of its own, and says so.
func openCheckpoints(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *checkpoint.Store, closeStore func(), err error) {
	if cfg.Checkpoints.Disabled {
		log.Warn("workspace checkpoints are disabled (checkpoints.disabled)")
		return nil, func() {}, nil
	}
	s, dir, err := openOwn(checkpointDir(cfg), cfg.Worker.ID, "checkpoint store", log,
		checkpoint.ErrLocked, func(dir string) (*checkpoint.Store, error) {
			return checkpoint.Open(dir, checkpoint.Options{FullScan: cfg.Checkpoints.FullScan, MaxEntries: cfg.Checkpoints.MaxEntries})
		})
	if err != nil {
		return nil, nil, err
	}
	if cfg.Checkpoints.FullScan {
		log.Info("checkpoints stat every file of the workspace (checkpoints.full_scan)")
	} else if err := s.ChangeTracking(); err != nil {
		log.Warn("checkpoints cannot track changes here and stat every file of the workspace", slog.Any("reason", err))
	}
	keep := retention(cfg)
	rep, err := s.Prune(ctx, keep)
	if err != nil {
		log.Warn("pruning checkpoints failed", slog.Any("error", err))
	}
	log.Info("checkpoint store open", slog.String("dir", dir), slog.Int("checkpoints", rep.Kept), slog.Int64("bytes", rep.Bytes), slog.Int("pruned", rep.Removed))
	stop := pruneEvery(s, keep, pruneInterval, log)
	return s, func() {
		stop()
		s.Close()
	}, nil
}

// pruneInterval is how often a running worker prunes its checkpoints: the
// retention holds for a worker that runs for weeks, not only at its start.
const pruneInterval = time.Hour

// pruneEvery prunes s by r every interval until stop, which waits for a
// prune in progress (Prune stops early when told to, leaving the store
// consistent).
func pruneEvery(s *checkpoint.Store, r checkpoint.Retention, interval time.Duration, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rep, err := s.Prune(ctx, r)
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("pruning checkpoints failed", slog.Any("error", err))
			case err == nil && (rep.Removed > 0 || rep.ObjectsRemoved > 0):
				log.Info("checkpoints pruned", slog.Int("removed", rep.Removed), slog.Int64("bytes_removed", rep.BytesRemoved),
					slog.Int("checkpoints", rep.Kept), slog.Int64("bytes", rep.Bytes))
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// openRemote connects to the object store that persisted workspaces are
// kept in, when one is configured, and checks that it answers.
func openRemote(ctx context.Context, cfg *config.Config, log *slog.Logger) (checkpoint.Remote, error) {
	c := cfg.Checkpoints
	if c.Remote.Bucket == "" {
		return nil, nil
	}
	if c.Disabled || c.PersistKey == "" {
		log.Warn("checkpoints.remote is set but nothing is persisted: set checkpoints.persist_key (and leave checkpoints enabled)")
		return nil, nil
	}
	b, err := s3.New(c.Remote)
	if err != nil {
		return nil, fmt.Errorf("checkpoints.remote: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.Check(ctx); err != nil {
		return nil, fmt.Errorf("checkpoints.remote: %w", err)
	}
	log.Info("persisted workspaces are kept in an object store", slog.String("remote", b.String()))
	return b, nil
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
		session := r.URL.Query().Get("session")
		if session == "" {
			adminapi.Error(rw, http.StatusBadRequest, "invalid_request_error", "name the session: GET /v1/checkpoints?session=ID")
			return
		}
		list, err := store.List(session)
		if err != nil {
			adminapi.Error(rw, http.StatusInternalServerError, "api_error", err.Error())
			return
		}
		if list == nil {
			list = []checkpoint.Checkpoint{}
		}
		adminapi.JSON(rw, map[string]any{"data": list})
	})
	mux.HandleFunc("POST /v1/checkpoints/restore", func(rw http.ResponseWriter, r *http.Request) {
		var req restoreRequest
		const want = `want {"session": ID, "before": TOOL_USE_ID or "checkpoint": ID, "by": WHO}`
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(rw, http.StatusBadRequest, "invalid_request_error", "body: "+err.Error()+"; "+want)
			return
		}
		if req.Session == "" || (req.Before == "") == (req.Checkpoint == "") || req.By == "" {
			adminapi.Error(rw, http.StatusBadRequest, "invalid_request_error", "body: "+want)
			return
		}
		cp, rep, err := w.RestoreCheckpoint(r.Context(), req.Session, req.Before, req.Checkpoint, "human:"+req.By)
		switch {
		case errors.Is(err, checkpoint.ErrNotFound):
			adminapi.Error(rw, http.StatusNotFound, "not_found_error", err.Error())
		case err != nil:
			adminapi.Error(rw, http.StatusConflict, "conflict_error", err.Error())
		default:
			adminapi.JSON(rw, restoreResponse{Checkpoint: cp, Report: rep})
		}
	})
	return adminapi.RequireToken(token, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if store == nil {
			adminapi.Error(rw, http.StatusNotFound, "not_found_error", "this worker takes no checkpoints")
			return
		}
		mux.ServeHTTP(rw, r)
	}))
}

// checkpointsTarget is what every `perimeter checkpoints` subcommand works
// on: one session's checkpoints in a worker's state directory.
type checkpointsTarget struct {
	stateDir, session string
	asJSON            bool
}

// withStore opens the checkpoint store of the state directory and calls fn
// with it and the directory.
func (t *checkpointsTarget) withStore(cmd *cobra.Command, fn func(s *checkpoint.Store, stateDir string) error) error {
	if t.session == "" {
		return errors.New("--session is required")
	}
	cfg, err := resolveConfig(cmd, t.stateDir)
	if err != nil {
		return err
	}
	// Offline commands take no checkpoint: nothing to watch. Nor do they
	// make a store: a mistyped directory is an error, not an empty store.
	dir := checkpointDir(cfg)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("no checkpoint store in %s (is %s a worker's --state-dir?): %w", dir, cfg.Worker.StateDir, err)
	}
	s, err := checkpoint.Open(dir, checkpoint.Options{FullScan: true})
	if errors.Is(err, checkpoint.ErrLocked) {
		return fmt.Errorf("a worker holds the checkpoint store in %s: restore through it with --admin-url, or stop it first", dir)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(s, cfg.Worker.StateDir)
}

func newCheckpointsCmd() *cobra.Command {
	t := &checkpointsTarget{}
	var adminURL, tokenFile, before string
	cmd := &cobra.Command{
		Use:   "checkpoints",
		Short: "List, compare and restore a session's workspace checkpoints",
		Long: `Before every tool call that may change the workspace (write, edit, bash,
custom and MCP tools), the worker snapshots the session's workspace, keyed by
the call's tool-use id: incremental, content-addressed, deduplicated across
sessions, with modes, symlinks (as links) and empty directories.

list and diff read the store in a state directory (--state-dir, else the
config file's worker.state_dir, else ./perimeter-state) while no worker holds
it. restore --admin-url rolls a live session back through the worker's admin
API: the files change under the running sandbox and the model is told so in
the next tool result. Without --admin-url, restore works on the state
directory directly, for a session no worker serves.`,
		Example: `  perimeter checkpoints list --session sesn_0123 --state-dir /var/lib/perimeter
  perimeter checkpoints diff --session sesn_0123 --before sevt_0456 --state-dir /var/lib/perimeter
  perimeter checkpoints restore --session sesn_0123 --before sevt_0456 --admin-url http://127.0.0.1:9464
  perimeter checkpoints restore --session sesn_0123 --before sevt_0456 --state-dir /var/lib/perimeter`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&t.session, "session", "", "the session (required)")
	pf.StringVar(&t.stateDir, "state-dir", "", "the worker's state directory (default: the config's, else ./perimeter-state)")
	pf.BoolVar(&t.asJSON, "json", false, "print JSON")
	list := &cobra.Command{
		Use: "list", Short: "List a session's checkpoints, oldest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.withStore(cmd, func(s *checkpoint.Store, _ string) error {
				cps, err := s.List(t.session)
				if err != nil {
					return err
				}
				if t.asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(cps)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tBEFORE CALL\tTIME\tFILES\tBYTES\tCHECKPOINT")
				for _, c := range cps {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", c.Seq, c.ToolUseID, c.Time.Format(time.RFC3339), c.Files, c.Bytes, c.ID[:16])
				}
				return tw.Flush()
			})
		},
	}
	diff := &cobra.Command{
		Use: "diff", Short: "What changed in the workspace since the checkpoint before a call (--before)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return t.withStore(cmd, func(s *checkpoint.Store, _ string) error {
				cps, err := s.List(t.session)
				if err != nil || len(cps) == 0 {
					return cmp.Or(err, fmt.Errorf("session %s has no checkpoints", t.session))
				}
				from := cps[0]
				if before != "" {
					if from, err = s.Before(t.session, before); err != nil {
						return err
					}
				}
				changes, err := s.Diff(cmd.Context(), from.ID, cps[len(cps)-1].ID)
				if err != nil {
					return err
				}
				if t.asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(changes)
				}
				for _, c := range changes {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%q\n", c.Kind, c.Path)
				}
				return nil
			})
		},
	}
	var by string
	restore := &cobra.Command{
		Use: "restore", Short: "Roll the workspace back to just before a call (--before)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t.session == "" || before == "" {
				return errors.New("restore needs --session and --before TOOL_USE_ID")
			}
			if adminURL != "" {
				cfg, err := resolveConfig(cmd, t.stateDir)
				if err != nil {
					return err
				}
				token, err := clientAdminToken(tokenFile, cfg.Worker.StateDir)
				if err != nil {
					return err
				}
				return restoreLive(cmd, adminURL, token, restoreRequest{Session: t.session, Before: before, By: by}, t.asJSON)
			}
			return t.withStore(cmd, func(s *checkpoint.Store, stateDir string) error {
				cp, err := s.Before(t.session, before)
				if err != nil {
					return err
				}
				rep, err := s.Restore(cmd.Context(), filepath.Join(stateDir, "workspaces", t.session), cp.ID)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "restored %s to before %s: %d written, %d removed, %d unchanged\n", t.session, before, rep.Written, rep.Removed, rep.Kept)
				return nil
			})
		},
	}
	for _, c := range []*cobra.Command{diff, restore} {
		c.Flags().StringVar(&before, "before", "", "the tool-use id whose checkpoint (taken just before it ran) to use")
	}
	restore.Flags().StringVar(&adminURL, "admin-url", "", "restore a live session through this worker's admin API")
	restore.Flags().StringVar(&tokenFile, "token-file", "", "file holding the admin token (default $PERIMETER_ADMIN_TOKEN, else admin-token in the state directory)")
	restore.Flags().StringVar(&by, "by", cmp.Or(os.Getenv("PERIMETER_APPROVER"), currentUser()), "who restores, for the audit log")
	cmd.AddCommand(list, diff, restore)
	return cmd
}

// restoreLive asks a worker to restore a session it may be serving.
func restoreLive(cmd *cobra.Command, url, token string, req restoreRequest, asJSON bool) error {
	api := adminapi.Client{Name: "checkpoints API", BaseURL: url, Token: token}
	var r restoreResponse
	if err := api.Do(cmd.Context(), http.MethodPost, "/v1/checkpoints/restore", req, &r); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if asJSON {
		return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "restored %s to before %s: %d written, %d removed, %d unchanged\n", req.Session, req.Before, r.Report.Written, r.Report.Removed, r.Report.Kept)
	return nil
}
