package secrets

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Spec is one configured secret: its name and exactly one of Env, File and
// Vault.
type Spec struct {
	Name string `yaml:"name"`
	// Env is the environment variable holding the value.
	Env string `yaml:"env"`
	// File is the path of a private file holding the value.
	File string `yaml:"file"`
	// Vault is where the value lives in Vault.
	Vault *VaultRef `yaml:"vault"`
}

// Build validates specs and assembles them into one Source: a Cache (with
// DefaultTTL) over a Multi of the backends. vault is the Vault connection,
// nil if none is configured; Vault is contacted only if a spec refers to it.
// closeAll purges the cache and closes the Vault connection.
func Build(ctx context.Context, specs []Spec, vault *VaultOptions) (src Source, closeAll func() error, err error) {
	if err := validate(specs, vault); err != nil {
		return nil, nil, err
	}
	envs := map[string]string{}
	files := map[string]string{}
	refs := map[string]VaultRef{}
	for _, s := range specs {
		switch {
		case s.Env != "":
			envs[s.Name] = s.Env
		case s.File != "":
			files[s.Name] = s.File
		default:
			refs[s.Name] = *s.Vault
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
	var v *Vault
	if len(refs) > 0 {
		opts := *vault
		opts.Paths = refs
		if v, err = NewVault(ctx, opts); err != nil {
			return nil, nil, err
		}
		for name := range refs {
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
func validate(specs []Spec, vault *VaultOptions) error {
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
		switch {
		case len(set) == 0:
			problems = append(problems, label+": set one of env, file or vault")
		case len(set) > 1:
			problems = append(problems, fmt.Sprintf("%s: set only one of env, file or vault, not %s", label, strings.Join(set, " and ")))
		case s.Vault != nil && vault == nil:
			problems = append(problems, label+": a vault secret needs the Vault connection configured")
		case s.Vault != nil:
			if err := s.Vault.validate(); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", label, err))
			}
		}
	}
	if vault != nil && len(vault.Paths) > 0 {
		problems = append(problems, "vault: Paths must be empty; Build sets them from the secrets")
	}
	if len(problems) > 0 {
		return errors.New("invalid secrets configuration:\n  " + strings.Join(problems, "\n  "))
	}
	return nil
}
