package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"github.com/perimeterhq/perimeter/internal/approval"
	"github.com/perimeterhq/perimeter/internal/config"
	"github.com/perimeterhq/perimeter/internal/egress"
	"github.com/perimeterhq/perimeter/internal/policy"
	"github.com/perimeterhq/perimeter/internal/secrets"
)

// newEgress builds the sessions' egress: a proxy per session that follows
// the egress section of the policy in force, substituting the configured
// secrets. The process runtime gets none: it has the host's network.
func newEgress(ctx context.Context, cfg *config.Config, gate *approval.Gate, runtime string, log *slog.Logger) (*egress.Manager, func(), error) {
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
