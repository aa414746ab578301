package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/audit"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/secrets"
)

// newEgress builds the sessions' egress: a proxy per session that follows
// the egress section of the policy in force, substituting the configured
// secrets. The process runtime gets none: it has the host's network.
func newEgress(ctx context.Context, cfg *config.Config, gate *approval.Gate, runtime string, auditW *audit.Writer, log *slog.Logger) (*egress.Manager, func(), error) {
	if runtime == "process" {
		return nil, func() {}, nil
	}
	var src secrets.Source
	closeSecrets := func() error { return nil }
	if len(cfg.Secrets) > 0 {
		var err error
		if src, closeSecrets, err = secrets.Build(ctx, cfg.Secrets, cfg.SecretBackends); err != nil {
			return nil, nil, err
		}
		if auditW != nil {
			src = newForbidding(src, auditW)
		}
	}
	m, err := egress.NewManager(egress.ManagerOptions{
		Dir:     filepath.Join(cfg.Worker.StateDir, "egress"),
		Config:  func() egress.Config { return gate.Policy().Egress() },
		Secrets: src,
		Logger:  log.With(slog.String("component", "egress")),
	})
	if err != nil {
		_ = closeSecrets()
		return nil, nil, err
	}
	e := gate.Policy().Egress()
	log.Info("egress proxy per session", slog.Int("rules", len(e.Rules)), slog.Int("credentials", len(e.Credentials)), slog.Int("secrets", len(cfg.Secrets)))
	return m, func() { _ = closeSecrets() }, nil
}

// forbidding registers each value its source returns with the audit log,
// which then refuses a record that holds it: no secret value reaches the
// log, or the OpenTelemetry export of its records, even by way of a tool's
// input or output.
type forbidding struct {
	secrets.Source
	log  *audit.Writer
	mu   sync.Mutex
	seen map[[sha256.Size]byte]bool // digests of the values registered
}

func newForbidding(src secrets.Source, log *audit.Writer) *forbidding {
	return &forbidding{Source: src, log: log, seen: map[[sha256.Size]byte]bool{}}
}

// minForbidden is the shortest value registered: a shorter one would turn
// up in records by chance, and each would be lost.
const minForbidden = 8

func (f *forbidding) Get(ctx context.Context, name string) ([]byte, error) {
	v, err := f.Source.Get(ctx, name)
	if err != nil || len(v) < minForbidden {
		return v, err
	}
	sum := sha256.Sum256(v)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.seen[sum] {
		f.seen[sum] = true
		f.log.Forbid(v)
	}
	return v, nil
}

// checkSecrets refuses a policy whose egress credentials name secrets the
// config does not define.
func checkSecrets(p *policy.Policy, cfg *config.Config) error {
	var missing []string
	for _, name := range p.Secrets() {
		if !slices.ContainsFunc(cfg.Secrets, func(s secrets.Spec) bool { return s.Name == name }) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("policy %s: egress credentials use secrets that are not configured: %s (define them under secrets: in the config file)", p.Source(), strings.Join(missing, ", "))
	}
	return nil
}
