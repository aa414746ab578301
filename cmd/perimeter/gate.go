package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/term"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/approval/notify"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/worker"
)

// adminTokenFile holds the approvals API token a worker generated, in its
// state directory, readable by its owner only.
const adminTokenFile = "admin-token"

// loadPolicy reads the configured policy, or the built-in default.
func loadPolicy(cfg *config.Config) (*policy.Policy, error) {
	if cfg.Policy.File == "" {
		return policy.Default(), nil
	}
	p, err := policy.Load(cfg.Policy.File)
	if err != nil {
		return nil, err
	}
	return p, checkSecrets(p, cfg)
}

// newGate builds the policy gate: the policy, the approvals store in the
// state directory and the configured channels.
func newGate(ctx context.Context, cfg *config.Config, reg prometheus.Registerer, auditLog worker.AuditLog, log *slog.Logger) (*approval.Gate, error) {
	p, err := loadPolicy(cfg)
	if err != nil {
		return nil, err
	}
	var notifiers []notify.Notifier
	for name, ch := range cfg.Approvals.Channels {
		n, err := newNotifier(name, ch)
		if err != nil {
			return nil, err
		}
		notifiers = append(notifiers, n)
	}
	store, err := approval.OpenAt(ctx, cmp.Or(cfg.Approvals.Store, cfg.Worker.StateDir))
	if err != nil {
		return nil, err
	}
	var terminal *approval.Terminal
	if !cfg.Approvals.NoPrompt && term.IsTerminal(int(os.Stdin.Fd())) {
		// A human is at the worker's terminal: calls a rule asks about are
		// put to them too.
		terminal = approval.NewTerminal(os.Stdin, os.Stderr, cmp.Or(currentUser(), "terminal"))
	}
	g, err := approval.NewGate(approval.GateOptions{
		Policy: p, Store: store, Notifiers: notifiers, Labels: cfg.Policy.Labels, Terminal: terminal,
		Logger: log.With(slog.String("component", "policy")), Registerer: reg, Audit: auditLog,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	log.Info("policy loaded", slog.String("policy", p.Source()), slog.String("sha256", p.Digest()), slog.String("approvals_store", store.String()))
	return g, nil
}

func newNotifier(name string, ch config.Channel) (notify.Notifier, error) {
	url := ch.URL
	if ch.URLEnv != "" {
		if url = os.Getenv(ch.URLEnv); url == "" {
			return nil, fmt.Errorf("approvals.channels.%s: $%s is empty: set it to the channel's URL", name, ch.URLEnv)
		}
	}
	switch ch.Type {
	case "slack":
		return notify.NewSlack(name, url)
	default:
		secret := os.Getenv(ch.SecretEnv)
		if secret == "" {
			return nil, fmt.Errorf("approvals.channels.%s: $%s is empty: set it to the webhook's signing secret (whsec_…)", name, ch.SecretEnv)
		}
		return notify.NewWebhook(name, url, secret)
	}
}

// clientAdminToken is the admin token a CLI command presents: the one in
// tokenFile (--token-file) when it is given, else $PERIMETER_ADMIN_TOKEN,
// else the one a worker wrote to stateDir.
func clientAdminToken(tokenFile, stateDir string) (string, error) {
	if tokenFile == "" {
		if t := os.Getenv("PERIMETER_ADMIN_TOKEN"); t != "" {
			return t, nil
		}
		tokenFile = filepath.Join(stateDir, adminTokenFile)
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return "", fmt.Errorf("no admin token: set PERIMETER_ADMIN_TOKEN or --token-file (a worker writes one to <state-dir>/%s): %w", adminTokenFile, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// clientAdminURL is where a CLI command reaches the admin API of a worker
// listening on listen (worker.admin_listen): an unspecified host is this
// host's loopback.
func clientAdminURL(listen string) (string, error) {
	if listen == "off" {
		return "", errors.New("the config's worker.admin_listen is off, so the worker serves no admin API: name one with --admin-url, or work on the state directory with --state-dir")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("the config's worker.admin_listen %q is not host:port; name the worker with --admin-url", listen)
	}
	if ip := net.ParseIP(host); host == "" || ip.Equal(net.IPv4zero) {
		host = "127.0.0.1"
	} else if ip.Equal(net.IPv6unspecified) {
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// adminToken is the approvals API token: $PERIMETER_ADMIN_TOKEN, else the
// one in the state directory, generated on first use. Workers sharing the
// state directory may start together: the token is written aside and
// linked into place, so each of them reads a whole file and all of them
// serve the one token that file holds.
func adminToken(stateDir string) (string, error) {
	if t := os.Getenv("PERIMETER_ADMIN_TOKEN"); t != "" {
		return t, nil
	}
	path := filepath.Join(stateDir, adminTokenFile)
	read := func() (string, error) {
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
	if tok, err := read(); err == nil && tok != "" {
		return tok, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token: %w", err)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := "pat_" + hex.EncodeToString(b)
	f, err := os.CreateTemp(stateDir, "."+adminTokenFile+"-*") // mode 0600
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(tok + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	switch err := os.Link(f.Name(), path); {
	case err == nil:
		return tok, nil
	case !errors.Is(err, os.ErrExist):
		return "", fmt.Errorf("admin token: %w", err)
	}
	// Another worker installed its token first; serve that one.
	cur, err := read()
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if cur != "" {
		return cur, nil
	}
	// An empty file left behind: replace it.
	if err := os.Rename(f.Name(), path); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return tok, nil
}
