package secrets

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Spec is one configured secret: its name and exactly one of Env, File,
// Vault and Kubernetes.
type Spec struct {
	Name string `yaml:"name"`
	// Env is the environment variable holding the value.
	Env string `yaml:"env"`
	// File is the path of a private file holding the value.
	File string `yaml:"file"`
	// Vault is where the value lives in Vault.
	Vault *VaultRef `yaml:"vault"`
	// Kubernetes is the Kubernetes Secret and key holding the value.
	Kubernetes *KubernetesRef `yaml:"kubernetes"`
}

// Backends are the connections Build may use; nil means that backend is
// not configured.
type Backends struct {
	Vault      *VaultOptions      `yaml:"vault"`
	Kubernetes *KubernetesOptions `yaml:"kubernetes"`
}

// Build validates specs and assembles them into one Source: a Cache (with
// DefaultTTL) over a Multi of the backends. A connection in backends is
// used only if a spec refers to it: Vault is not contacted, and no
// Kubernetes client is built, otherwise. closeAll purges the cache and
// closes the Vault connection.
func Build(ctx context.Context, specs []Spec, backends Backends) (src Source, closeAll func() error, err error) {
	if err := validate(specs, backends); err != nil {
		return nil, nil, err
	}
	envs := map[string]string{}
	files := map[string]string{}
	vaultRefs := map[string]VaultRef{}
	kubeRefs := map[string]KubernetesRef{}
	for _, s := range specs {
		switch {
		case s.Env != "":
			envs[s.Name] = s.Env
		case s.File != "":
			files[s.Name] = s.File
		case s.Vault != nil:
			vaultRefs[s.Name] = *s.Vault
		default:
			kubeRefs[s.Name] = *s.Kubernetes
		}
	}

	multi := Multi{}
	env, file := NewEnv(envs), NewFile(files)
	for name := range envs {
		multi[name] = env
	}
	for name := range files {
		multi[name] = file
	}
	// Kubernetes first: it starts nothing that would need stopping if Vault
	// then failed.
	if len(kubeRefs) > 0 {
		opts := *backends.Kubernetes
		opts.Refs = kubeRefs
		k, err := NewKubernetes(opts)
		if err != nil {
			return nil, nil, err
		}
		for name := range kubeRefs {
			multi[name] = k
		}
	}
	var v *Vault
	if len(vaultRefs) > 0 {
		opts := *backends.Vault
		opts.Paths = vaultRefs
		if v, err = NewVault(ctx, opts); err != nil {
			return nil, nil, err
		}
		for name := range vaultRefs {
			multi[name] = v
		}
	}

	cache := NewCache(multi, 0)
	return cache, func() error {
		cache.Purge()
		if v != nil {
			return v.Close()
		}
		return nil
	}, nil
}

// validate reports every problem in specs at once, each naming the entry.
func validate(specs []Spec, backends Backends) error {
	var problems []string
	seen := map[string]int{}
	for i, s := range specs {
		label := fmt.Sprintf("secrets[%d]", i)
		if s.Name != "" {
			label += fmt.Sprintf(" (%q)", s.Name)
		}
		switch j, dup := seen[s.Name]; {
		case s.Name == "":
			problems = append(problems, label+": the name is empty")
		case strings.TrimSpace(s.Name) != s.Name:
			problems = append(problems, label+": the name has leading or trailing spaces")
		case dup:
			problems = append(problems, fmt.Sprintf("%s: the name is already used by secrets[%d]", label, j))
		default:
			seen[s.Name] = i
		}

		var set []string
		if s.Env != "" {
			set = append(set, "env")
		}
		if s.File != "" {
			set = append(set, "file")
		}
		if s.Vault != nil {
			set = append(set, "vault")
		}
		if s.Kubernetes != nil {
			set = append(set, "kubernetes")
		}
		switch {
		case len(set) == 0:
			problems = append(problems, label+": set one of env, file, vault or kubernetes")
		case len(set) > 1:
			problems = append(problems, fmt.Sprintf("%s: set only one of env, file, vault or kubernetes, not %s", label, strings.Join(set, " and ")))
		case s.Vault != nil && backends.Vault == nil:
			problems = append(problems, label+": a vault secret needs the Vault connection configured")
		case s.Vault != nil:
			if err := s.Vault.validate(); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", label, err))
			}
		case s.Kubernetes != nil && backends.Kubernetes == nil:
			problems = append(problems, label+": a kubernetes secret needs the Kubernetes connection configured")
		case s.Kubernetes != nil:
			if err := s.Kubernetes.validate(); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", label, err))
			}
		}
	}
	if backends.Vault != nil && len(backends.Vault.Paths) > 0 {
		problems = append(problems, "vault: Paths must be empty; Build sets them from the secrets")
	}
	if k := backends.Kubernetes; k != nil {
		if len(k.Refs) > 0 {
			problems = append(problems, "kubernetes: Refs must be empty; Build sets them from the secrets")
		}
		if err := k.validate(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		return errors.New("invalid secrets configuration:\n  " + strings.Join(problems, "\n  "))
	}
	return nil
}
